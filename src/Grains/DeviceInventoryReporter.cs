// Discovers this silo's devices (the CPU threads its shards get; CUDA / OpenCL accelerators ILGPU can open) and
// reports them to the cluster inventory once the silo is active.
using Cluster.Compute;
using Cluster.Compute.Ilgpu;
using Cluster.Contracts;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

public sealed class DeviceInventoryReporter(
    IGrainFactory grains, ILocalSiloDetails silo, IOptions<ShardOptions> options, ILogger<DeviceInventoryReporter> log)
    : ILifecycleParticipant<ISiloLifecycle>
{
    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(DeviceInventoryReporter), ServiceLifecycleStage.Active, ReportAsync);

    private async Task ReportAsync(CancellationToken cancellation)
    {
        var devices = Discover(options.Value.DeviceThreads);
        log.LogInformation("silo {Silo} devices: {Devices}", silo.Name, string.Join("; ", devices.Select(d => $"{d.Kind} {d.Name} ({d.Threads} threads)")));
        await grains.GetGrain<IClusterInventoryGrain>(0).Report(new SiloInventory(silo.Name, silo.SiloAddress.ToString(), devices)).WaitAsync(cancellation);
    }

    public static DeviceReport[] Discover(int cpuThreads)
    {
        string simd = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? "AVX-512" : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? "AVX2" : "Vector128";
        var devices = new List<DeviceReport> { new(nameof(DeviceKind.Cpu), $"CPU ({simd}, {Environment.ProcessorCount} cores)", cpuThreads, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes) };
        foreach (var target in IlgpuDevice.Available().Where(t => t != IlgpuTarget.Cpu))
        {
            using var device = IlgpuDevice.Create(target);
            devices.Add(new DeviceReport(device.Info.Kind.ToString(), device.Info.Name, device.Info.Threads, device.Info.MemoryBytes));
        }
        return devices.ToArray();
    }
}
