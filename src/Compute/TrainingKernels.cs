// The kernels a training step runs outside attention, wherever they run: the matrix products (forward and backward),
// SwiGLU and GELU, and RMSNorm, each with its backward. CpuTrainingKernels runs them on the host (the packed AVX-512
// GEMM and the CPU kernels); DeviceTrainingKernels on any IDevice (ILGPU on a GPU, or its CPU accelerator to check it),
// copying the step's host tensors to the device and back each call: the GPU path's kernels checked end to end, not a
// fast path. Attention, RoPE, LayerNorm, cross-entropy and the optimizer stay on the host either way.
using System.Numerics.Tensors;
using Cluster.Compute.Cpu;

namespace Cluster.Compute;

public interface ITrainingKernels : IDisposable
{
    /// <summary>y (M, N) = x (M, K) · Wᵀ (+ b when not empty).</summary>
    void Forward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k);

    /// <summary>dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy (db may be empty; dw empty skips both).</summary>
    void Backward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k);

    /// <summary>Drops every weight's prepared copy: call when the weights may have changed.</summary>
    void ForgetPacked();

    /// <summary>Drops one weight's prepared copies (its owner is letting go of it).</summary>
    void Forget(float[] w);

    /// <summary>gate (n,) = silu(gate) · up, in place.</summary>
    void SwiGlu(float[] gate, float[] up);
    /// <summary>dgate, dup (n,) += the gradients of SwiGlu at its inputs gate, up.</summary>
    void SwiGluBackward(float[] gate, float[] up, float[] dout, float[] dgate, float[] dup);
    /// <summary>x (n,) = gelu(x), in place.</summary>
    void Gelu(float[] x);
    /// <summary>dx (n,) += dout · gelu'(x).</summary>
    void GeluBackward(float[] x, float[] dout, float[] dx);
    /// <summary>y (rows, dim) = RMSNorm(x) · w.</summary>
    void RmsNorm(float[] x, float[] w, float[] y, int rows, float eps);
    /// <summary>dx (rows, dim) += ∂L/∂x, dw (dim,) += ∂L/∂w.</summary>
    void RmsNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, int rows, float eps);
}

/// <summary>The host's kernels: products on the packed GEMM (Linear), the rest row by row.</summary>
public sealed class CpuTrainingKernels(WorkerPool pool, bool bfloat16 = false) : ITrainingKernels
{
    private readonly Linear _linear = new(pool, bfloat16);

    public void Forward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k) => _linear.Forward(x, w, b, y, m, n, k);
    public void Backward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k) =>
        _linear.Backward(x, w, dy, dx, dw, db, m, n, k);
    public void ForgetPacked() => _linear.ForgetPacked();
    public void Forget(float[] w) => _linear.Forget(w);
    public void SwiGlu(float[] gate, float[] up) => Activations.SwiGlu(gate, up);
    public void SwiGluBackward(float[] gate, float[] up, float[] dout, float[] dgate, float[] dup) => Activations.SwiGluBackward(gate, up, dout, dgate, dup);
    public void Gelu(float[] x) => Activations.Gelu(x);
    public void GeluBackward(float[] x, float[] dout, float[] dx) => Activations.GeluBackward(x, dout, dx);

    public void RmsNorm(float[] x, float[] w, float[] y, int rows, float eps)
    {
        int dim = w.Length;
        for (int r = 0; r < rows; r++) Norms.RmsNorm(x.AsSpan(r * dim, dim), w, y.AsSpan(r * dim, dim), eps);
    }

    public void RmsNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, int rows, float eps)
    {
        int dim = w.Length;
        for (int r = 0; r < rows; r++) Norms.RmsNormBackward(x.AsSpan(r * dim, dim), w, dy.AsSpan(r * dim, dim), dx.AsSpan(r * dim, dim), dw, eps);
    }

    public void Dispose() => _linear.Dispose();
}

/// <summary>
/// The kernels on an IDevice: every product is the device's MatMul, y = x · Wᵀ (the backward's dx = dy · W multiplies
/// by Wᵀ, uploaded once per weight version; dW = dyᵀ · x is dyᵀ times xᵀ as the matrix), the rest its backward ops.
/// </summary>
public sealed class DeviceTrainingKernels(IDevice device) : ITrainingKernels
{
    private readonly Dictionary<float[], DeviceMatrix> _weights = new(ReferenceEqualityComparer.Instance);             // W (N, K)
    private readonly Dictionary<float[], DeviceMatrix> _transposedWeights = new(ReferenceEqualityComparer.Instance);   // Wᵀ (K, N)

