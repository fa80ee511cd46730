// Sharded serving on the 2-silo cluster: every layout's greedy output equals the model on one device (tiny, moe-tiny with
// its experts over both silos, and stories260K against llama2.c run.c), 16 concurrent streaming requests of mixed lengths each equal their run alone,
// prompts longer than a step's token budget go down the pipeline chunk after chunk, prompts sharing a prefix reuse
// its cached blocks on every shard, and afterwards (also after cancellations) every KV block is free again.
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;

namespace Cluster.Tests.Grains;

[Collection(nameof(ClusterCollection))]
public sealed class ShardedServingTests(ClusterFixture fixture)
{
    private IGrainFactory Grains => fixture.Cluster.Client;
    private string[] Silos => [.. fixture.Cluster.Silos.Select(s => s.Name)];

    [Theory]
    [InlineData("tp=2")]
    [InlineData("pp=2")]
    [InlineData("pp=3")]
    [InlineData("tp=2,pp=2")]
    [InlineData("dp=2")]
    public Task GreedyOutputUnderLayoutEqualsOneDevice(string layout) => AssertGreedyOutputEqualsOneDevice("tiny", layout);

    /// <summary>A mixture-of-experts model with its experts spread over shard grains on both silos (ep), or its stages.</summary>
    [Theory]
    [InlineData("ep=2")]
    [InlineData("ep=2,pp=2")]
    [InlineData("tp=2,ep=2")]
    public Task GreedyMoeOutputUnderLayoutEqualsOneDevice(string layout) => AssertGreedyOutputEqualsOneDevice("moe-tiny", layout);

    /// <summary>
    /// Weights served as Q8_0 / Q4_0 blocks and keys and values cached in float16 / int8: the tensor-parallel cuts fall
    /// on block boundaries (each rank's blocks are the whole matrix's) and on KV heads (each keeps its own int8 scales),
    /// so every layout greedily generates what one device does in the same formats.
    /// </summary>
    [Theory]
    [InlineData("tp=2", "q8_0", "f16")]
    [InlineData("pp=2", "q4_0", "int8")]
    public async Task GreedyQuantizedOutputUnderLayoutEqualsOneDevice(string layout, string weights, string kvCache)
    {
        await AssertGreedyOutputEqualsOneDevice("tiny", layout, weights, kvCache);
        // Each shard holds its slice in the block format and its KV pool in the cache's format (the bytes it reports are
        // those of its slice quantized here, and of its pool: 8 full-context sequences of its layers and KV heads).
        var loaded = RandomModel.Create("tiny", seed: 1);
        var plan = Cluster.Model.Parallel.ShardingPlan.Create(loaded.Config, Cluster.Model.Parallel.ParallelLayout.Parse(layout));
        var kvFormat = KvFormats.Parse(kvCache);
        using var device = new CpuDevice(1);
        long weightBytes = 0, float32 = 0, kvBytes = 0;
        for (int stage = 0; stage < plan.Layout.PipelineStages; stage++)
            for (int rank = 0; rank < plan.Layout.StageRanks; rank++)
            {
                var spec = plan.Get(0, stage, rank);
                var slice = Cluster.Model.Parallel.ShardWeights.Slice(loaded.Config, loaded.Weights, spec);
                using (var model = new TransformerModel(device, loaded.Config, slice, weightFormat: WeightFormats.Parse(weights))) weightBytes += model.WeightBytes;
                using (var model = new TransformerModel(device, loaded.Config, slice)) float32 += model.WeightBytes;
                kvBytes += 2L * spec.Layers.Count * 8 * loaded.Config.MaxSeqLen * kvFormat.BytesPerToken(spec.KvHeads.Count * loaded.Config.HeadDim, loaded.Config.HeadDim);
            }
        string id = "layout-tiny-" + layout.Replace(',', '-').Replace("=", "") + weights + kvCache;
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)   // the inventory lags the shards by a report
        {
            var holders = (await Grains.GetGrain<IClusterInventoryGrain>(0).ActiveSilos()).SelectMany(s => s.Devices).SelectMany(d => d.Holders)
                .Where(h => ShardKey.ModelId(h.Key) == id).ToArray();
            if (holders.Length == plan.Layout.PipelineStages * plan.Layout.StageRanks && holders.Sum(h => h.WeightBytes) == weightBytes && holders.Sum(h => h.KvBytes) == kvBytes) break;
            Assert.True(DateTime.UtcNow < deadline, $"the shards report {string.Join(", ", holders)}; their slices in {weights} hold {weightBytes} bytes, their {kvCache} KV pools {kvBytes}");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.True(weightBytes < float32 / 2, $"{weightBytes} bytes in {weights}, {float32} in f32");
    }

