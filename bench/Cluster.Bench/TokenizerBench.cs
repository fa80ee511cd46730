// Encoding time against prompt length: the SentencePiece encoder (O(n log n)) beside the plain O(n²) reference it
// replaced, on the real tok512 vocabulary (found in shared/models above the working directory) and a synthetic
// 32000-piece one; and the byte-level tokenizer (pre-tokens capped) beside Microsoft.ML.Tokenizers as it is, on
// English and on text with no whitespace at all (one huge pre-token). The reference runs only up to
// --reference-max chars (16384 by default: 64 K already takes minutes).
using System.Diagnostics;
using System.Text.RegularExpressions;
using Cluster.Model.Tokenizers;
using Microsoft.ML.Tokenizers;

namespace Cluster.Bench;

public static class TokenizerBench
{
    private static readonly int[] Sizes = [4 << 10, 16 << 10, 64 << 10, 1 << 20];

    public static void Run(int referenceMaxChars)
    {
        Console.WriteLine($"CPU: {CpuModel()}, {Environment.ProcessorCount} logical cores; one thread; best of up to 5 runs under a second");
        Console.WriteLine();
        Console.WriteLine("| tokenizer | text | chars | before (ms) | now (ms) | tokens |");
        Console.WriteLine("|---|---|---:|---:|---:|---:|");
        var vocabularies = new List<(string Name, SentencePieceBpeTokenizer Tokenizer)>();
        if (FindUpwards(Path.Combine("shared", "models", "tok512.bin")) is { } tok512)
            vocabularies.Add(("SentencePiece tok512", SentencePieceBpeTokenizer.LoadLlama2c(tok512, 512)));
        else Console.Error.WriteLine("shared/models/tok512.bin not found above the working directory: tok512 rows skipped");
        vocabularies.Add(("SentencePiece synthetic 32000", SyntheticVocabulary.Create(32000, seed: 1)));
        foreach (var (name, tokenizer) in vocabularies)
        {
            var reference = new ReferenceSentencePieceEncoder(tokenizer);
            foreach (int chars in Sizes)
            {
                string text = SyntheticVocabulary.EnglishText(chars, seed: chars);
                Row(name, "English", text, chars <= referenceMaxChars ? () => reference.Encode(text, true) : null, () => tokenizer.Encode(text, true));
            }
        }

        var (vocabulary, merges) = SyntheticVocabulary.ByteLevel();
        var library = BpeTokenizer.Create(new BpeOptions(vocabulary)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(new Regex(ByteLevelBpeTokenizer.Gpt2Pattern, RegexOptions.Compiled), null),
        });
        var byteLevel = SyntheticVocabulary.CreateByteLevel();
        var random = new Random(1);
        string Repeat(string word, int chars) => string.Concat(Enumerable.Repeat(word, chars / word.Length + 1))[..chars];
        string Letters(int chars) => new([.. Enumerable.Range(0, chars).Select(_ => (char)random.Next('a', 'z' + 1))]);
        foreach (var (kind, text, libraryTolerable) in new[]
        {
            ("English", SyntheticVocabulary.EnglishText(1 << 20, seed: 1), true),
            ("one word repeated, no space", Repeat("little", 64 << 10), true),
            ("random letters, no space", Letters(64 << 10), true),
            ("one word repeated, no space", Repeat("little", 1 << 20), false),
            ("random letters, no space", Letters(1 << 20), false),
        })
            Row("byte-level synthetic", kind, text, libraryTolerable ? () => [.. library.EncodeToIds(text)] : null, () => byteLevel.Encode(text, false));
    }

    private static void Row(string tokenizer, string kind, string text, Func<int[]>? before, Func<int[]> now)
    {
        string beforeMs = before is null ? "—" : $"{Time(before).Milliseconds:F1}";
        var (nowMs, tokens) = Time(now);
        Console.WriteLine($"| {tokenizer} | {kind} | {text.Length} | {beforeMs} | {nowMs:F1} | {tokens} |");
    }

    private static (double Milliseconds, int Tokens) Time(Func<int[]> encode)
    {
        double best = double.MaxValue, total = 0;
        int tokens = 0;
        for (int run = 0; run < 5 && total < 1000; run++)
        {
            var clock = Stopwatch.StartNew();
            tokens = encode().Length;
            double ms = clock.Elapsed.TotalMilliseconds;
            best = Math.Min(best, ms);
            total += ms;
        }
        return (best, tokens);
    }

    private static string? FindUpwards(string relativePath)
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, relativePath))) return Path.Combine(dir.FullName, relativePath);
        return null;
    }

    /// <summary>The "model name" of /proc/cpuinfo, or the architecture where there is none.</summary>
    internal static string CpuModel()
    {
        const string cpuInfo = "/proc/cpuinfo";
        if (File.Exists(cpuInfo))
            foreach (string line in File.ReadLines(cpuInfo))
                if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
    }
}
