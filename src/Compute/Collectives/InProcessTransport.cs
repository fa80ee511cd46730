// The in-process fast path: the ranks of a group are objects in one process, and a send drops the array
// straight into the receiver's mailbox (no copy, no serialization). Used for tests and single-host groups.
namespace Cluster.Compute.Collectives;

public sealed class InProcessTransport : ICollectiveTransport
{
    private readonly InProcessTransport[] _group;

    private InProcessTransport(InProcessTransport[] group, int rank)
    {
        _group = group;
        Rank = rank;
    }

    /// <summary>The ranks 0..worldSize-1 of a new group, each able to send to all the others.</summary>
    public static ICollectiveTransport[] CreateGroup(int worldSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        var group = new InProcessTransport[worldSize];
        for (int rank = 0; rank < worldSize; rank++) group[rank] = new InProcessTransport(group, rank);
        return [.. group];
    }

    public int Rank { get; }
    public int WorldSize => _group.Length;

    /// <summary>This rank's incoming messages (tests read <see cref="CollectiveMailbox.Pending"/>; teardown calls Fail).</summary>
    public CollectiveMailbox Mailbox { get; } = new();

    public Task SendAsync(int to, long tag, byte[] data, CancellationToken cancellation = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(to);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(to, WorldSize);
        if (cancellation.IsCancellationRequested) return Task.FromCanceled(cancellation);
        _group[to].Mailbox.Deliver(Rank, tag, data);
        return Task.CompletedTask;
    }

    public Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default) =>
        Mailbox.ReceiveAsync(from, tag, cancellation);
}
