// In-process Orleans clusters for grain tests: N silos hosting this project's grains with small shards.
using Cluster.Contracts;
using Microsoft.Extensions.DependencyInjection;
using Cluster.Grains;
using Orleans.Configuration;
using Orleans.TestingHost;

namespace Cluster.Tests.Grains;

public static class TestClusters
{
    public static readonly ModelSource Tiny = ModelSource.Random("tiny", seed: 1);

    /// <param name="trainingRoot">Checkpoints and job records of this cluster (a fresh directory under the temp folder when null).</param>
    /// <param name="shards">Changes to the test shards' options (1 device thread, 8 KV sequences).</param>
    /// <param name="training">Changes to the training options (30 s step timeout, the keeper every second).</param>
    /// <param name="clusterId">The Orleans cluster id (a fresh one when null).</param>
    /// <param name="silo">More configuration of each silo; the primary silo, the only one with a gateway, has a GatewayPort.</param>
    /// <param name="responseTimeout">Orleans' response timeout for the client and the silos (30 s when null).</param>
    public static async Task<InProcessTestCluster> StartAsync(int silos, Action<SchedulerOptions>? schedulers = null, string? trainingRoot = null,
        Action<ShardOptions>? shards = null, Action<TrainingOptions>? training = null, string? clusterId = null,
        Action<InProcessTestSiloSpecificOptions, ISiloBuilder>? silo = null, TimeSpan? responseTimeout = null)
    {
        trainingRoot ??= Path.Combine(Path.GetTempPath(), "cluster-tests", Guid.NewGuid().ToString("N"));
        var builder = new InProcessTestClusterBuilder((short)silos);
        if (clusterId is not null) builder.Options.ClusterId = clusterId;
        // Clients reach the cluster through the primary silo's gateway only, which failover tests never kill: a
        // request in flight through a gateway silo that dies is lost until the client's response timeout (30 s).
        builder.Options.GatewayPerSilo = false;
        if (responseTimeout is { } timeout)
            builder.ConfigureClient(client => client.Configure<ClientMessagingOptions>(o => o.ResponseTimeout = timeout));
        builder.ConfigureSilo((siloOptions, siloBuilder) =>
        {
            siloBuilder.AddActivityPropagation();   // as the silo host: grain calls carry the caller's span
            siloBuilder.AddClusterGrains(o =>
            {
                o.DeviceThreads = 1;
                o.KvSequences = 8;
                shards?.Invoke(o);
            }, o =>
            {
                o.StepTimeout = TimeSpan.FromSeconds(5);
                schedulers?.Invoke(o);
            }, o =>
            {
                o.Root = trainingRoot;
                o.StepTimeout = TimeSpan.FromSeconds(30);
                o.KeeperInterval = TimeSpan.FromSeconds(1);
                o.MaxRunningJobs = 16;   // tests that share a cluster may leave jobs running; the limit has a test of its own
                training?.Invoke(o);
            });
            // In-process silos share one process's CPU and memory figures, so Orleans' default resource-optimised placement
            // sees no difference between them and leans to the silo a call comes through; spread new grains at random.
            siloBuilder.Services.AddSingleton<Orleans.Runtime.PlacementStrategy, Orleans.Runtime.RandomPlacement>();
            // Declare a killed silo dead within seconds rather than the production default of about a minute.
            siloBuilder.Configure<ClusterMembershipOptions>(o =>
            {
                o.ProbeTimeout = TimeSpan.FromSeconds(1);
                o.NumMissedProbesLimit = 2;
                o.NumVotesForDeathDeclaration = 1;
            });
            if (responseTimeout is { } timeout) siloBuilder.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = timeout);
            silo?.Invoke(siloOptions, siloBuilder);
        });
        var cluster = builder.Build();
        await cluster.DeployAsync();
        return cluster;
    }

    public static async Task<List<GeneratedChunk>> GenerateAsync(
        this IInferenceSchedulerGrain scheduler, GenerationRequest request, CancellationToken cancellation = default)
    {
        var chunks = new List<GeneratedChunk>();
        await foreach (var chunk in scheduler.Generate(request, cancellation)) chunks.Add(chunk);
        return chunks;
    }

    /// <summary>Polls the job's status (through the client, which wakes a job whose grain died) until <paramref name="done"/> holds (up to 3 minutes).</summary>
    public static async Task<TrainingJobStatus> WaitForAsync(this ITrainingJobGrain job, Func<TrainingJobStatus, bool> done, CancellationToken cancel)
    {
        var deadline = DateTime.UtcNow.AddMinutes(3);
        while (true)
        {
            TrainingJobStatus? status = null;
            try { status = await job.Status(); }
            catch (Exception) when (DateTime.UtcNow < deadline) { }   // its silo just died: ask again
            if (status is not null && done(status)) return status;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"job still {status?.State} at step {status?.Step}");
            await Task.Delay(100, cancel);
        }
    }

    public static bool IsEnded(this TrainingJobStatus status) => status.State is TrainingJobState.Completed or TrainingJobState.Failed or TrainingJobState.Cancelled;

    /// <summary>Waits (up to 5 s) until the shard reports every KV block free, and returns its last description.</summary>
    public static async Task<ShardDescription> WaitForAllBlocksFreeAsync(IShardGrain shard)
    {
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (true)
        {
            var d = await shard.Describe() ?? throw new InvalidOperationException("the shard has no model loaded");
            if ((d.FreeKvBlocks == d.TotalKvBlocks && d.ActiveSequences == 0) || DateTime.UtcNow > deadline) return d;
            await Task.Delay(50);
        }
    }

    /// <summary>
    /// Starts one stream per request and returns their chunks' tasks, and a task that completes once every stream has its
    /// second chunk (or ended sooner): the moment to kill a silo mid-stream.
    /// </summary>
    public static (Task<List<GeneratedChunk>>[] Runs, Task Started) StartStreams(
        IReadOnlyList<GenerationRequest> requests, Func<GenerationRequest, IAsyncEnumerable<GeneratedChunk>> generate)
    {
        var started = requests.Select(_ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        var runs = requests.Select(async (request, i) =>
        {
            var chunks = new List<GeneratedChunk>();
            await foreach (var chunk in generate(request))
            {
                chunks.Add(chunk);
                if (chunks.Count == 2) started[i].SetResult();
            }
            started[i].TrySetResult();
            return chunks;
        }).ToArray();
        return (runs, Task.WhenAll(started.Select(s => s.Task)));
    }

    /// <summary>A generation read as the gateway reads it (ResumableGeneration: resumed on a new scheduler when its own is lost).</summary>
    public static async IAsyncEnumerable<GeneratedChunk> Resumable(IInferenceSchedulerGrain scheduler, GenerationRequest request, TimeSpan patience,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellation = default)
    {
        await using var stream = new Cluster.Gateway.ResumableGeneration(scheduler, request, patience, cancellation);
        while (await stream.MoveNextAsync()) yield return stream.Current;
    }
}
