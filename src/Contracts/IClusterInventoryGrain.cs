// What each silo owns (CPU cores it gives its devices, GPUs ILGPU found), reported by the silo when it starts (key 0).
namespace Cluster.Contracts;

[GenerateSerializer, Immutable]
public sealed record DeviceReport([property: Id(0)] string Kind, [property: Id(1)] string Name, [property: Id(2)] int Threads, [property: Id(3)] long MemoryBytes);

[GenerateSerializer, Immutable]
public sealed record SiloInventory([property: Id(0)] string Silo, [property: Id(1)] string Address, [property: Id(2)] DeviceReport[] Devices);

public interface IClusterInventoryGrain : IGrainWithIntegerKey
{
    Task Report(SiloInventory inventory);

    /// <summary>The inventories of the silos that are active now.</summary>
    Task<SiloInventory[]> ActiveSilos();
}
