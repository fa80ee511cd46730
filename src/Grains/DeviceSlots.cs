// This silo's devices (ShardOptions.Devices) and which shard or trainer holds each. A grain takes the device with the
// fewest holders when it loads, so the shards of a node with two GPUs go one to each while there are free ones, and
// gives it back when it deactivates. An ILGPU device is opened once, when the silo starts (a device the machine lacks
// stops the silo with its name), and shared by its holders; a CPU device gives each holder a CpuDevice of its own
// (its own worker threads). The inventory (/v1/cluster/silos) shows the holders of every device.
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

public sealed class DeviceSlots : IDisposable
{
    private sealed class Slot(DeviceSpec spec, IDevice? shared, DeviceInfo info)
    {
        public DeviceSpec Spec => spec;
        public IDevice? Shared => shared;   // the ILGPU device; null for the CPU
        public DeviceInfo Info => info;
        public List<DeviceHolder> Holders { get; } = [];
    }

    private readonly Slot[] _slots;

    public DeviceSlots(IOptions<ShardOptions> options)
    {
        var o = options.Value;
        if (o.Devices.Length == 0) throw new ArgumentException("ShardOptions.Devices names no device");
        CpuThreads = o.DeviceThreads;
        var opened = new List<IDevice>();
        try
        {
            _slots = [.. o.Devices.Select(spec =>
            {
                if (!spec.IsIlgpu) return new Slot(spec, null, CpuDevice.Describe(o.DeviceThreads));
                IDevice device;
                try { device = spec.Open(o.DeviceThreads); }
                catch (InvalidOperationException e) { throw new InvalidOperationException($"Cluster__Devices names {spec}, which this machine does not have: {e.Message}", e); }
                opened.Add(device);
                return new Slot(spec, device, device.Info);
            })];
        }
        catch
        {
            foreach (var device in opened) device.Dispose();
            throw;
        }
    }

    /// <summary>Raised after a device was taken or given back, or a holder's memory changed (the inventory reporter re-reports).</summary>
    public event Action? Changed;

    /// <summary>The device with the fewest holders (the first such in configuration order) for <paramref name="holder"/> (a grain key).</summary>
    public DeviceLease Take(string holder)
    {
        Slot slot;
        lock (_slots)
        {
            slot = _slots.MinBy(s => s.Holders.Count)!;
            slot.Holders.Add(new DeviceHolder(holder, 0, 0, 0));
        }
        Changed?.Invoke();
        return new DeviceLease(this, slot.Spec, slot.Shared, holder);
    }

    internal void GiveBack(DeviceSpec spec, string holder)
    {
        lock (_slots) _slots.First(s => s.Spec == spec).Holders.RemoveAll(h => h.Key == holder);
        Changed?.Invoke();
    }

    /// <summary>Records what a holder keeps on its device (its lease calls only with a change).</summary>
    internal void Record(DeviceSpec spec, DeviceHolder memory)
    {
        lock (_slots)
        {
            var holders = _slots.First(s => s.Spec == spec).Holders;
            int at = holders.FindIndex(h => h.Key == memory.Key);
            if (at < 0) return;
            holders[at] = memory;
        }
        Changed?.Invoke();
    }

    /// <summary>Worker threads of each holder's own CpuDevice.</summary>
    internal int CpuThreads { get; }

    /// <summary>Every device with its holders, for the cluster inventory.</summary>
    public DeviceReport[] Report()
    {
        lock (_slots)
            return [.. _slots.Select(s => new DeviceReport(s.Info.Kind.ToString(), s.Info.Name, s.Info.Threads, s.Info.MemoryBytes, s.Spec.ToString(), [.. s.Holders]))];
    }

    public void Dispose()
    {
        foreach (var slot in _slots) slot.Shared?.Dispose();
    }
}

/// <summary>A device held by one shard or trainer until disposed.</summary>
public sealed class DeviceLease(DeviceSlots slots, DeviceSpec spec, IDevice? shared, string holder) : IDisposable
{
    private IDevice? _own;
    private int _disposed;
    private (long Weights, long Kv, long Workspace) _reported;

    public DeviceSpec Spec => spec;

    /// <summary>What the holder keeps on the device now, for the inventory; nothing happens when it is what was reported last.</summary>
    public void ReportMemory(long weightBytes, long kvBytes, long workspaceBytes)
    {
        if (_reported == (weightBytes, kvBytes, workspaceBytes)) return;
        _reported = (weightBytes, kvBytes, workspaceBytes);
        slots.Record(spec, new DeviceHolder(holder, weightBytes, kvBytes, workspaceBytes));
    }

    /// <summary>The shared ILGPU device, or null on a CPU slot (a trainer then runs its host kernels).</summary>
    public IDevice? Accelerator => shared;

    /// <summary>The device to run on: the shared ILGPU device, or this holder's own CpuDevice (made on first use).</summary>
    public IDevice Device => shared ?? (_own ??= spec.Open(slots.CpuThreads));

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _own?.Dispose();
        slots.GiveBack(spec, holder);
    }
}
