// Admission control on a cluster whose KV cache holds one long request: a full waiting queue answers 429 with
// Retry-After over HTTP; a client that goes away while queued leaves the queue at once, and afterwards every KV block
// is free. Prompt chunks share a step's token budget shortest first, so a long prefill holds no short prompt up.
using System.Net;
using System.Text;
using System.Text.Json;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Tests.Gateway;
using Orleans.TestingHost;

namespace Cluster.Tests.Grains;

public sealed class AdmissionTests : IAsyncLifetime
{
    private InProcessTestCluster _cluster = null!;
    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync() => _cluster = await TestClusters.StartAsync(silos: 1,
        schedulers: o => (o.MaxWaiting, o.MaxBatchTokens) = (2, 32),
        shards: o => o.KvSequences = 1);   // one full-context sequence of KV room

    public async ValueTask DisposeAsync()
    {
        await _cluster.StopAllSilosAsync();
        await _cluster.DisposeAsync();
    }

    /// <summary>
    /// Tiny with an 8192-token context, so that a request can take the whole KV cache and still be decoding, thousands
    /// of steps later, when the test cancels it (with tiny's own 512 the hog finished within the test on a fast CPU and
    /// let the queued requests in).
    /// </summary>
    private async Task<IInferenceSchedulerGrain> ServeLongContextTiny(string id, Formats.TempDirectory files)
    {
        var tiny = RandomModel.Create("tiny", seed: 1);
        string path = files.File("tiny-8k.gguf");
        GgufWriter.Write(tiny with { Config = tiny.Config with { MaxSeqLen = HogContext } }, path);
        var scheduler = _cluster.Client.GetGrain<IInferenceSchedulerGrain>(id);
        await scheduler.Serve(new ModelServing(ModelSource.File(path)));
        return scheduler;
    }

    private const int HogContext = 8192;

    /// <summary>A request that takes the whole KV cache (its prompt and the tokens it may make fill every block) and runs until cancelled.</summary>
    private static GenerationRequest Hog => new() { Prompt = "a", MaxTokens = HogContext - 12, Temperature = 0, StopAtEos = false };

    private static async Task<IAsyncEnumerator<GeneratedChunk>> Started(IInferenceSchedulerGrain scheduler, GenerationRequest request, CancellationToken cancel)
    {
        var chunks = scheduler.Generate(request, cancel).GetAsyncEnumerator(cancel);
        Assert.True(await chunks.MoveNextAsync());
        return chunks;
    }

    private static async Task WaitFor(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting until {what}");
            await Task.Delay(50, Cancel);
        }
    }

    [Fact]
    public async Task AFullQueueIs429AndADisconnectedClientLeavesTheQueue()
    {
        using var files = new Formats.TempDirectory();
        var scheduler = await ServeLongContextTiny("admission", files);
        // The gateway starts first: between the queue filling and the waiters going away there is one HTTP call, far
        // less than the hog's thousands of decode steps (the waiters must still be queued when their clients leave).
        await using var gateway = await GatewayHost.StartAsync(_cluster.Client);
        using var http = gateway.Http();
        using var hogCancel = CancellationTokenSource.CreateLinkedTokenSource(Cancel);
        var hog = await Started(scheduler, Hog, hogCancel.Token);

        using var waitersCancel = CancellationTokenSource.CreateLinkedTokenSource(Cancel);
        var waiters = Enumerable.Range(0, 2).Select(_ => Task.Run(async () =>
        {
            await foreach (var _ in scheduler.Generate(Hog with { MaxTokens = 4 }, waitersCancel.Token)) { }
        })).ToArray();
        await WaitFor(async () => (await scheduler.Status()).Waiting == 2, "two requests wait");

        using (var refused = await http.PostAsync("v1/completions",
            new StringContent("""{"model":"admission","prompt":"b","max_tokens":2}""", Encoding.UTF8, "application/json"), Cancel))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
            Assert.Equal(TimeSpan.FromSeconds(2), refused.Headers.RetryAfter?.Delta);
            using var error = JsonDocument.Parse(await refused.Content.ReadAsStringAsync(Cancel));
            Assert.Equal("model_overloaded", error.RootElement.GetProperty("error").GetProperty("code").GetString());
        }

        waitersCancel.Cancel();   // the queued clients go away: they leave the queue without being prefilled
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Task.WhenAll(waiters));
        await WaitFor(async () => (await scheduler.Status()).Waiting == 0, "the cancelled requests leave the queue");
        Assert.Equal(1, (await scheduler.Status()).Running);   // the hog still decodes: the waiters left, they were not served

        hogCancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => { while (await hog.MoveNextAsync()) { } });
        await hog.DisposeAsync();
        var shard = await TestClusters.WaitForAllBlocksFreeAsync(_cluster.Client.GetGrain<IShardGrain>(ShardKey.Create("admission", 0, 0, 0)));
        Assert.Equal(shard.TotalKvBlocks, shard.FreeKvBlocks);
    }

    [Theory]
    [InlineData("")]
    [InlineData("pp=2")]
    public async Task APromptLongerThanTheStepBudgetGeneratesAsIfPrefilledWhole(string layout)
    {
        // Prompts of 100, 70 and 45 tokens under a 32-token budget, at once: each is prefilled over several steps, on
        // either lane of a pipeline. One shard has one lane, so a chunk comes back while the rest of its prompt is still
        // unsent (the case that streamed stale tokens); each must generate as if prefilled whole.
        var scheduler = _cluster.Client.GetGrain<IInferenceSchedulerGrain>($"chunked-{layout}");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, layout));
        int[][] prompts = [.. new[] { 100, 70, 45 }.Select(n => new[] { 1 }.Concat(Enumerable.Range(0, n - 1).Select(i => 3 + (i * 5 + n) % 500)).ToArray())];

        var outputs = await Task.WhenAll(prompts.Select(prompt => scheduler.GenerateAsync(
            new GenerationRequest { PromptTokens = prompt, MaxTokens = 8, Temperature = 0, StopAtEos = false }, Cancel)));

        var loaded = RandomModel.Create("tiny", seed: 1);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(ShardedServingTests.Greedy(model, prompts[i], 8), outputs[i].Select(c => c.TokenId));
    }

    [Theory]
    [InlineData(new[] { 3, 400 }, 32, new[] { 3, 29 })]            // the short prompt whole, the long one the rest
    [InlineData(new[] { 100, 100, 100 }, 32, new[] { 10, 11, 11 })]  // even shares
    [InlineData(new[] { 1, 2, 500, 900 }, 64, new[] { 1, 2, 30, 31 })]
    [InlineData(new[] { 50, 60 }, 1, new[] { 1, 0 })]               // one token: the shortest
    [InlineData(new[] { 5 }, 256, new[] { 5 })]
    public void PromptChunksShareTheStepBudgetShortestFirst(int[] remaining, int budget, int[] expected) =>
        Assert.Equal(expected, Cluster.Grains.InferenceSchedulerGrain.PromptShares(remaining, budget));
}
