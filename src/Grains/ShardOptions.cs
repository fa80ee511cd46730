// Per-silo settings for shards: CPU threads of the device and the KV cache's size.
namespace Cluster.Grains;

public sealed class ShardOptions
{
    /// <summary>Threads of the CpuDevice each shard owns.</summary>
    public int DeviceThreads { get; set; } = Math.Max(1, Environment.ProcessorCount);
    /// <summary>KV cache capacity in full-context sequences.</summary>
    public int KvSequences { get; set; } = 8;
    public int KvBlockSize { get; set; } = 16;
}
