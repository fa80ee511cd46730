// Training's matrix products on an IDevice (ILGPU on a GPU, or its CPU accelerator): every product, forward and
// backward, is the device's MatMul, y = x · Wᵀ. The backward's dx = dy · W multiplies by Wᵀ (uploaded once per weight
// version), and dW = dyᵀ · x is xᵀ (as the matrix) times dyᵀ; activations and gradients travel to the device and back
// each call, so this is the GPU path's products checked end to end, not a fast path on the host.
using System.Numerics.Tensors;

namespace Cluster.Compute;

public sealed class DeviceProducts(IDevice device) : IProducts
{
    private readonly Dictionary<float[], DeviceMatrix> _weights = new(ReferenceEqualityComparer.Instance);             // W (N, K)
    private readonly Dictionary<float[], DeviceMatrix> _transposedWeights = new(ReferenceEqualityComparer.Instance);   // Wᵀ (K, N)

    public IDevice Device => device;

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
