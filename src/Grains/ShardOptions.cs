// Per-silo settings for shards and trainers: CPU threads of the device, the KV cache's size, and where trainers run
// their kernels.
namespace Cluster.Grains;

public sealed class ShardOptions
{
    /// <summary>Threads of the CpuDevice each shard owns.</summary>
    public int DeviceThreads { get; set; } = Math.Max(1, Environment.ProcessorCount);
    /// <summary>KV cache capacity in full-context sequences.</summary>
    public int KvSequences { get; set; } = 8;
    public int KvBlockSize { get; set; } = 16;
    /// <summary>Where trainer grains run their kernels: "cpu", or an ILGPU device ("cuda", "opencl", "ilgpu-cpu"), one per trainer.</summary>
    public string TrainingDevice { get; set; } = "cpu";
}
