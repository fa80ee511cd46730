// A training shard's host tensors (parameters, gradients, LoRA adapters, AdamW's moments: what collectives and
// checkpoints read and write) as the device buffers its kernels and its optimizer use. On the CPU device they are the
// host arrays themselves (CpuDevice.Wrap, no copy), and every method here but the cache of packed weights is a no-op.
// On another device the device holds the training state between steps:
//   state (parameters and moments)  uploaded on first use; an optimizer step on the device makes the device's copies
//                                   the newest (UpdatedOnDevice), and SyncToHost brings them down only when the host
//                                   reads them (checkpoints, publishing, tests). The host changing them
//                                   (HostChanged: a host optimizer, a restored checkpoint) drops the device's copies.
//   gradients                       accumulate in device buffers; a gradient's value is its host array plus its device
//                                   buffer. FlushGradients moves the device's part into the host array (collectives and
//                                   host optimizers read it there), GradientsToDevice moves it all back.
// So a step of a shard with its optimizer on the device moves only the batch in and the loss and gradient norm out;
// collectives move what they must. Activations never leave the device but at a pipeline stage's edges.
using Cluster.Compute;
using Cluster.Compute.Cpu;

namespace Cluster.Training;

internal sealed class DeviceTensors(IDevice device) : IDisposable
{
    private readonly bool _host = device is CpuDevice;
    private readonly Dictionary<float[], DeviceBuffer> _state = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<float[], DeviceBuffer> _gradients = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<float[]> _unflushed = new(ReferenceEqualityComparer.Instance);   // gradients handed out since the last flush
    private float[] _downloaded = [];   // a flushed gradient on its way to the host, reused
    private bool _gradientsOnHost;      // some gradient was flushed since the gradients were zeroed

    /// <summary>Whether the device's copies of the state are newer than the host arrays (after an optimizer step on the device).</summary>
    public bool DeviceIsNewer { get; private set; }

    /// <summary>The parameter or optimizer moment <paramref name="host"/> on the device.</summary>
    public DeviceBuffer State(float[] host)
    {
        if (_host) return CpuDevice.Wrap(host);
        if (!_state.TryGetValue(host, out var buffer)) _state[host] = buffer = device.Upload(host);
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

    /// <summary>
    /// The host changed the state (a host optimizer's step, a restored checkpoint, a test's edit): the device reads it
    /// again. Call SyncToHost before changing host arrays whose device copies may be newer.
    /// </summary>
    public void HostChanged()
    {
        if (DeviceIsNewer) throw new InvalidOperationException("the device holds newer parameters than the host: read them (SyncToHost) before changing them");
        device.ForgetPrepared();
        foreach (var buffer in _state.Values) buffer.Dispose();
        _state.Clear();
    }

    /// <summary>An optimizer updated the state on the device: packed copies are stale, and the host's arrays until SyncToHost.</summary>
    public void UpdatedOnDevice()
    {
        device.ForgetPrepared();
        if (!_host) DeviceIsNewer = true;
    }

    /// <summary>Brings the device's newer state down into the host arrays, and every gradient's device part (FlushGradients).</summary>
    public void SyncToHost()
    {
        if (DeviceIsNewer)
        {
            foreach (var (host, buffer) in _state) device.Download(buffer, host);
            DeviceIsNewer = false;
        }
        FlushGradients();
    }

    /// <summary>Zeroes every gradient, on the host and on the device (no transfer).</summary>
    public void ZeroGradients(IEnumerable<float[]> hosts)
    {
        foreach (var host in hosts) Array.Clear(host);
        foreach (var (host, buffer) in _gradients) device.Zero(buffer, host.Length);
        _unflushed.Clear();
        _gradientsOnHost = false;
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
            _gradientsOnHost = true;
        }
        _unflushed.Clear();
    }

    /// <summary>
    /// Puts each gradient's whole value on the device (an optimizer step on the device reads it there): a gradient
    /// flushed to the host (and perhaps summed there by a collective) goes back up and its host array is zeroed.
    /// </summary>
    public void GradientsToDevice(IEnumerable<float[]> hosts)
    {
        if (_host || !_gradientsOnHost) return;
        FlushGradients();
        foreach (var host in hosts)
        {
            if (host.Length == 0) continue;
            device.Write(Gradient(host)!, host);
            Array.Clear(host);
        }
        _gradientsOnHost = false;
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
        if (_state.Remove(host, out var parameter)) parameter.Dispose();
        if (_gradients.Remove(host, out var gradient)) gradient.Dispose();
        _unflushed.Remove(host);
    }

    public void Dispose()
    {
        foreach (var buffer in _state.Values.Concat(_gradients.Values)) buffer.Dispose();
        _state.Clear();
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
