// Reports this silo's devices (DeviceSlots: the configured ones and who holds each) to the cluster inventory once the
// silo is active, and again whenever a shard or trainer takes or gives back a device (coalesced: one report in flight),
// until the silo stops.
using Cluster.Compute.Ilgpu;
using Cluster.Contracts;
using Microsoft.Extensions.Logging;

namespace Cluster.Grains;

public sealed class DeviceInventoryReporter(IGrainFactory grains, ILocalSiloDetails silo, DeviceSlots slots, ILogger<DeviceInventoryReporter> log)
    : ILifecycleParticipant<ISiloLifecycle>
{
    private int _pending;   // 1 while a report is queued or running; a change meanwhile sets _again
    private int _again;

    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(DeviceInventoryReporter), ServiceLifecycleStage.Active, async cancellation =>
        {
            var devices = slots.Report();
            string found = string.Join(", ", IlgpuDevice.Available().Where(t => t != IlgpuTarget.Cpu));
            log.LogInformation("silo {Silo} devices: {Devices}; ILGPU accelerators found: {Found}", silo.Name,
                string.Join("; ", devices.Select(d => $"{d.Device} {d.Name}")), found.Length == 0 ? "none" : found);
            await Send(devices).WaitAsync(cancellation);
            slots.Changed += OnChanged;
            OnChanged();   // a shard placed here while the first report was on its way (the silo is already active) is in this one
        }, _ =>
        {
            slots.Changed -= OnChanged;   // a stopping silo's shards give their devices back: nothing to report to anyone
            return Task.CompletedTask;
        });

    private void OnChanged()
    {
        Volatile.Write(ref _again, 1);
        if (Interlocked.Exchange(ref _pending, 1) == 0) _ = Task.Run(ReportChanges);
    }

    private async Task ReportChanges()
    {
        try
        {
            while (Interlocked.Exchange(ref _again, 0) == 1) await Send(slots.Report());
        }
        catch (SiloUnavailableException) { }   // the silo is stopping
        catch (Exception e)
        {
            log.LogWarning(e, "silo {Silo}: reporting its devices to the inventory failed; the next change reports again", silo.Name);
        }
        finally
        {
            Volatile.Write(ref _pending, 0);
            if (Volatile.Read(ref _again) == 1) OnChanged();
        }
    }

    private Task Send(DeviceReport[] devices) =>
        grains.GetGrain<IClusterInventoryGrain>(0).Report(new SiloInventory(silo.Name, silo.SiloAddress.ToString(), devices));
}
