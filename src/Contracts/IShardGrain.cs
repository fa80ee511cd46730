// A shard holds (a slice of) a model on one device. Key "{modelId}/{shardIndex}", optionally "@{siloName}" to pin it.
namespace Cluster.Contracts;

public interface IShardGrain : IGrainWithStringKey
{
    /// <summary>Loads the weights unless this activation already holds the same source.</summary>
    Task<ShardDescription> Load(ModelSource source);

    Task<ForwardResult> Forward(ForwardBatch batch);

    /// <summary>Frees the sequence's KV blocks; unknown ids are ignored.</summary>
    Task ReleaseSequence(Guid sequence);

    /// <summary>Null when nothing is loaded on this activation.</summary>
    Task<ShardDescription?> Describe();
}
