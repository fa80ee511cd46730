// Failover with real silo processes, as the issue measured it: three silos on localhost clustering serve the tiny model
// pp=2, and a silo is killed with SIGKILL while 8 streams run (no goodbye: its peers must find out by probing it,
// SiloSettings.ConfigureMembership): the one holding stage 1, or the one running the scheduler (the streams then go
// through the gateway's ResumableGeneration). Orleans' response timeout and the scheduler's step timeouts are 10
// minutes, so a stream that waited for either would miss the limit: every stream must complete, with the tokens of an
// undisturbed run, within 2 minutes of the kill. A killed stage's shard comes back as a new grain on a live silo.
using System.Diagnostics;
using Cluster.Contracts;
using Cluster.Tests.AppHost;
using Cluster.Tests.Formats;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;

namespace Cluster.Tests.Grains;

[Collection(nameof(ClusterCollection))]   // one cluster test at a time: the machine has few cores
public sealed class SiloProcessFailoverTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromMinutes(10);

    [Fact(Timeout = 300_000)]
    public Task StreamsSurviveASigkilledStageSiloWithinTwoMinutes() => WithSilos(TestContext.Current.CancellationToken, async (silos, client, cancel) =>
    {
        var scheduler = client.GetGrain<IInferenceSchedulerGrain>("sigkill");
        string schedulerSilo = (await scheduler.Status()).Silo;
        string victim = silos.Keys.Skip(1).First(n => n != schedulerSilo);
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "pp=2", ["a", victim]));   // stage 1 on the victim
        await StreamsSurviveTheKill(silos[victim], scheduler, request => scheduler.Generate(request, cancel), cancel);

        // The stage-1 shard moved to a new grain (a later key generation) pinned to a live silo, which holds it now. It may
        // move more than once: a live silo can refuse a load while the dead one still owns part of the grain directory.
        string moved = (await scheduler.Status()).Shards[1];
        Assert.Matches(@"^sigkill/0\.1\.0~[1-9][0-9]*@[a-z]+$", moved);
        Assert.NotEqual(victim, ShardKey.PinnedSilo(moved));
        Assert.NotEqual(victim, (await client.GetGrain<IShardGrain>(moved).Describe())!.Silo);
    });

    /// <summary>
    /// The scheduler's own silo killed: a call pending there is never answered, so a gateway stream
    /// (ResumableGeneration) must notice that another activation answers for the scheduler, and resume on it.
    /// </summary>
    [Fact(Timeout = 300_000)]
    public Task GatewayStreamsSurviveASigkilledSchedulerSiloWithinTwoMinutes() => WithSilos(TestContext.Current.CancellationToken, async (silos, client, cancel) =>
    {
        // A scheduler that activated on a silo the client can lose (its gateway is silo a): keys are placed at random.
        IInferenceSchedulerGrain? scheduler = null;
        string victim = "a";
        for (int key = 0; victim == "a"; key++)
        {
            scheduler = client.GetGrain<IInferenceSchedulerGrain>($"scheduler-kill-{key}");
            victim = (await scheduler.Status()).Silo;
        }
        string other = silos.Keys.First(n => n != "a" && n != victim);
        await scheduler!.Serve(new ModelServing(TestClusters.Tiny, "pp=2", ["a", other]));   // the shards live on
        await StreamsSurviveTheKill(silos[victim], scheduler, request => TestClusters.Resumable(scheduler, request, TimeSpan.FromMinutes(2), cancel), cancel);
    });

    /// <summary>8 streams, the victim killed once each has 2 chunks: all must finish within 2 minutes, equal to undisturbed runs.</summary>
    private static async Task StreamsSurviveTheKill(ChildProcess victim, IInferenceSchedulerGrain scheduler,
        Func<GenerationRequest, IAsyncEnumerable<GeneratedChunk>> generate, CancellationToken cancel)
    {
        var requests = ShardedServingTests.MixedRequests(8).Select(r => r with { MaxTokens = 120 }).ToArray();
        var undisturbed = await Task.WhenAll(requests.Select(r => scheduler.GenerateAsync(r, cancel)));

        long longestPause = 0;   // Stopwatch ticks between two chunks of one stream, the stall the kill caused
        var (runs, started) = TestClusters.StartStreams(requests, request => Paced(generate(request), pause => InterlockedMax(ref longestPause, pause)));
        await started;
        Assert.Contains(runs, r => !r.IsCompleted);   // the kill lands mid-stream
        victim.Kill();
        var sinceKill = Stopwatch.StartNew();
        var disturbed = await Task.WhenAll(runs).WaitAsync(TimeSpan.FromMinutes(2), cancel);
        TestContext.Current.TestOutputHelper?.WriteLine($"the streams completed {sinceKill.Elapsed.TotalSeconds:0.0} s after the kill; " +
            $"the longest pause between two chunks of a stream was {(double)longestPause / Stopwatch.Frequency:0.00} s");
        for (int i = 0; i < requests.Length; i++) Assert.Equal(undisturbed[i], disturbed[i]);
    }

    private static async IAsyncEnumerable<GeneratedChunk> Paced(IAsyncEnumerable<GeneratedChunk> chunks, Action<long> pause)
    {
        long last = Stopwatch.GetTimestamp();
        await foreach (var chunk in chunks)
        {
            long now = Stopwatch.GetTimestamp();
            pause(now - last);
            last = now;
            yield return chunk;
        }
    }

    private static void InterlockedMax(ref long target, long value)
    {
        for (long seen = Volatile.Read(ref target); value > seen; seen = Volatile.Read(ref target))
            if (Interlocked.CompareExchange(ref target, value, seen) == seen) return;
    }

    /// <summary>Three silo processes a, b, c (localhost clustering, a primary) and a client whose gateway is a; response and step timeouts of 10 minutes.</summary>
    private static async Task WithSilos(CancellationToken cancel, Func<Dictionary<string, ChildProcess>, IClusterClient, CancellationToken, Task> test)
    {
        using var training = new TempDirectory();
        string[] names = ["a", "b", "c"];
        int[] siloPorts = FreePorts.Take(names.Length), gatewayPorts = FreePorts.Take(names.Length);
        var silos = new Dictionary<string, ChildProcess>();
        try
        {
            for (int i = 0; i < names.Length; i++)
                silos[names[i]] = ChildProcess.Start(names[i], "dotnet", [ChildProcess.Assembly("SiloAssembly")], new()
                {
                    ["DOTNET_ENVIRONMENT"] = "Development",
                    ["Cluster__SiloName"] = names[i],
                    ["Orleans__Endpoints__SiloPort"] = $"{siloPorts[i]}",
                    ["Orleans__Endpoints__GatewayPort"] = $"{gatewayPorts[i]}",
                    ["Cluster__PrimarySiloEndpoint"] = $"127.0.0.1:{siloPorts[0]}",
                    ["Cluster__Model__Serve"] = "false",
                    ["Cluster__DeviceThreads"] = "1",
                    ["Cluster__Training__Root"] = training.Path,   // the durable records every silo shares (a scheduler's serving)
                    ["Orleans__Messaging__ResponseTimeout"] = Patience.ToString(),
                    ["Cluster__Scheduler__StepTimeout"] = Patience.ToString(),
                    ["Cluster__Scheduler__MinStepTimeout"] = Patience.ToString(),
                }, readyMarker: "ready:");
            foreach (var silo in silos.Values) await silo.Ready.WaitAsync(TimeSpan.FromMinutes(2), cancel);

            var clientHost = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
            clientHost.UseOrleansClient(client => client.UseLocalhostClustering(gatewayPorts[0])
                .Configure<ClientMessagingOptions>(o => o.ResponseTimeout = Patience));
            using var host = clientHost.Build();
            await host.StartAsync(cancel);
            await test(silos, host.Services.GetRequiredService<IClusterClient>(), cancel);
            await host.StopAsync(cancel);
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new Exception($"silo output:\n{string.Join("\n", silos.Values.Select(s => s.Output))}", e);
        }
        finally
        {
            foreach (var silo in silos.Values) silo.Dispose();
        }
    }
}
