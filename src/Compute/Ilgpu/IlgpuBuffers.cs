// Device memory of the ILGPU backend: float buffers, weight matrices (W (N, K) row-major, as uploaded) and
// the small reusable int buffers that carry per-call index arrays (tokens, positions, slots, block tables).
// Every ILGPU object is created and freed on the owning device's dispatch thread.
using ILGPU;
using ILGPU.Runtime;

namespace Cluster.Compute.Ilgpu;

internal sealed class IlgpuBuffer : DeviceBuffer
{
    public IlgpuBuffer(IlgpuDevice owner, MemoryBuffer1D<float, Stride1D.Dense> memory) : base((int)memory.Length)
    {
        Owner = owner;
        Memory = memory;
    }

    public IlgpuDevice Owner { get; }
    public MemoryBuffer1D<float, Stride1D.Dense> Memory { get; }
    public ArrayView<float> View => Memory.View;

    public override void Dispose() => Owner.Release(Memory);
}

internal sealed class IlgpuMatrix : DeviceMatrix
{
    public IlgpuMatrix(IlgpuDevice owner, MemoryBuffer1D<float, Stride1D.Dense> memory, int rows, int cols) : base(rows, cols)
    {
        Owner = owner;
        Memory = memory;
    }

    public IlgpuDevice Owner { get; }
    public MemoryBuffer1D<float, Stride1D.Dense> Memory { get; }
    public ArrayView<float> View => Memory.View;

    public override void Dispose() => Owner.Release(Memory);
}

/// <summary>A Q8_0 / Q4_0 weight matrix: its blocks' values (as QuantizedMatrix stores them) and their scales.</summary>
internal sealed class IlgpuQuantizedMatrix : DeviceMatrix
{
    public IlgpuQuantizedMatrix(IlgpuDevice owner, WeightFormat format, MemoryBuffer1D<byte, Stride1D.Dense> values,
        MemoryBuffer1D<float, Stride1D.Dense> scales, int rows, int cols) : base(rows, cols)
    {
        Owner = owner;
        Format = format;
        Values = values;
        Scales = scales;
    }

    public IlgpuDevice Owner { get; }
    public WeightFormat Format { get; }
    public MemoryBuffer1D<byte, Stride1D.Dense> Values { get; }
    public MemoryBuffer1D<float, Stride1D.Dense> Scales { get; }
    public override long Bytes => Values.LengthInBytes + Scales.LengthInBytes;

    public override void Dispose()
    {
        Owner.Release(Values);
        Owner.Release(Scales);
    }
}

/// <summary>A fixed set of int buffers that grow (doubling) as needed; only touched on the dispatch thread.</summary>
internal sealed class IndexBuffers(Accelerator accelerator, int count) : IDisposable
{
    private readonly MemoryBuffer1D<int, Stride1D.Dense>?[] _buffers = new MemoryBuffer1D<int, Stride1D.Dense>?[count];

    /// <summary>Copies values into buffer <paramref name="which"/> and returns a view of exactly values.Length ints.</summary>
    public ArrayView<int> Upload(int which, ReadOnlySpan<int> values)
    {
        var buffer = _buffers[which];
        if (buffer is null || buffer.Length < values.Length)
        {
            buffer?.Dispose();
            buffer = _buffers[which] = accelerator.Allocate1D<int>(Math.Max(64, (long)values.Length * 2));
        }
        var view = buffer.View.SubView(0, values.Length);
        if (values.Length > 0) view.CopyFromCPU(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(values), values.Length);
        return view;
    }

    public void Dispose()
    {
        foreach (var buffer in _buffers) buffer?.Dispose();
    }
}