    private async Task AssertGreedyOutputEqualsOneDevice(string preset, string layout, string? weights = null, string? kvCache = null)
    {
        string id = $"layout-{preset}-" + layout.Replace(',', '-').Replace("=", "") + weights + kvCache;
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>(id);
        await scheduler.Serve(new ModelServing(ModelSource.Random(preset, seed: 1) with { Weights = weights, KvCache = kvCache }, layout, Silos));
        string[] prompts = ["Once upon a time", "hello", "", "a much longer prompt that takes a few more tokens than the others"];

        var results = await Task.WhenAll(prompts.Select(p =>
            scheduler.GenerateAsync(new GenerationRequest { Prompt = p, MaxTokens = 24, Temperature = 0 }, TestContext.Current.CancellationToken)));

        var loaded = RandomModel.Create(preset, seed: 1);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights, loaded.ServingFormat(weights), KvFormats.Parse(kvCache ?? "f32"));
        var generator = new TextGenerator(model, loaded.Tokenizer!);
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(generator.Generate(prompts[i], 24, SamplingOptions.Greedy).Select(t => t.Id), results[i].Select(c => c.TokenId));
        await AssertEveryBlockFree(scheduler);
    }

    /// <summary>
    /// The last stage samples each token with the sequence's generator state, which the scheduler moves past every draw:
    /// seeded sampling (temperature, top-p, top-k) served concurrently under a layout draws the tokens a local run draws.
    /// </summary>
    [Theory]
    [InlineData("pp=2")]
    [InlineData("tp=2")]
    public async Task SeededSamplingUnderLayoutEqualsALocalRun(string layout)
    {
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("sampled-" + layout.Replace("=", ""));
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, layout, Silos));
        (string Prompt, SamplingOptions Sampling)[] cases =
        [
            ("Once upon a time", new(0.8f, 0.9f, 0, 7)),
            ("hello", new(1f, 1f, 0, 42)),
            ("", new(0.7f, 0.95f, 5, 1234567)),
            ("a much longer prompt that takes a few more tokens than the others", new(1.2f, 0.5f, 0, 99)),
        ];

        var results = await Task.WhenAll(cases.Select(c => scheduler.GenerateAsync(new GenerationRequest
        {
            Prompt = c.Prompt, MaxTokens = 24, Temperature = c.Sampling.Temperature, TopP = c.Sampling.TopP, TopK = c.Sampling.TopK, Seed = c.Sampling.Seed,
        }, TestContext.Current.CancellationToken)));

        var loaded = RandomModel.Create("tiny", seed: 1);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        var generator = new TextGenerator(model, loaded.Tokenizer!);
        for (int i = 0; i < cases.Length; i++)
            Assert.Equal(generator.Generate(cases[i].Prompt, 24, cases[i].Sampling).Select(t => t.Id), results[i].Select(c => c.TokenId));
        Assert.Contains(results, r => r.Count > 4);   // a draw that stopped every stream at once would prove little
        await AssertEveryBlockFree(scheduler);
    }

    [Fact]
    public async Task LongPromptsFlowThroughThePipelineInChunks()
    {
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("long-prompts");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "pp=3", Silos));
        var rng = new Random(3);
        int[][] prompts = [.. new[] { 700, 300, 5 }.Select(n => new[] { 1 }.Concat(Enumerable.Range(1, n - 1).Select(_ => rng.Next(3, 512))).ToArray())];
        prompts[0] = prompts[0][..500];   // the tiny preset's context is 512

        var results = await Task.WhenAll(prompts.Select(p => scheduler.GenerateAsync(
            new GenerationRequest { PromptTokens = p, MaxTokens = 8, Temperature = 0, StopAtEos = false }, TestContext.Current.CancellationToken)));

        var loaded = RandomModel.Create("tiny", seed: 1);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(Greedy(model, prompts[i], 8), results[i].Select(c => c.TokenId));
        await AssertEveryBlockFree(scheduler);
    }

    [Theory]
    [InlineData("tp=2,pp=2")]
    [InlineData("pp=3")]
    public async Task PromptsSharingAPrefixReuseItsBlocksOnEveryShard(string layout)
    {
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("prefix-" + layout.Replace(',', '-').Replace("=", ""));
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, layout, Silos));
        var rng = new Random(8);
        int[] system = [1, .. Enumerable.Range(0, 70).Select(_ => rng.Next(3, 512))];   // a shared "system prompt"
        int[][] prompts = [.. Enumerable.Range(0, 4).Select(i => system.Concat(Enumerable.Range(0, 3 + i).Select(_ => rng.Next(3, 512))).ToArray())];
        GenerationRequest Request(int[] p) => new() { PromptTokens = p, MaxTokens = 6, Temperature = 0, StopAtEos = false };

        var first = await scheduler.GenerateAsync(Request(prompts[0]), TestContext.Current.CancellationToken);
        var rest = await Task.WhenAll(prompts.Skip(1).Select(p => scheduler.GenerateAsync(Request(p), TestContext.Current.CancellationToken)));

        var loaded = RandomModel.Create("tiny", seed: 1);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        List<GeneratedChunk>[] results = [first, .. rest];
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(Greedy(model, prompts[i], 6), results[i].Select(c => c.TokenId));
        foreach (string key in (await scheduler.Status()).Shards)
        {
            var shard = (await Grains.GetGrain<IShardGrain>(key).Describe())!;
            Assert.Equal(3 * 64, shard.PrefixHitTokens);   // each later prompt found the first's 4 full blocks of 16 (71 tokens)
        }
        await AssertEveryBlockFree(scheduler);
    }

    internal static List<int> Greedy(TransformerModel model, int[] prompt, int steps)
    {
        using var cache = model.CreateCache(1, prompt.Length + steps, 16);
        int sequence = cache.CreateSequence();
        var tokens = new List<int>();
        float[] logits = model.Forward([new SequenceChunk(sequence, prompt)], cache);
        for (int t = 0; t < steps; t++)
        {
            tokens.Add(Sampler.ArgMax(logits));
            if (t < steps - 1) logits = model.Forward([new SequenceChunk(sequence, [tokens[^1]])], cache);
        }
        return tokens;
    }

    [Fact]
    public async Task Stories15MShapeUnderTp2Pp2EqualsOneDevice()
    {
        var source = ModelSource.Random("stories15M", seed: 2);
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("stories15M-tp2-pp2");
        await scheduler.Serve(new ModelServing(source, "tp=2,pp=2", Silos));
        int[] prompt = [1, .. Enumerable.Range(0, 40).Select(i => 100 + i * 37)];

        var chunks = await scheduler.GenerateAsync(
            new GenerationRequest { PromptTokens = prompt, MaxTokens = 12, Temperature = 0, StopAtEos = false }, TestContext.Current.CancellationToken);

        var loaded = RandomModel.Create("stories15M", seed: 2);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        Assert.Equal(Greedy(model, prompt, 12), chunks.Select(c => c.TokenId));
        await AssertEveryBlockFree(scheduler);
    }

    [Fact]
    public async Task Stories260KUnderTp2Pp2MatchesRunC()
    {
        var source = ModelSource.File(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));
        int[] expected = File.ReadAllLines(SharedModels.Require("expected/greedy_empty_n200.token_ids.txt"))
            .Where(l => l.Length > 0).Select(int.Parse).Take(80).ToArray();
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("stories260K-tp2-pp2");
        await scheduler.Serve(new ModelServing(source, "tp=2,pp=2", Silos));

        var chunks = await scheduler.GenerateAsync(new GenerationRequest { MaxTokens = 80, Temperature = 0 }, TestContext.Current.CancellationToken);

        Assert.Equal(expected, chunks.Select(c => c.TokenId));
        await AssertEveryBlockFree(scheduler);
    }

    [Fact]
    public async Task SixteenConcurrentStreamsEachEqualTheirRunAlone()
    {
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("concurrent");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "pp=2", Silos));
        var requests = MixedRequests(16);
        var alone = new List<List<GeneratedChunk>>();
        foreach (var request in requests) alone.Add(await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken));

        var together = await Task.WhenAll(requests.Select(r => scheduler.GenerateAsync(r, TestContext.Current.CancellationToken)));

        for (int i = 0; i < requests.Length; i++) Assert.Equal(alone[i], together[i]);
        await AssertEveryBlockFree(scheduler);
    }

    [Fact]
    public async Task CancelledStreamsAmongRunningOnesFreeTheirBlocks()
    {
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("cancelled");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "tp=2,pp=2", Silos));
        var requests = MixedRequests(8).Select(r => r with { MaxTokens = 200, StopAtEos = false }).ToArray();
        var runs = requests.Select(async (request, i) =>
        {
            using var cancel = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
            int received = 0;
            try
            {
                await foreach (var _ in scheduler.Generate(request, cancel.Token))
                    if (i % 2 == 0 && ++received == 2 + i) cancel.Cancel();   // every other client goes away early
            }
            catch (OperationCanceledException) when (i % 2 == 0) { }
        });

        await Task.WhenAll(runs);

        await AssertEveryBlockFree(scheduler);
    }

    /// <summary>Prompts of 1 to ~40 tokens, 4 to 40 new tokens, greedy and seeded sampling mixed.</summary>
    internal static GenerationRequest[] MixedRequests(int count) =>
    [
        .. Enumerable.Range(0, count).Select(i => new GenerationRequest
        {
            Prompt = string.Join(' ', Enumerable.Repeat("word" + i, i * 3 % 13)),
            MaxTokens = 4 + i * 7 % 37,
            Temperature = i % 3 == 0 ? 0 : 0.8f,
            Seed = (ulong)(100 + i),
            StopAtEos = false,
        })
    ];

    private async Task AssertEveryBlockFree(IInferenceSchedulerGrain scheduler)
    {
        foreach (string key in (await scheduler.Status()).Shards)
        {
            var shard = await TestClusters.WaitForAllBlocksFreeAsync(Grains.GetGrain<IShardGrain>(key));
            Assert.True(shard.TotalKvBlocks == shard.FreeKvBlocks && shard.ActiveSequences == 0, $"KV blocks still held: {shard}");
        }
    }
}
