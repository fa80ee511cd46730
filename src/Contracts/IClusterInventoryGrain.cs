// What each silo owns: its configured devices (Cluster__Devices) and the shards and trainers each holds, reported by the
// silo when it starts and whenever a device is taken or given back (key 0).
namespace Cluster.Contracts;

/// <summary>One device of a silo: its kind and name, CPU threads (or GPU threads), memory, its name in the silo's configuration ("cuda:1") and the shards and trainers on it.</summary>
[GenerateSerializer, Immutable]
public sealed record DeviceReport(
    [property: Id(0)] string Kind, [property: Id(1)] string Name, [property: Id(2)] int Threads, [property: Id(3)] long MemoryBytes,
    [property: Id(4)] string Device, [property: Id(5)] DeviceHolder[] Holders);

/// <summary>
/// A shard or trainer on a device (its grain key) and the memory it reported (0 until reported): a shard its weights, KV
/// cache and scratch; a trainer, after each step, its training state (parameters, gradients, AdamW's moments) as
/// WeightBytes and its activation workspace.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record DeviceHolder([property: Id(0)] string Key, [property: Id(1)] long WeightBytes, [property: Id(2)] long KvBytes, [property: Id(3)] long WorkspaceBytes);

[GenerateSerializer, Immutable]
public sealed record SiloInventory([property: Id(0)] string Silo, [property: Id(1)] string Address, [property: Id(2)] DeviceReport[] Devices);

public interface IClusterInventoryGrain : IGrainWithIntegerKey
{
    Task Report(SiloInventory inventory);

    /// <summary>The inventories of the silos that are active now.</summary>
    Task<SiloInventory[]> ActiveSilos();
}
