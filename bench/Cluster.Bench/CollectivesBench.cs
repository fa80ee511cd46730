// All-reduce and all-to-all time and bus bandwidth of CollectiveGroup (float32, 1 MiB chunks), with 2..4 members:
// (a) in one process over InProcessTransport (chunk arrays handed over, no serialization); (b) across silos, one member per silo of
// an in-process cluster (loopback TCP): each member is a benchmark grain whose transport sends chunks as grain calls
// Deliver(run, fromRank, tag, Immutable<byte[]>), like ShardGroupTransport, and the collective runs inside a grain
// method started on every member at once. Bus bandwidth follows NCCL: all-reduce size x 2(N-1)/N / time,
// all-to-all size x (N-1)/N / time, where size is each member's buffer.
// Run: dotnet run -c Release --project bench/Cluster.Bench -- collectives [--sizes 1,4,16,64] [--members 2,3,4]
using System.Diagnostics;
using Cluster.Compute.Collectives;
using Cluster.Grains;
using Orleans.Concurrency;

namespace Cluster.Bench;

public enum CollectiveOp { AllReduce, AllToAll }

/// <summary>One member's part in a timed run: <see cref="Warmup"/> untimed operations, then up to <see cref="Repetitions"/> timed ones.</summary>
[GenerateSerializer, Immutable]
public sealed record CollectiveRun(
    [property: Id(0)] long Id, [property: Id(1)] string[] Members, [property: Id(2)] int Rank, [property: Id(3)] CollectiveOp Op,
    [property: Id(4)] int Floats, [property: Id(5)] int Warmup, [property: Id(6)] int Repetitions);

public interface ICollectiveBenchGrain : IGrainWithStringKey
{
    /// <summary>Runs the collective with the other members (who must be running it too); returns seconds per timed operation.</summary>
    Task<double> Run(CollectiveRun run);

    /// <summary>A peer's chunk; interleaves with the Run that waits for it.</summary>
    [AlwaysInterleave]
    Task Deliver(long run, int fromRank, long tag, Immutable<byte[]> data);

    Task<string> Silo();
}

[PinnedShardPlacement]
public sealed class CollectiveBenchGrain(ILocalSiloDetails silo) : Grain, ICollectiveBenchGrain
{
    // Per run, since a peer's first chunk may arrive before this member's Run starts. Touched only on the grain's turn.
    private readonly Dictionary<long, CollectiveMailbox> _mailboxes = [];

    public async Task<double> Run(CollectiveRun run)
    {
        var transport = new GrainTransport(GrainFactory, run.Members, run.Rank, run.Id, Mailbox(run.Id));
        try
        {
            return await CollectivesBench.Time(new CollectiveGroup(transport), run.Op, run.Floats, run.Warmup, run.Repetitions);
        }
        finally
        {
            _mailboxes.Remove(run.Id);
        }
    }

    public Task Deliver(long run, int fromRank, long tag, Immutable<byte[]> data)
    {
        Mailbox(run).Deliver(fromRank, tag, data.Value);
        return Task.CompletedTask;
    }

    public Task<string> Silo() => Task.FromResult(silo.Name);

    private CollectiveMailbox Mailbox(long run) =>
        _mailboxes.TryGetValue(run, out var mailbox) ? mailbox : _mailboxes[run] = new CollectiveMailbox();

    /// <summary>ShardGroupTransport's scheme for the benchmark grain: a send is a Deliver call on the peer.</summary>
    private sealed class GrainTransport(IGrainFactory grains, string[] members, int rank, long run, CollectiveMailbox mailbox) : ICollectiveTransport
    {
        public int Rank => rank;
        public int WorldSize => members.Length;

        public Task SendAsync(int to, long tag, byte[] data, CancellationToken cancellation = default) =>
            grains.GetGrain<ICollectiveBenchGrain>(members[to]).Deliver(run, rank, tag, new Immutable<byte[]>(data));

        public Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default) => mailbox.ReceiveAsync(from, tag, cancellation);
    }
}

