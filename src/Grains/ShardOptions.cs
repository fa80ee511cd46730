// Per-silo settings for shards and trainers: the silo's devices, CPU threads of a CPU device, the KV cache's size.
using Cluster.Compute;

namespace Cluster.Grains;

public sealed class ShardOptions
{
    /// <summary>
    /// The devices this silo's shards and trainers run on (Cluster__Devices: "cpu", "cuda:0,cuda:1", "ilgpu-cpu"); each
    /// shard or trainer takes one (DeviceSlots), so a node's GPUs share its shards out, one per GPU while there are free ones.
    /// </summary>
    public DeviceSpec[] Devices { get; set; } = [DeviceSpec.Cpu];
    /// <summary>Threads of the CpuDevice each shard owns (and each trainer's host kernels).</summary>
    public int DeviceThreads { get; set; } = Math.Max(1, Environment.ProcessorCount);
    /// <summary>KV cache capacity in full-context sequences.</summary>
    public int KvSequences { get; set; } = 8;
    public int KvBlockSize { get; set; } = 16;
}
