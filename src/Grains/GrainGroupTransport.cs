// The transport of collectives between grains: a send is a Deliver call on the peer, its bytes wrapped in Immutable
// so grains on one silo hand over the array without serializing or copying it; receives come from this grain's inbox.
// A grain in several groups (a trainer's tensor, pipeline and data groups) gives each its own channel: the channel
// goes into the rank a message is filed under, so the groups' tags never meet.
using Orleans.Concurrency;
using Cluster.Compute.Collectives;
using Cluster.Contracts;

namespace Cluster.Grains;

public sealed class GrainGroupTransport(Func<string, ICollectiveMember> member, string[] peers, int rank, long epoch, CollectiveMailbox mailbox, int channel = 0)
    : ICollectiveTransport
{
    private const int ChannelStride = 1 << 16;

    public int Rank => rank;
    public int WorldSize => peers.Length;

    public Task SendAsync(int to, long tag, byte[] data, CancellationToken cancellation = default) =>
        member(peers[to]).Deliver(epoch, channel * ChannelStride + rank, tag, new Immutable<byte[]>(data));

    public Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default) => mailbox.ReceiveAsync(channel * ChannelStride + from, tag, cancellation);
}