public static class CollectivesBench
{
    public static async Task Run(int[] sizesMiB, int[] memberCounts)
    {
        Console.WriteLine("CollectiveGroup (ring all-reduce, direct all-to-all, float32, 1 MiB chunks); time per operation (slowest member's mean " +
            $"over at least 2 timed operations filling ~{TargetSeconds} s, after 1 warm-up); bus GB/s (NCCL): all-reduce size x 2(N-1)/N / time, all-to-all size x (N-1)/N / time");
        Console.WriteLine();
        Console.WriteLine("In process (InProcessTransport hands each chunk array to the receiver without copy or serialization; CollectiveGroup " +
            "still copies the data into new chunk arrays and out again; one task per member):");
        Console.WriteLine();
        await Table(memberCounts, sizesMiB, (members, op, floats, repetitions) => RunInProcess(members, op, floats, repetitions));

        int silos = memberCounts.Max();
        await using var cluster = await BenchCluster.StartAsync(silos);
        string[] names = cluster.SiloNames();
        Console.WriteLine();
        Console.WriteLine($"Across silos ({silos}-silo in-process cluster, loopback TCP): member i is a grain pinned to silo i; chunks travel as " +
            "grain calls Deliver(run, fromRank, tag, Immutable<byte[]>) like ShardGroupTransport; the collective runs inside a grain call on every member at once:");
        Console.WriteLine();
        long runId = 0;
        await Table(memberCounts, sizesMiB, async (members, op, floats, repetitions) =>
        {
            long id = ++runId;
            var keys = Enumerable.Range(0, members).Select(rank => $"member{rank}@{names[rank]}").ToArray();
            var grains = keys.Select(key => cluster.Client.GetGrain<ICollectiveBenchGrain>(key)).ToArray();
            for (int rank = 0; rank < members; rank++)
                if (await grains[rank].Silo() != names[rank]) throw new InvalidOperationException($"member {rank} did not activate on silo {names[rank]}");
            var times = await Task.WhenAll(grains.Select((grain, rank) => grain.Run(new CollectiveRun(id, keys, rank, op, floats, 1, repetitions))));
            return times.Max();
        });
    }

    /// <summary>Timed operations fill about this long (at least 2 operations), so the whole command stays within a few minutes.</summary>
    public const double TargetSeconds = 1.0;
    private const int MaxRepetitions = 1000;

    private static async Task Table(int[] memberCounts, int[] sizesMiB, Func<int, CollectiveOp, int, int, Task<double>> measure)
    {
        Console.WriteLine("| members | size | all-reduce ms | all-reduce bus GB/s | all-to-all ms | all-to-all bus GB/s |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|");
        foreach (int members in memberCounts)
            foreach (int sizeMiB in sizesMiB)
            {
                long bytes = (long)sizeMiB << 20;
                int floats = (int)(bytes / sizeof(float));
                double allReduce = await measure(members, CollectiveOp.AllReduce, floats, MaxRepetitions);
                double allToAll = await measure(members, CollectiveOp.AllToAll, floats, MaxRepetitions);
                double reduceBus = bytes * 2.0 * (members - 1) / members / allReduce / 1e9;
                double allToAllBus = bytes * (double)(members - 1) / members / allToAll / 1e9;
                Console.WriteLine($"| {members} | {sizeMiB} MiB | {allReduce * 1e3:F1} | {reduceBus:F2} | {allToAll * 1e3:F1} | {allToAllBus:F2} |");
            }
    }

    private static async Task<double> RunInProcess(int members, CollectiveOp op, int floats, int repetitions)
    {
        var transports = InProcessTransport.CreateGroup(members);
        var times = await Task.WhenAll(transports.Select(t => Task.Run(() => Time(new CollectiveGroup(t), op, floats, 1, repetitions))));
        return times.Max();
    }

    /// <summary>
    /// One member: <paramref name="warmup"/> operations, then one timed probe, after which rank 0 picks how many more
    /// timed operations fill about <see cref="TargetSeconds"/> (at least 1, at most <paramref name="maxRepetitions"/> - 1)
    /// and broadcasts the count; returns the mean seconds per timed operation (the broadcast is not timed).
    /// </summary>
    public static async Task<double> Time(CollectiveGroup group, CollectiveOp op, int floats, int warmup, int maxRepetitions)
    {
        // Zeros: all-reduce sums in place, and zeros stay zeros however often (the cost of adding and copying does not depend on the values).
        var data = new float[floats];
        var parts = Enumerable.Range(0, group.WorldSize).Select(rank =>
        {
            var (offset, count) = CollectiveGroup.Partition(floats, group.WorldSize, rank);
            return data.AsSpan(offset, count).ToArray();
        }).ToArray();
        Task Once() => op == CollectiveOp.AllReduce ? group.AllReduce(data) : group.AllToAll(parts);
        for (int i = 0; i < warmup; i++) await Once();
        var clock = Stopwatch.StartNew();
        await Once();
        double probe = clock.Elapsed.TotalSeconds;
        float[] more = [(float)Math.Clamp(Math.Ceiling(TargetSeconds / probe) - 1, 1, Math.Max(1, maxRepetitions - 1))];
        await group.Broadcast(more, root: 0);
        clock.Restart();
        for (int i = 0; i < (int)more[0]; i++) await Once();
        return (probe + clock.Elapsed.TotalSeconds) / (1 + (int)more[0]);
    }
}
