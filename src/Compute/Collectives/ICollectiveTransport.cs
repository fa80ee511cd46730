// The one thing a collective needs from the outside world: tagged point-to-point messages between the
// ranks of a group. Implementations: InProcessTransport (shared memory), and later one over the network.
namespace Cluster.Compute.Collectives;

/// <summary>Point-to-point messages between the ranks of one group. Messages between a pair of ranks are matched by tag, not arrival order.</summary>
public interface ICollectiveTransport
{
    int Rank { get; }
    int WorldSize { get; }

    /// <summary>Hands <paramref name="data"/> to rank <paramref name="to"/> (ownership passes: the sender must not touch the array afterwards).</summary>
    Task SendAsync(int to, long tag, byte[] data, CancellationToken cancellation = default);

    /// <summary>Completes with the message rank <paramref name="from"/> sent with <paramref name="tag"/> (whenever it arrived, before or after this call).</summary>
    Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default);
}
