// GGUF files this project writes, read by llama.cpp itself: llama-server (built by bench/llama-server.sh into
// bench/results/llama.cpp) serves each, and its greedy tokens and first-position top-5 probabilities equal this
// engine's on the same file: a Mixtral-style MoE (llama architecture), a Qwen2-MoE (qwen2moe: shared expert and its
// gate, NEOX RoPE), and a Llama with attention biases (the RoPE permutation of q/k biases); and quantized files (Q8_0,
// Q4_0 as `cluster quantize` writes them, Q4_K_M and Q6_K from llama.cpp's own llama-quantize). Skipped with a message
// where llama-server has not been built (it takes 25-40 minutes on 2 cores: not part of the test command).
//   bash bench/llama-server.sh && dotnet test --project tests/Cluster.Tests -c Release -- --filter-class "*LlamaCppTests"
using System.Net.Http.Json;
using System.Text.Json;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Tests.AppHost;

namespace Cluster.Tests.Formats;

public sealed class LlamaCppTests
{
    private static string Server()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Cluster.sln"))) root = root.Parent;
        string server = Path.Combine(root?.FullName ?? "", "bench", "results", "llama.cpp", "build", "bin", "llama-server");
        if (root is null || !File.Exists(server)) Assert.Skip("llama-server not built (bash bench/llama-server.sh builds it): llama.cpp cross-check skipped");
        return server;
    }

    [Theory]
    [InlineData("moe-tiny", false)]
    [InlineData("qwen-moe-tiny", true)]
    [InlineData("tiny", true)]
    public async Task LlamaCppReadsTheGgufAsThisEngineDoes(string preset, bool biases)
    {
        string server = Server();
        var model = RandomModel.Create(preset, seed: 4);
        if (biases) model = model with { Weights = TestModels.WithAttentionBiases(model.Config, model.Weights, 5, output: model.Config.Moe is null) };
        using var dir = new TempDirectory();
        string path = dir.File("m.gguf");
        GgufWriter.Write(model, path);

        var (expectedTokens, firstProbabilities) = RunHere(path);
        var (tokens, top) = await RunLlamaServer(server, path);
        Assert.Equal(expectedTokens, tokens);
        foreach (var (id, probability) in top) Assert.Equal(firstProbabilities[id], probability, 1e-5);
    }

    /// <summary>
    /// Quantized files: Q8_0 and Q4_0 as `cluster quantize` writes them, served here in their own block format, and
    /// K-quants made by llama.cpp's own llama-quantize (Q4_K_M mixes Q4_K and Q6_K), decoded here and served in Q8_0.
    /// Both engines quantize the inputs of each product to 8 bits, so they agree closely, not exactly: the same greedy
    /// first token and the top-5 probabilities within 2% of each other.
    /// </summary>
    [Theory]
    [InlineData("q8_0")]
    [InlineData("q4_0")]
    [InlineData("Q4_K_M")]
    [InlineData("Q6_K")]
    public async Task LlamaCppAndThisEngineAgreeOnAQuantizedFile(string type)
    {
        string server = Server();
        // Rows of 256 and 512, so that the K-quants apply to every matrix (llama-quantize falls back where they do not).
        var config = RandomModel.Preset("tiny") with { Dim = 256, HiddenDim = 512, Layers = 2, Heads = 4, KvHeads = 4, MaxSeqLen = 256 };
        var model = RandomModel.Create(config, seed: 6) with { Tokenizer = RandomModel.Tokenizer("tiny", 1) };
        using var dir = new TempDirectory();
        string path = dir.File("m.gguf");
        if (type.StartsWith('q'))
            GgufWriter.Write(model, path, type == "q8_0" ? TensorType.Q8_0 : TensorType.Q4_0);
        else
        {
            GgufWriter.Write(model, dir.File("f32.gguf"));
            var start = new System.Diagnostics.ProcessStartInfo(Path.Combine(Path.GetDirectoryName(server)!, "llama-quantize"), [dir.File("f32.gguf"), path, type])
                { RedirectStandardOutput = true, RedirectStandardError = true };
            using var quantize = System.Diagnostics.Process.Start(start)!;
            var output = quantize.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            string errors = await quantize.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            await quantize.WaitForExitAsync(TestContext.Current.CancellationToken);
            Assert.True(quantize.ExitCode == 0, $"llama-quantize failed ({quantize.ExitCode}): {await output} {errors}");
        }
        Assert.NotEqual(Cluster.Compute.WeightFormat.F32, ModelLoader.Load(path).StoredFormat);

        var (expectedTokens, firstProbabilities) = RunHere(path);
        var (tokens, top) = await RunLlamaServer(server, path);
        Assert.Equal(expectedTokens[0], tokens[0]);
        Assert.Equal(5, top.Length);
        // Measured here: 0.4-0.5% apart (llama.cpp also keeps K and V in float16, and quantizes Q4_K's inputs per 256).
        foreach (var (id, probability) in top)
            Assert.True(Math.Abs(firstProbabilities[id] / probability - 1) < 0.02, $"token {id}: probability {firstProbabilities[id]} here, {probability} in llama.cpp");
    }

    private static readonly int[] Prompt = [1, 17, 300, 42, 5, 99, 7];
    private const int Steps = 8;

    /// <summary>This engine's greedy tokens after <see cref="Prompt"/> and its probabilities at the first position, the model served as the file asks.</summary>
    private static (List<int> Tokens, float[] FirstProbabilities) RunHere(string path)
    {
        var loaded = ModelLoader.Load(path);
        var tokens = new List<int>();
        using var device = new CpuDevice(1);
        using var transformer = new TransformerModel(device, loaded.Config, loaded.Weights, loaded.StoredFormat);
        using var cache = transformer.CreateCache(1, Prompt.Length + Steps, 16);
        int sequence = cache.CreateSequence();
        float[] logits = transformer.Forward([new SequenceChunk(sequence, Prompt)], cache);
        var firstProbabilities = (float[])logits.Clone();
        Sampler.Softmax(firstProbabilities);
        for (int step = 0; step < Steps; step++)
        {
            tokens.Add(Sampler.ArgMax(logits));
            if (step + 1 < Steps) logits = transformer.Forward([new SequenceChunk(sequence, [tokens[^1]])], cache);
        }
        return (tokens, firstProbabilities);
    }

    /// <summary>llama-server's greedy tokens on the same file and prompt, and its top-5 probabilities at the first position.</summary>
    private static async Task<(int[] Tokens, (int Id, double Probability)[] Top)> RunLlamaServer(string server, string path)
    {
        int port = FreePorts.Take(1)[0];
        using var process = ChildProcess.Start("llama-server", server,
            ["-m", path, "-t", "1", "-np", "1", "-c", "256", "--host", "127.0.0.1", "--port", port.ToString()], [], readyMarker: "listening on http");
        await process.Ready.WaitAsync(TimeSpan.FromMinutes(1), TestContext.Current.CancellationToken);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
        using var response = await http.PostAsJsonAsync("/completion", new
        {
            prompt = Prompt, n_predict = Steps, temperature = 0, n_probs = 5, cache_prompt = false, ignore_eos = true, return_tokens = true,
        }, TestContext.Current.CancellationToken);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        int[] tokens = [.. json.RootElement.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32())];
        // llama-server leaves the alternatives out where the first token is an incomplete UTF-8 sequence.
        (int, double)[] top = json.RootElement.TryGetProperty("completion_probabilities", out var probabilities) && probabilities.GetArrayLength() > 0
            && probabilities[0].TryGetProperty("top_logprobs", out var alternatives)
            ? [.. alternatives.EnumerateArray().Select(t => (t.GetProperty("id").GetInt32(), Math.Exp(t.GetProperty("logprob").GetDouble())))]
            : [];
        return (tokens, top);
    }
}
