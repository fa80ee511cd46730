// A training shard's host tensors (parameters, gradients, LoRA adapters: what optimizers, collectives and checkpoints
// read and write) as the device buffers its kernels use. On the CPU device they are the host arrays themselves
// (CpuDevice.Wrap, no copy). On another device a parameter is uploaded once per version (ParametersChanged after an
// optimizer step re-reads them all), and a gradient accumulates in a device buffer that FlushGradients adds into its
// host array and zeroes: the step's transfers are its parameters in and its gradients out, not every kernel's operands.
// Activations never leave the device but at a pipeline stage's edges.
using Cluster.Compute;
using Cluster.Compute.Cpu;

namespace Cluster.Training;

internal sealed class DeviceTensors(IDevice device) : IDisposable
{
    private readonly bool _host = device is CpuDevice;
    private readonly Dictionary<float[], DeviceBuffer> _parameters = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<float[], DeviceBuffer> _gradients = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<float[]> _unflushed = new(ReferenceEqualityComparer.Instance);   // gradients handed out since the last flush
    private float[] _downloaded = [];   // a flushed gradient on its way to the host, reused

    /// <summary>The parameter <paramref name="host"/> on the device.</summary>
    public DeviceBuffer Parameter(float[] host)
    {
        if (_host) return CpuDevice.Wrap(host);
        if (!_parameters.TryGetValue(host, out var buffer)) _parameters[host] = buffer = device.Upload(host);
        return buffer;
    }

    /// <summary>Where the gradient <paramref name="host"/> accumulates on the device; null for a frozen tensor's (empty) gradient.</summary>
    public DeviceBuffer? Gradient(float[] host)
    {
        if (host.Length == 0) return null;
        if (_host) return CpuDevice.Wrap(host);
        if (!_gradients.TryGetValue(host, out var buffer)) _gradients[host] = buffer = device.Allocate(host.Length);
        _unflushed.Add(host);
        return buffer;
    }

    /// <summary>Every parameter may have changed on the host (an optimizer step, a checkpoint restored): read them again.</summary>
    public void ParametersChanged()
    {
        device.ForgetPrepared();
        foreach (var buffer in _parameters.Values) buffer.Dispose();
        _parameters.Clear();
    }

    /// <summary>The host lets go of <paramref name="host"/> (ZeRO-3 dropping a layer, QLoRA its fp32 projections, ZeRO-2 a gradient).</summary>
    public void Forget(float[] host)
    {
        if (host.Length == 0) return;
        if (_host)
        {
            device.ForgetPrepared(CpuDevice.Wrap(host));
            return;
        }
        if (_parameters.Remove(host, out var parameter)) parameter.Dispose();
        if (_gradients.Remove(host, out var gradient)) gradient.Dispose();
        _unflushed.Remove(host);
    }

    /// <summary>
    /// Adds what the device accumulated into the host array of each gradient handed out since the last flush, and zeroes
    /// the device's (a no-op on the CPU device).
    /// </summary>
    public void FlushGradients()
    {
        foreach (var host in _unflushed)
        {
            var buffer = _gradients[host];
            if (_downloaded.Length < host.Length) _downloaded = new float[host.Length];
            var accumulated = _downloaded.AsSpan(0, host.Length);
            device.Download(buffer, accumulated);
            System.Numerics.Tensors.TensorPrimitives.Add(host, accumulated, host);
            device.Zero(buffer, host.Length);
        }
        _unflushed.Clear();
    }

    public void Dispose()
    {
        foreach (var buffer in _parameters.Values.Concat(_gradients.Values)) buffer.Dispose();
        _parameters.Clear();
        _gradients.Clear();
        _unflushed.Clear();
    }
}

/// <summary>
/// A training shard's activation and gradient buffers by length, handed out again once returned: every micro-batch of a
/// step has the same shapes, so after the first one a forward and backward allocate nothing.
/// </summary>
internal sealed class BufferPool(IDevice device) : IDisposable
{
    private readonly Dictionary<int, Stack<DeviceBuffer>> _free = [];
    private readonly Lock _lock = new();
    private long _bytes;

    /// <summary>Device memory of every buffer the pool has made, in use or free: the shard's activation workspace.</summary>
    public long Bytes => Interlocked.Read(ref _bytes);

    /// <summary>A buffer of <paramref name="length"/> floats, zeroed when asked (else holding whatever it last held).</summary>
    public DeviceBuffer Rent(int length, bool zeroed = false)
    {
        DeviceBuffer? buffer = null;
        lock (_lock)
            if (_free.TryGetValue(length, out var stack) && stack.Count > 0) buffer = stack.Pop();
        if (buffer is null)
        {
            Interlocked.Add(ref _bytes, (long)length * sizeof(float));
            return device.Allocate(length);   // allocated zeroed
        }
        if (zeroed) device.Zero(buffer, length);
        return buffer;
    }

    public void Return(DeviceBuffer? buffer)
    {
        if (buffer is null) return;
        lock (_lock)
        {
            if (!_free.TryGetValue(buffer.Length, out var stack)) _free[buffer.Length] = stack = new Stack<DeviceBuffer>();
            stack.Push(buffer);
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var buffer in _free.Values.SelectMany(s => s)) buffer.Dispose();
            _free.Clear();
        }
    }
}