    public void Forward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k)
    {
        if (!_weights.TryGetValue(w, out var matrix)) _weights[w] = matrix = device.UploadMatrix(w.AsSpan(0, n * k), n, k);
        Multiply(x[..(m * k)], matrix, y[..(m * n)], m);
        if (b.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(y.Slice(row * n, n), b, y.Slice(row * n, n));
    }

    public void Backward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k)
    {
        if (!_transposedWeights.TryGetValue(w, out var transposed)) _transposedWeights[w] = transposed = device.UploadMatrix(Transpose(w, n, k), k, n);
        var product = new float[Math.Max(m * k, n * k)];
        Multiply(dy[..(m * n)], transposed, product.AsSpan(0, m * k), m);                    // dx (M, K) = dy (M, N) · (Wᵀ)ᵀ
        TensorPrimitives.Add(dx[..(m * k)], product.AsSpan(0, m * k), dx[..(m * k)]);
        if (dw.IsEmpty) return;
        using (var xt = device.UploadMatrix(Transpose(x[..(m * k)], m, k), k, m))            // xᵀ (K, M)
            Multiply(Transpose(dy[..(m * n)], m, n), xt, product.AsSpan(0, n * k), n);       // dW (N, K) = dyᵀ (N, M) · (xᵀ)ᵀ
        TensorPrimitives.Add(dw[..(n * k)], product.AsSpan(0, n * k), dw[..(n * k)]);
        if (db.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(db, dy.Slice(row * n, n), db);
    }

    private void Multiply(ReadOnlySpan<float> x, DeviceMatrix w, Span<float> y, int m)
    {
        using var input = device.Upload(x);
        using var output = device.Allocate(y.Length);
        device.MatMul(input, w, output, m);
        device.Download(output, y);
    }

    public void SwiGlu(float[] gate, float[] up) => OnDevice([gate, up], [0], b => device.SwiGlu(b[0], b[1], gate.Length));
    public void SwiGluBackward(float[] gate, float[] up, float[] dout, float[] dgate, float[] dup) =>
        OnDevice([gate, up, dout, dgate, dup], [3, 4], b => device.SwiGluBackward(b[0], b[1], b[2], b[3], b[4], gate.Length));
    public void Gelu(float[] x) => OnDevice([x], [0], b => device.Gelu(b[0], x.Length));
    public void GeluBackward(float[] x, float[] dout, float[] dx) => OnDevice([x, dout, dx], [2], b => device.GeluBackward(b[0], b[1], b[2], x.Length));
    public void RmsNorm(float[] x, float[] w, float[] y, int rows, float eps) =>
        OnDevice([x, w, y], [2], b => device.RmsNorm(b[0], b[1], b[2], rows, w.Length, eps));
    public void RmsNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, int rows, float eps) =>
        OnDevice([x, w, dy, dx, dw], [3, 4], b => device.RmsNormBackward(b[0], b[1], b[2], b[3], b[4], rows, w.Length, eps));

    /// <summary>Uploads the tensors, runs <paramref name="work"/> on their device buffers, downloads the ones it writes.</summary>
    private void OnDevice(float[][] tensors, int[] written, Action<DeviceBuffer[]> work)
    {
        var buffers = tensors.Select(t => device.Upload(t)).ToArray();
        try
        {
            work(buffers);
            foreach (int i in written) device.Download(buffers[i], tensors[i]);
        }
        finally
        {
            foreach (var buffer in buffers) buffer.Dispose();
        }
    }

    private static float[] Transpose(ReadOnlySpan<float> a, int rows, int cols)
    {
        var t = new float[rows * cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                t[c * rows + r] = a[r * cols + c];
        return t;
    }

    public void ForgetPacked()
    {
        foreach (var matrix in _weights.Values.Concat(_transposedWeights.Values)) matrix.Dispose();
        _weights.Clear();
        _transposedWeights.Clear();
    }

    public void Forget(float[] w)
    {
        if (_weights.Remove(w, out var matrix)) matrix.Dispose();
        if (_transposedWeights.Remove(w, out var transposed)) transposed.Dispose();
    }

    public void Dispose() => ForgetPacked();
}
