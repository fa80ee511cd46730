// The transport of collectives between grains: a send is a Deliver call on the peer, its bytes wrapped in Immutable
// so grains on one silo hand over the array without serializing or copying it; receives come from this grain's inbox.
using Orleans.Concurrency;
using Cluster.Compute.Collectives;
using Cluster.Contracts;

namespace Cluster.Grains;

public sealed class GrainGroupTransport(Func<string, ICollectiveMember> member, string[] peers, int rank, long epoch, CollectiveMailbox mailbox)
    : ICollectiveTransport
{
    public int Rank => rank;
    public int WorldSize => peers.Length;

    public Task SendAsync(int to, long tag, byte[] data, CancellationToken cancellation = default) =>
        member(peers[to]).Deliver(epoch, rank, tag, new Immutable<byte[]>(data));

    public Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default) => mailbox.ReceiveAsync(from, tag, cancellation);
}
