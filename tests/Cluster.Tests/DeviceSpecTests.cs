// Device names as users and silo configurations write them, parsed once into DeviceSpec; anything else is refused
// with a message that says what is accepted.
using Cluster.Compute;

namespace Cluster.Tests;

public sealed class DeviceSpecTests
{
    [Theory]
    [InlineData("cpu", DeviceKind.Cpu, 0)]
    [InlineData("cuda", DeviceKind.Cuda, 0)]
    [InlineData("cuda:1", DeviceKind.Cuda, 1)]
    [InlineData(" opencl:2 ", DeviceKind.OpenCL, 2)]
    [InlineData("ilgpu-cpu", DeviceKind.IlgpuCpu, 0)]
    public void KnownNamesParse(string text, DeviceKind kind, int index)
    {
        var spec = DeviceSpec.Parse(text);
        Assert.Equal(new DeviceSpec(kind, index), spec);
        Assert.Equal(spec, DeviceSpec.Parse(spec.ToString()));   // ToString names it the same way
    }

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:")]
    [InlineData("cuda:-1")]
    [InlineData("cuda:99")]
    [InlineData("cuda:1:2")]
    [InlineData("CUDA")]
    [InlineData("")]
    public void OtherNamesAreRefusedSayingWhatIsAccepted(string text)
    {
        var e = Assert.Throws<FormatException>(() => DeviceSpec.Parse(text));
        Assert.Contains(text.Trim(), e.Message);
    }

    [Fact]
    public void ListsNeedDistinctDevices()
    {
        Assert.Equal([new DeviceSpec(DeviceKind.Cuda, 0), new DeviceSpec(DeviceKind.Cuda, 1)], DeviceSpec.ParseList("cuda:0, cuda:1"));
        Assert.Throws<FormatException>(() => DeviceSpec.ParseList("cuda,cuda:0"));
        Assert.Throws<FormatException>(() => DeviceSpec.ParseList(" , "));
    }

    [Fact]
    public void ADeviceTheMachineLacksFailsToOpen()
    {
        if (Cluster.Compute.Ilgpu.IlgpuDevice.Available().Contains(Cluster.Compute.Ilgpu.IlgpuTarget.Cuda))
            Assert.Skip("this machine has CUDA: the missing-device case is checked on machines without it");
        Assert.Throws<InvalidOperationException>(() => DeviceSpec.Parse("cuda:0").Open(1));
    }
}
