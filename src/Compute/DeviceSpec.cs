// A device as a user or a silo names it, parsed once at the edge (CLI option, silo configuration): "cpu", "cuda:1",
// "opencl", "ilgpu-cpu" (the index is 0 when left out). Open is the one place a device is made from its name.
using Cluster.Compute.Cpu;
using Cluster.Compute.Ilgpu;

namespace Cluster.Compute;

public readonly record struct DeviceSpec(DeviceKind Kind, int Index = 0)
{
    public static readonly DeviceSpec Cpu = new(DeviceKind.Cpu);

    private static readonly (string Name, DeviceKind Kind)[] Names =
        [("cpu", DeviceKind.Cpu), ("cuda", DeviceKind.Cuda), ("opencl", DeviceKind.OpenCL), ("ilgpu-cpu", DeviceKind.IlgpuCpu)];

    /// <summary>Throws FormatException, saying what is accepted, unless <paramref name="text"/> names a device.</summary>
    public static DeviceSpec Parse(string text)
    {
        string trimmed = text.Trim();
        int colon = trimmed.IndexOf(':');
        string name = colon < 0 ? trimmed : trimmed[..colon];
        int index = 0;
        if (colon >= 0 && !(int.TryParse(trimmed[(colon + 1)..], System.Globalization.NumberStyles.None, null, out index) && index < 64))
            throw new FormatException($"device '{text}': the index after ':' must be a number from 0 to 63");
        foreach (var (known, kind) in Names)
            if (name == known) return new DeviceSpec(kind, index);
        throw new FormatException($"device '{text}' is not one of cpu, cuda, opencl, ilgpu-cpu (each optionally ':index', e.g. cuda:1)");
    }

    /// <summary>A comma-separated list ("cuda:0,cuda:1"); at least one, at most 64.</summary>
    public static DeviceSpec[] ParseList(string text)
    {
        string[] parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length is 0 or > 64) throw new FormatException($"a device list needs 1 to 64 devices, got '{text}'");
        var devices = parts.Select(Parse).ToArray();
        if (devices.Distinct().Count() != devices.Length) throw new FormatException($"the device list '{text}' names a device twice");
        return devices;
    }

    public bool IsIlgpu => Kind != DeviceKind.Cpu;

    /// <summary>
    /// Opens the device: a CpuDevice of <paramref name="cpuThreads"/> worker threads, or the ILGPU accelerator
    /// (InvalidOperationException when this machine has no such device).
    /// </summary>
    public IDevice Open(int cpuThreads) => Kind switch
    {
        DeviceKind.Cpu => new CpuDevice(cpuThreads),
        DeviceKind.Cuda => IlgpuDevice.Create(IlgpuTarget.Cuda, Index),
        DeviceKind.OpenCL => IlgpuDevice.Create(IlgpuTarget.OpenCL, Index),
        _ => IlgpuDevice.Create(IlgpuTarget.Cpu, Index),
    };

    public override string ToString()
    {
        var kind = Kind;
        return $"{Names.First(n => n.Kind == kind).Name}:{Index}";
    }
}
