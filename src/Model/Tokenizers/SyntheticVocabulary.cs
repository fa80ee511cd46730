// A seeded SentencePiece-style vocabulary of any size ≥ 354, laid out like llama2.c's: 0 "<unk>", 1 "\n<s>\n" (BOS),
// 2 "\n</s>\n" (EOS), 3..258 byte pieces "<0x00>".."<0xFF>", then merges ranked by score -(id-259), and the 95
// printable ASCII characters last. Merges come from BPE training on a built-in English sample (space-prefixed words,
// as SentencePiece sees them), or, through Trained, on given text; once those run out, seeded random concatenations
// of existing pieces fill the rest.
// Any text round-trips: characters outside the vocabulary fall back to byte pieces. ByteLevel is a GPT-2 style
// vocabulary from the same sample (the 256 byte characters, then merges that spell each of its pre-tokens), and
// EnglishText gives seeded text of any length from it, for tests and benches that encode long prompts.
using System.Text;
using System.Text.RegularExpressions;

namespace Cluster.Model.Tokenizers;

public static class SyntheticVocabulary
{
    public const int FirstMerge = 259;
    private const int MaxPieceLength = 16;
    private const string Sample =
        "Once upon a time, there was a little girl named Lily. Once upon a time, there was a little dog. She loved to play outside in the park with her friends. " +
        "One day, she saw a big red ball under a tree. The ball was shiny and round. Lily wanted to play with the ball, " +
        "but her mom said it was time to go home. Lily was sad, but she said, \"Can we come back tomorrow?\" Her mom " +
        "smiled and said yes. The next day, the sun was bright and the sky was blue. Tom and his dog went to the store " +
        "to buy some food. They were very happy and they had a lot of fun together. The end.";

    /// <summary>The vocabulary with merges from the built-in English sample, split at its spaces.</summary>
    public static SentencePieceBpeTokenizer Create(int vocabSize, int seed) =>
        Create(vocabSize, seed, Sample.Split(' ').Select(w => " " + w), "synthetic vocabulary");

    /// <summary>
    /// The vocabulary with merges from <paramref name="text"/>: its runs of letters and its other characters one by
    /// one, each with the space before it (so no piece spans a word and the punctuation after it).
    /// </summary>
    public static SentencePieceBpeTokenizer Trained(int vocabSize, string text, int seed, string source) =>
        Create(vocabSize, seed, Regex.Matches(" " + text, "[ ]?[A-Za-z]+|[ ]?[^A-Za-z ]|[ ]").Select(m => m.Value), source);

    private static SentencePieceBpeTokenizer Create(int vocabSize, int seed, IEnumerable<string> words, string source)
    {
        var printable = Enumerable.Range(' ', 95).Select(c => ((char)c).ToString()).ToArray();
        int mergeCount = vocabSize - FirstMerge - printable.Length;
        if (mergeCount < 0) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, $"a synthetic vocabulary needs at least {FirstMerge + printable.Length} pieces");

        var pieces = new List<string> { "<unk>", "\n<s>\n", "\n</s>\n" };
        for (int b = 0; b < 256; b++) pieces.Add($"<0x{b:X2}>");
        var known = new HashSet<string>(pieces.Concat(printable), StringComparer.Ordinal);
        var merges = TrainMerges(words, mergeCount, known);
        var random = new Random(seed);
        var candidates = printable.Concat(merges).ToList();
        while (merges.Count < mergeCount)
        {
            string merged = candidates[random.Next(candidates.Count)] + candidates[random.Next(candidates.Count)];
            if (merged.Length > MaxPieceLength || !known.Add(merged)) continue;
            merges.Add(merged);
            candidates.Add(merged);
        }
        pieces.AddRange(merges);
        pieces.AddRange(printable);

