// A grain that takes part in collectives (a shard in its stage's tensor-parallel group, a trainer in its data-parallel
// group): its peers hand it their messages here.
using Orleans.Concurrency;

namespace Cluster.Contracts;

public interface ICollectiveMember : IGrainWithStringKey
{
    /// <summary>A peer's collective message for <paramref name="epoch"/> (interleaves with a call blocked on it).</summary>
    [AlwaysInterleave]
    Task Deliver(long epoch, int fromRank, long tag, Immutable<byte[]> data);
}
