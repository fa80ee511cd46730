// The scheduler and shard grains on a 2-silo in-process cluster: pinned placement, greedy generation equal to
// TextGenerator run locally (and to llama2.c run.c on stories260K), and KV blocks all free after finished and
// cancelled requests.
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;
using Orleans.TestingHost;

namespace Cluster.Tests.Grains;

public sealed class ClusterFixture : IAsyncLifetime
{
    public InProcessTestCluster Cluster { get; private set; } = null!;

    public async ValueTask InitializeAsync() => Cluster = await TestClusters.StartAsync(silos: 2);

    public async ValueTask DisposeAsync()
    {
        await Cluster.StopAllSilosAsync();
        await Cluster.DisposeAsync();
    }
}

[Collection(nameof(ClusterCollection))]
public sealed class ServingTests(ClusterFixture fixture)
{
    private IGrainFactory Grains => fixture.Cluster.Client;

    [Fact]
    public async Task ShardsActivateOnTheSilosNamedInTheirKeys()
    {
        string[] silos = [.. fixture.Cluster.Silos.Select(s => s.Name).Reverse()];
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("pinned");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "pp=2", silos));
        var shards = (await scheduler.Status()).Shards;
        Assert.Equal(2, shards.Length);
        for (int i = 0; i < shards.Length; i++)
        {
            Assert.Equal(silos[i], ShardKey.PinnedSilo(shards[i]));
            var description = await Grains.GetGrain<IShardGrain>(shards[i]).Describe();
            Assert.Equal(silos[i], description!.Silo);
        }
    }

    [Fact]
    public async Task GreedyGenerationEqualsTextGeneratorAndFreesEveryBlock()
    {
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("tiny-greedy");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny));
        string[] prompts = ["Once upon a time", "hello", ""];
        var requests = prompts.Select(p => new GenerationRequest { Prompt = p, MaxTokens = 24, Temperature = 0 }).ToArray();

        var results = await Task.WhenAll(requests.Select(r => scheduler.GenerateAsync(r, TestContext.Current.CancellationToken)));

        var loaded = RandomModel.Create("tiny", seed: 1);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        var generator = new TextGenerator(model, loaded.Tokenizer!);
        for (int i = 0; i < prompts.Length; i++)
        {
            var expected = generator.Generate(prompts[i], 24, SamplingOptions.Greedy).ToArray();
            Assert.Equal(expected.Select(t => t.Id), results[i].Select(c => c.TokenId));
            Assert.Equal(expected.Select(t => t.Text), results[i].Select(c => c.Text));
        }
        var shard = await TestClusters.WaitForAllBlocksFreeAsync(Grains.GetGrain<IShardGrain>(ShardKey.Create("tiny-greedy", 0, 0, 0)));
        Assert.Equal(shard.TotalKvBlocks, shard.FreeKvBlocks);
        Assert.Equal(0, shard.ActiveSequences);
    }

    [Fact]
    public async Task CancelledAndAbandonedRequestsFreeTheirBlocks()
    {
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("tiny-cancel");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny));
        var request = new GenerationRequest { Prompt = "a long story", MaxTokens = 400, Temperature = 0, StopAtEos = false };

        await foreach (var chunk in scheduler.Generate(request, TestContext.Current.CancellationToken))
            if (chunk.TokenId >= 0) break;   // abandoned after the first token
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        int received = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in scheduler.Generate(request, cancel.Token))
                if (++received == 3) cancel.Cancel();
        });

        var shard = await TestClusters.WaitForAllBlocksFreeAsync(Grains.GetGrain<IShardGrain>(ShardKey.Create("tiny-cancel", 0, 0, 0)));
        Assert.Equal(shard.TotalKvBlocks, shard.FreeKvBlocks);
        Assert.Equal(0, shard.ActiveSequences);
    }

    [Fact]
    public async Task Stories260KGreedyCompletionMatchesRunC()
    {
        var source = ModelSource.File(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));
        int[] expected = File.ReadAllLines(SharedModels.Require("expected/greedy_empty_n200.token_ids.txt"))
            .Where(l => l.Length > 0).Select(int.Parse).Take(50).ToArray();
        var scheduler = Grains.GetGrain<IInferenceSchedulerGrain>("stories260K");
        await scheduler.Serve(new ModelServing(source));

        var chunks = await scheduler.GenerateAsync(new GenerationRequest { MaxTokens = 50, Temperature = 0 }, TestContext.Current.CancellationToken);

        Assert.Equal(expected, chunks.Select(c => c.TokenId));
        var models = await Grains.GetGrain<IModelRegistryGrain>(0).List();
        Assert.Contains(models, m => m.Id == "stories260K");
    }
}

[CollectionDefinition(nameof(ClusterCollection))]
public sealed class ClusterCollection : ICollectionFixture<ClusterFixture>;
