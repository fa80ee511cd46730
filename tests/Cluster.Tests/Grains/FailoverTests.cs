// A 3-silo cluster loses the silo its shard was pinned to: the shard reactivates on another silo (as a new grain, the
// next generation of its key), reloads, and the
// next generation succeeds with the same tokens; and 8 streams in flight when a pipeline stage's silo dies all
// finish with exactly the tokens of an undisturbed run (the scheduler replays them on a new epoch); when the lost
// stage cannot be reloaded within the failover timeout, requests end with ModelUnavailableException (HTTP 503); and
// streams read as the gateway reads them carry on with the same tokens when the scheduler's own silo dies.
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Formats;

namespace Cluster.Tests.Grains;

[Collection(nameof(ClusterCollection))]   // one cluster test at a time: the machine has few cores
public sealed class FailoverTests
{
    [Fact]
    public async Task ShardReactivatesElsewhereWhenItsSiloStops()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 3);
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("failover");
        string schedulerSilo = (await scheduler.Status()).Silo;
        var victim = cluster.Silos.Skip(1).First(s => s.Name != schedulerSilo);   // neither the primary nor the scheduler's
        var shard = await scheduler.Serve(new ModelServing(TestClusters.Tiny, Silos: [victim.Name]));
        Assert.Equal(victim.Name, shard.Silo);
        var request = new GenerationRequest { Prompt = "hello", MaxTokens = 16, Temperature = 0 };
        var before = await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken);

        await cluster.StopSiloAsync(victim, TestContext.Current.CancellationToken);
        var after = await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken);

        Assert.Equal(before, after);
        string key = (await scheduler.Status()).Shards.Single();
        Assert.NotEqual(shard.Key, key);   // a new grain (the next key generation): the dead silo's registration is not in its way
        var moved = await cluster.Client.GetGrain<IShardGrain>(key).Describe();
        Assert.NotNull(moved);
        Assert.NotEqual(victim.Name, moved.Silo);
    }

    [Fact]
    public async Task ShardReactivatesElsewhereWhenItsSiloIsKilled()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 3);
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("killed");
        string schedulerSilo = (await scheduler.Status()).Silo;
        var victim = cluster.Silos.Skip(1).First(s => s.Name != schedulerSilo);
        var shard = await scheduler.Serve(new ModelServing(TestClusters.Tiny, Silos: [victim.Name]));
        Assert.Equal(victim.Name, shard.Silo);
        var request = new GenerationRequest { Prompt = "hello", MaxTokens = 16, Temperature = 0 };
        var before = await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken);

        await cluster.KillSiloAsync(victim, TestContext.Current.CancellationToken);   // no graceful shutdown: the process "dies"
        var management = cluster.Client.GetGrain<IManagementGrain>(0);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while ((await management.GetHosts(true, TestContext.Current.CancellationToken)).ContainsKey(victim.SiloAddress))
        {
            Assert.True(DateTime.UtcNow < deadline, "the killed silo was never declared dead");
            await Task.Delay(250, TestContext.Current.CancellationToken);
        }
        var after = await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken);

        Assert.Equal(before, after);
        string key = (await scheduler.Status()).Shards.Single();
        Assert.NotEqual(shard.Key, key);   // a new grain (the next key generation): the dead silo's registration is not in its way
        var moved = await cluster.Client.GetGrain<IShardGrain>(key).Describe();
        Assert.NotNull(moved);
        Assert.NotEqual(victim.Name, moved.Silo);
    }

    /// <summary>A pipeline stage's silo, or under ep=2 the silo of half the experts of an MoE model, killed mid-stream.</summary>
    [Theory]
    [InlineData("tiny", "pp=2")]
    [InlineData("moe-tiny", "ep=2")]
    public async Task EightStreamsSurviveTheLossOfAStageSilo(string preset, string layout)
    {
        await using var cluster = await TestClusters.StartAsync(silos: 3);
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("mid-stream-" + preset);
        string schedulerSilo = (await scheduler.Status()).Silo;
        var victim = cluster.Silos.Skip(1).First(s => s.Name != schedulerSilo);
        var survivor = cluster.Silos.First(s => s != victim);
        await scheduler.Serve(new ModelServing(ModelSource.Random(preset, seed: 1), layout, [survivor.Name, victim.Name]));   // stage 1 (ep: rank 1) on the victim
        var requests = ShardedServingTests.MixedRequests(8).Select(r => r with { MaxTokens = 60 }).ToArray();
        var undisturbed = await Task.WhenAll(requests.Select(r => scheduler.GenerateAsync(r, TestContext.Current.CancellationToken)));

        var (runs, started) = TestClusters.StartStreams(requests, r => scheduler.Generate(r, TestContext.Current.CancellationToken));
        await started;
        await cluster.KillSiloAsync(victim, TestContext.Current.CancellationToken);
        var disturbed = await Task.WhenAll(runs);

        for (int i = 0; i < requests.Length; i++) Assert.Equal(undisturbed[i], disturbed[i]);
        var shards = (await scheduler.Status()).Shards;
        var moved = await cluster.Client.GetGrain<IShardGrain>(shards[1]).Describe();
        Assert.NotNull(moved);
        Assert.NotEqual(victim.Name, moved.Silo);
    }

    [Fact]
    public async Task RequestsEndWithModelUnavailableWhenALostStageCannotBeReloaded()
    {
        using var files = new Formats.TempDirectory();
        string path = files.File("tiny.gguf");
        GgufWriter.Write(RandomModel.Create("tiny", seed: 1), path);
        await using var cluster = await TestClusters.StartAsync(silos: 3, o => o.FailoverTimeout = TimeSpan.FromSeconds(3));
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("unreloadable");
        string schedulerSilo = (await scheduler.Status()).Silo;
        var victim = cluster.Silos.Skip(1).First(s => s.Name != schedulerSilo);
        var survivor = cluster.Silos.First(s => s != victim);
        await scheduler.Serve(new ModelServing(ModelSource.File(path), "pp=2", [survivor.Name, victim.Name]));
        var request = new GenerationRequest { Prompt = "hello", MaxTokens = 8, Temperature = 0 };
        Assert.Equal(8, (await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken)).Count);

        File.Delete(path);   // the model's storage is gone too: stage 1 cannot be loaded anywhere else
        await cluster.KillSiloAsync(victim, TestContext.Current.CancellationToken);

        await Assert.ThrowsAsync<ModelUnavailableException>(() => scheduler.GenerateAsync(request, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task AModelServedThroughTheApiComesBackAfterItsSchedulersSiloDies()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 3);   // nothing configured: the serving comes from the Serve call only
        var primary = cluster.Silos[0];
        IInferenceSchedulerGrain? scheduler = null;
        foreach (string id in Enumerable.Range(0, 12).Select(i => $"api-served-{i}"))   // a scheduler away from the primary
        {
            var candidate = cluster.Client.GetGrain<IInferenceSchedulerGrain>(id);
            if ((await candidate.Status()).Silo != primary.Name) { scheduler = candidate; break; }
        }
        Assert.NotNull(scheduler);
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "pp=2"));
        var request = new GenerationRequest { Prompt = "Once", MaxTokens = 16, Temperature = 0 };
        var before = await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken);
        var victim = cluster.Silos.Single(s => s.Name == scheduler.Status().Result.Silo);
        await cluster.KillSiloAsync(victim, TestContext.Current.CancellationToken);

        var deadline = DateTime.UtcNow.AddSeconds(60);
        List<GeneratedChunk>? after = null;
        while (after is null)
            try { after = await scheduler.GenerateAsync(request, TestContext.Current.CancellationToken); }
            catch (Exception) when (DateTime.UtcNow < deadline) { await Task.Delay(500, TestContext.Current.CancellationToken); }   // until the silo is declared dead
        Assert.Equal(before.Select(c => c.TokenId), after.Select(c => c.TokenId));
        Assert.NotEqual(victim.Name, (await scheduler.Status()).Silo);
        Assert.Contains(await cluster.Client.GetGrain<IModelRegistryGrain>(0).List(), m => m.Id == scheduler.GetPrimaryKeyString());
    }

    [Fact]
    public async Task StreamsResumeWhenTheSchedulersSiloDies()
    {
        var serving = new ModelServing(TestClusters.Tiny, "pp=2");
        string[] ids = [.. Enumerable.Range(0, 12).Select(i => $"resilient-{i}")];
        await using var cluster = await TestClusters.StartAsync(silos: 3, o =>
        {
            foreach (string id in ids) o.ConfiguredModels[id] = serving;   // what each silo's configuration would say
        });
        var primary = cluster.Silos[0];
        IInferenceSchedulerGrain? scheduler = null;
        foreach (string id in ids)   // a scheduler away from the primary, whose gateway the client uses
        {
            var candidate = cluster.Client.GetGrain<IInferenceSchedulerGrain>(id);
            if ((await candidate.Status()).Silo != primary.Name) { scheduler = candidate; break; }
        }
        Assert.NotNull(scheduler);
        var victim = cluster.Silos.Single(s => s.Name == scheduler.Status().Result.Silo);
        var requests = ShardedServingTests.MixedRequests(8).Select(r => r with { MaxTokens = 48 }).ToArray();
        IAsyncEnumerable<GeneratedChunk> Resumable(GenerationRequest r) => TestClusters.Resumable(scheduler, r, TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        var undisturbed = await Task.WhenAll(requests.Select(r => Resumable(r).ToListAsync(TestContext.Current.CancellationToken).AsTask()));

        var (runs, started) = TestClusters.StartStreams(requests, Resumable);
        await started;
        await cluster.KillSiloAsync(victim, TestContext.Current.CancellationToken);
        var disturbed = await Task.WhenAll(runs);

        for (int i = 0; i < requests.Length; i++) Assert.Equal(undisturbed[i], disturbed[i]);
        Assert.NotEqual(victim.Name, (await scheduler.Status()).Silo);
    }

    /// <summary>The stream as the gateway reads it (resuming on a lost scheduler); signals after its second chunk.</summary>
}
