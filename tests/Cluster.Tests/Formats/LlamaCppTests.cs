// GGUF files this project writes, read by llama.cpp itself: llama-server (built by bench/llama-server.sh into
// bench/results/llama.cpp) serves each, and its greedy tokens and first-position top-5 probabilities equal this
// engine's on the same file: a Mixtral-style MoE (llama architecture), a Qwen2-MoE (qwen2moe: shared expert and its
// gate, NEOX RoPE), and a Llama with attention biases (the RoPE permutation of q/k biases). Skipped with a message
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
        int[] prompt = [1, 17, 300, 42, 5, 99, 7];
        const int steps = 8;

        var loaded = ModelLoader.Load(path);
        var expectedTokens = new List<int>();
        float[] firstProbabilities;
        using (var device = new CpuDevice(1))
        using (var transformer = new TransformerModel(device, loaded.Config, loaded.Weights))
        using (var cache = transformer.CreateCache(1, prompt.Length + steps, 16))
        {
            int sequence = cache.CreateSequence();
            float[] logits = transformer.Forward([new SequenceChunk(sequence, prompt)], cache);
            firstProbabilities = (float[])logits.Clone();
            Sampler.Softmax(firstProbabilities);
            for (int step = 0; step < steps; step++)
            {
                expectedTokens.Add(Sampler.ArgMax(logits));
                if (step + 1 < steps) logits = transformer.Forward([new SequenceChunk(sequence, [expectedTokens[^1]])], cache);
            }
        }

        int port = FreePorts.Take(1)[0];
        using var process = ChildProcess.Start("llama-server", server,
            ["-m", path, "-t", "1", "-np", "1", "-c", "256", "--host", "127.0.0.1", "--port", port.ToString()], [], readyMarker: "listening on http");
        await process.Ready.WaitAsync(TimeSpan.FromMinutes(1), TestContext.Current.CancellationToken);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
        using var response = await http.PostAsJsonAsync("/completion", new
        {
            prompt, n_predict = steps, temperature = 0, n_probs = 5, cache_prompt = false, ignore_eos = true, return_tokens = true,
        }, TestContext.Current.CancellationToken);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        int[] tokens = [.. json.RootElement.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32())];
        Assert.Equal(expectedTokens, tokens);
        if (json.RootElement.TryGetProperty("completion_probabilities", out var probabilities) && probabilities.GetArrayLength() > 0)
            foreach (var top in probabilities[0].GetProperty("top_logprobs").EnumerateArray())
                Assert.Equal(firstProbabilities[top.GetProperty("id").GetInt32()], Math.Exp(top.GetProperty("logprob").GetDouble()), 1e-5);
    }
}
