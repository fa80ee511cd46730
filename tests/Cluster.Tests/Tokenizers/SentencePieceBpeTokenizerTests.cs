// The O(n log n) SentencePiece encoder against the plain O(n²) reference (ReferenceSentencePieceEncoder): identical
// tokens on random and English text, over the real tok512 vocabulary when ../shared is there, synthetic ones, and
// small random vocabularies full of ties, repeated pieces, an empty piece and -∞/NaN scores; and 1 MiB in seconds.
using System.Text;
using Cluster.Model.Tokenizers;

namespace Cluster.Tests.Tokenizers;

public class SentencePieceBpeTokenizerTests
{
    [Theory]
    [InlineData(512)]
    [InlineData(32000)]
    public void Matches_the_reference_on_a_synthetic_vocabulary(int vocabSize) =>
        AssertMatchesReference(SyntheticVocabulary.Create(vocabSize, seed: 3), seed: vocabSize);

    [Fact]
    public void Matches_the_reference_on_tok512() =>
        AssertMatchesReference(SentencePieceBpeTokenizer.LoadLlama2c(SharedModels.Require("tok512.bin"), 512), seed: 7);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Matches_the_reference_on_a_vocabulary_full_of_ties_and_odd_pieces(int seed) =>
        AssertMatchesReference(TieVocabulary(seed), seed, alphabet: "ab c\u00e9");

    [Fact]
    public void Encodes_1_MiB_of_English_text()
    {
        string text = SyntheticVocabulary.EnglishText(1 << 20, seed: 1);
        var tokenizer = SyntheticVocabulary.Create(32000, seed: 1);
        var ids = tokenizer.Encode(text, addBos: true);
        Assert.True(ids.Length < text.Length / 2, $"{ids.Length} tokens for {text.Length} chars: the merges did not happen");
        Assert.Equal(text, Decode(tokenizer, ids));
    }

    [Fact]
    public void Encodes_1_MiB_of_English_text_with_tok512()
    {
        var tokenizer = SentencePieceBpeTokenizer.LoadLlama2c(SharedModels.Require("tok512.bin"), 512);
        string text = SyntheticVocabulary.EnglishText(1 << 20, seed: 2);
        Assert.Equal(text, Decode(tokenizer, tokenizer.Encode(text, addBos: true)));
    }

    [Fact]
    public void Encodes_64_KB_of_one_letter()
    {
        var tokenizer = SyntheticVocabulary.Create(32000, seed: 1);
        string text = new('e', 64 << 10);
        Assert.Equal(text, Decode(tokenizer, tokenizer.Encode(text, addBos: true)));
    }

    private static void AssertMatchesReference(SentencePieceBpeTokenizer tokenizer, int seed, string? alphabet = null)
    {
        var reference = new ReferenceSentencePieceEncoder(tokenizer);
        var random = new Random(seed);
        foreach (string text in Texts(random, alphabet))
            foreach (bool addBos in new[] { true, false })
                Assert.True(reference.Encode(text, addBos).AsSpan().SequenceEqual(tokenizer.Encode(text, addBos)),
                    $"differs from the reference on \"{text}\" (addBos {addBos})");
    }

    /// <summary>English slices, random ASCII, runs of one character, and Unicode the vocabulary lacks (byte fallback).</summary>
    private static IEnumerable<string> Texts(Random random, string? alphabet)
    {
        yield return "";
        yield return " ";
        yield return "a";
        string english = SyntheticVocabulary.EnglishText(20000, random.Next());
        string[] unicode = ["é", "日本", "☕", "😀", "\u0000", "\n", "\t", "  ", "Ω", "\u00ff"];
        for (int i = 0; i < 60; i++)
        {
            int length = random.Next(1, 400);
            var text = new StringBuilder();
            switch (i % 4)
            {
                case 0: text.Append(english, random.Next(english.Length - length), length); break;
                case 1: while (text.Length < length) text.Append(alphabet is null ? (char)random.Next(' ', '~' + 1) : alphabet[random.Next(alphabet.Length)]); break;
                case 2: text.Append(alphabet?[random.Next(alphabet.Length)] ?? "eo "[random.Next(3)], length); break;
                default:
                    while (text.Length < length)
                        text.Append(random.Next(3) == 0 ? unicode[random.Next(unicode.Length)] : english.Substring(random.Next(english.Length - 8), random.Next(1, 8)));
                    break;
            }
            yield return text.ToString();
        }
    }

    /// <summary>
    /// Random pieces over a few letters with three distinct scores (so most best merges tie), repeated pieces,
    /// "" as id 0 (the fallback for bytes with no piece), byte pieces for only some bytes, and a few -∞, +∞ and NaN scores.
    /// </summary>
    private static SentencePieceBpeTokenizer TieVocabulary(int seed)
    {
        var random = new Random(seed);
        var pieces = new List<string> { "", "<s>", "</s>", "<0x61>", "<0xC3>", "<0x20>" };
        pieces.AddRange(["a", "b", " ", "c"]);
        while (pieces.Count < 300)
        {
            var piece = new StringBuilder();
            for (int i = random.Next(2, 6); i > 0; i--) piece.Append("ab c"[random.Next(4)]);
            pieces.Add(piece.ToString());
        }
        var scores = pieces.Select(_ => (float)-random.Next(3)).ToArray();
        foreach (float odd in new[] { float.NegativeInfinity, float.PositiveInfinity, float.NaN, float.NegativeInfinity })
            scores[random.Next(10, pieces.Count)] = odd;
        return new SentencePieceBpeTokenizer([.. pieces.Select(Encoding.Latin1.GetBytes)], scores, bosId: 1, eosId: 2, "tie vocabulary");
    }

    private static string Decode(ITokenizer tokenizer, int[] ids)
    {
        var bytes = new List<byte>();
        for (int i = 1; i < ids.Length; i++) bytes.AddRange(tokenizer.DecodeBytes(ids[i - 1], ids[i]));
        return Encoding.UTF8.GetString([.. bytes]);
    }
}
