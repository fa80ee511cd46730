// The transport of a stage's tensor-parallel collectives: a send is a Deliver call on the peer shard grain, its
// bytes wrapped in Immutable so shards on one silo hand over the array without serializing or copying it.
using Orleans.Concurrency;
using Cluster.Compute.Collectives;
using Cluster.Contracts;

namespace Cluster.Grains;

public sealed class ShardGroupTransport(IGrainFactory grains, string[] peers, int rank, long epoch, CollectiveMailbox mailbox) : ICollectiveTransport
{
    public int Rank => rank;
    public int WorldSize => peers.Length;

    public Task SendAsync(int to, long tag, byte[] data, CancellationToken cancellation = default) =>
        grains.GetGrain<IShardGrain>(peers[to]).Deliver(epoch, rank, tag, new Immutable<byte[]>(data));

    public Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default) => mailbox.ReceiveAsync(from, tag, cancellation);
}
