// The engine against llama2.c's run.c on the real stories260K model (../shared/models): greedy tokens and
// text, logits at positions 0..7, and the tokenizer, from the llama2.c checkpoint (and the GGUF twin).
using System.Globalization;
using System.Text;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Tokenizers;

namespace Cluster.Tests;

public sealed class Stories260KTests
{
    private static LoadedModel LoadBin() =>
        Llama2cFormat.Load(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));

    public static TheoryData<int> ThreadCounts => new() { 1, 2 };

    [Theory]
    [MemberData(nameof(ThreadCounts))]
    public void GreedyGenerationFromEmptyPromptMatchesRunC(int threads)
    {
        var loaded = LoadBin();
        AssertGreedyMatchesReference(loaded, loaded.Tokenizer!, threads);
    }

    [Fact]
    public void GreedyGenerationFromTheGgufTwinMatchesRunC()
    {
        var loaded = GgufFormat.Load(SharedModels.Require("stories260K.gguf"));
        Assert.NotNull(loaded.Tokenizer);   // the vocabulary embedded in the GGUF file, not tok512.bin
        AssertGreedyMatchesReference(loaded, loaded.Tokenizer!, threads: 2);
    }

    internal static void AssertGreedyMatchesReference(LoadedModel loaded, ITokenizer tokenizer, int threads)
    {
        int[] expectedIds = File.ReadAllLines(SharedModels.Require("expected/greedy_empty_n200.token_ids.txt"))
            .Where(l => l.Length > 0).Select(int.Parse).ToArray();
        string expectedText = File.ReadAllText(SharedModels.Require("expected/greedy_empty_n200.txt"));

        using var device = new CpuDevice(threads);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        var generated = new TextGenerator(model, tokenizer).Generate("", expectedIds.Length, SamplingOptions.Greedy).ToList();

        Assert.Equal(expectedIds, generated.Select(g => g.Id).ToArray());
        Assert.Equal(expectedText, string.Concat(generated.Select(g => g.Text)) + "\n");   // run.c ends with a newline
    }

    [Fact]
    public void LogitsAtPositions0To7MatchStrictReference()
    {
        var loaded = LoadBin();
        var (inputs, expected) = ReadReferenceLogits(SharedModels.Require("expected/logits_once_upon_a_time_pos0-7.strict_nofma.txt"));
        Assert.Equal(8, inputs.Length);
        Assert.Equal(loaded.Tokenizer!.Encode("Once upon a time", addBos: true), inputs[..5]);

        using var device = new CpuDevice(2);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        using var cache = PagedKvCache.ForSequences(device, loaded.Config, 1, inputs.Length, blockSize: 4);
        int sequence = cache.CreateSequence();
        float[] logits = model.Forward([new SequenceChunk(sequence, inputs, AllLogits: true)], cache);   // (8, V)

        int V = loaded.Config.VocabSize;
        for (int pos = 0; pos < inputs.Length; pos++)
            for (int v = 0; v < V; v++)
                Assert.True(Math.Abs(logits[pos * V + v] - expected[pos][v]) <= 1e-4f,
                    $"pos {pos} token {v}: {logits[pos * V + v]} vs reference {expected[pos][v]}");
    }

    [Fact]
    public void TokenizerMatchesRunCEncoder()
    {
        var tokenizer = LoadBin().Tokenizer!;
        foreach (var line in File.ReadAllLines(SharedModels.Require("expected/tokenizer_cases.txt"), Encoding.UTF8))
        {
            if (line.Length == 0 || line.StartsWith('#')) continue;
            int tab = line.LastIndexOf('\t');
            string prompt = line[..tab];
            int[] expected = line[(tab + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
            Assert.True(expected.SequenceEqual(tokenizer.Encode(prompt, addBos: true)), $"prompt '{prompt}': expected {string.Join(' ', expected)}, got {string.Join(' ', tokenizer.Encode(prompt, addBos: true))}");
        }
    }

    /// <summary>Parses "pos N input_token T argmax A" headers, each followed by V floats.</summary>
    internal static (int[] Inputs, float[][] Logits) ReadReferenceLogits(string path)
    {
        var inputs = new List<int>();
        var logits = new List<List<float>>();
        foreach (var line in File.ReadLines(path))
        {
            if (line.StartsWith('#') || line.Length == 0) continue;
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts[0] == "pos")
            {
                inputs.Add(int.Parse(parts[Array.IndexOf(parts, "input_token") + 1]));
                logits.Add([]);
            }
            else logits[^1].AddRange(parts.Select(p => float.Parse(p, CultureInfo.InvariantCulture)));
        }
        return (inputs.ToArray(), logits.Select(l => l.ToArray()).ToArray());
    }
}