        var bytes = pieces.Select(p => Encoding.Latin1.GetBytes(p)).ToArray();
        var scores = new float[pieces.Count];
        for (int i = FirstMerge; i < scores.Length; i++) scores[i] = -(i - FirstMerge);
        return new SentencePieceBpeTokenizer(bytes, scores, bosId: 1, eosId: 2, source);
    }

    /// <summary>
    /// A byte-level BPE vocabulary: GPT-2's 256 byte characters, then, for each pre-token of the sample in order (and
    /// for its word without the leading space), merges that spell it left to right, so each encodes as one token;
    /// last "&lt;|endoftext|&gt;".
    /// </summary>
    public static (Dictionary<string, int> Vocabulary, List<string> Merges) ByteLevel()
    {
        var vocabulary = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (char c in ByteLevelBpeTokenizer.ByteToUnicode) vocabulary.Add(c.ToString(), vocabulary.Count);
        var merges = new List<string>();
        foreach (Match preToken in Regex.Matches(Sample, ByteLevelBpeTokenizer.Gpt2Pattern))
            foreach (string word in new[] { preToken.Value, preToken.Value.TrimStart(' ') }.Where(w => w.Length > 0))
            {
                string spelled = new([.. Encoding.UTF8.GetBytes(word).Select(b => ByteLevelBpeTokenizer.ByteToUnicode[b])]);
                for (int end = 2; end <= spelled.Length; end++)
                    if (vocabulary.TryAdd(spelled[..end], vocabulary.Count)) merges.Add(spelled[..(end - 1)] + " " + spelled[end - 1]);
            }
        vocabulary.Add("<|endoftext|>", vocabulary.Count);
        return (vocabulary, merges);
    }

    /// <summary>A tokenizer over <see cref="ByteLevel"/>, with "&lt;|endoftext|&gt;" as BOS and EOS.</summary>
    public static ByteLevelBpeTokenizer CreateByteLevel()
    {
        var (vocabulary, merges) = ByteLevel();
        int endOfText = vocabulary["<|endoftext|>"];
        return new ByteLevelBpeTokenizer(vocabulary, merges, endOfText, endOfText, "synthetic byte-level vocabulary");
    }

    /// <summary>Exactly <paramref name="chars"/> characters of English: the sample's sentences in a seeded random order.</summary>
    public static string EnglishText(int chars, int seed)
    {
        var sentences = Regex.Split(Sample, @"(?<=[.?!""]) ");
        var random = new Random(seed);
        var text = new StringBuilder(chars + Sample.Length);
        while (text.Length < chars) text.Append(sentences[random.Next(sentences.Length)]).Append(' ');
        return text.ToString(0, chars);
    }

    /// <summary>
    /// Greedy BPE on <paramref name="words"/>: repeatedly merge the most frequent adjacent pair (ties broken ordinally),
    /// counting each distinct word once with its number of occurrences.
    /// </summary>
    private static List<string> TrainMerges(IEnumerable<string> words, int limit, HashSet<string> known)
    {
        var distinct = words.GroupBy(w => w, StringComparer.Ordinal)
            .Select(g => (Symbols: g.Key.Select(c => c.ToString()).ToList(), Count: g.Count())).ToList();
        var merges = new List<string>();
        while (merges.Count < limit)
        {
            var counts = new Dictionary<(string, string), int>();
            foreach (var (symbols, count) in distinct)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    counts[(symbols[i], symbols[i + 1])] = counts.GetValueOrDefault((symbols[i], symbols[i + 1])) + count;
            (string, string) best = default;
            int bestCount = 0;
            foreach (var (pair, count) in counts)
                if (!known.Contains(pair.Item1 + pair.Item2) && (count > bestCount || count == bestCount &&
                    string.CompareOrdinal(pair.Item1 + "\0" + pair.Item2, best.Item1 + "\0" + best.Item2) < 0))
                    (best, bestCount) = (pair, count);
            if (bestCount == 0) break;
            string merged = best.Item1 + best.Item2;
            known.Add(merged);
            merges.Add(merged);
            foreach (var (symbols, _) in distinct)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (symbols[i] == best.Item1 && symbols[i + 1] == best.Item2)
                    {
                        symbols[i] = merged;
                        symbols.RemoveAt(i + 1);
                    }
        }
        return merges;
    }
}
