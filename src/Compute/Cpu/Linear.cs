// A linear layer y (M, N) = x (M, K) · Wᵀ + b with W (N, K) row-major, forward and backward, on host spans for
// training: dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy. Every product runs on the packed AVX-512
// GEMM (Gemm.Multiply) over the worker pool: W is packed per call (training changes it every step), and the backward
// feeds it the transposes it needs.
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Cluster.Compute.Cpu;

public sealed unsafe class Linear(WorkerPool pool) : IDisposable
{
    private float* _packed;
    private long _packedLength;
    private float[] _scratch = [];
    private float[] _product = [];

    /// <summary>y (M, N) = x (M, K) · Wᵀ (+ b when not empty).</summary>
    public void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k)
    {
        Multiply(x, w, y, m, n, k);
        if (b.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(y.Slice(row * n, n), b, y.Slice(row * n, n));
    }

    /// <summary>dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy (db may be empty).</summary>
    public void Backward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> dy,
        Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k)
    {
        var product = Product(Math.Max(m * k, n * k));
        Multiply(dy, Transpose(w, n, k), product.AsSpan(0, m * k), m, k, n);                 // dy (M, N) · (Wᵀ)ᵀ
        TensorPrimitives.Add(dx[..(m * k)], product.AsSpan(0, m * k), dx[..(m * k)]);
        Multiply(Transpose(dy, m, n), Transpose(x, m, k), product.AsSpan(0, n * k), n, k, m); // dyᵀ (N, M) · (xᵀ)ᵀ
        TensorPrimitives.Add(dw[..(n * k)], product.AsSpan(0, n * k), dw[..(n * k)]);
        if (db.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(db, dy.Slice(row * n, n), db);
    }

    /// <summary>y (m, n) = a (m, k) · Bᵀ with B (n, k): packs B, then the GEMM.</summary>
    private void Multiply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k)
    {
        long packed = Gemm.PackedLength(n, k);
        if (packed > _packedLength)
        {
            NativeMemory.AlignedFree(_packed);
            _packed = (float*)NativeMemory.AlignedAlloc((nuint)(packed * sizeof(float)), 64);
            _packedLength = packed;
        }
        Gemm.Pack(b[..(n * k)], n, k, _packed);
        long scratch = Gemm.ScratchLength(m, k);
        if (_scratch.Length < scratch) _scratch = GC.AllocateUninitializedArray<float>(checked((int)scratch), pinned: true);
        fixed (float* pa = a, py = y, ps = _scratch)
            Gemm.Multiply(pool, pa, m, k, _packed, n, py, ps);
    }

    private static float[] Transpose(ReadOnlySpan<float> a, int rows, int cols)
    {
        var t = GC.AllocateUninitializedArray<float>(rows * cols);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                t[c * rows + r] = a[r * cols + c];
        return t;
    }

    private float[] Product(int length)
    {
        if (_product.Length < length) _product = GC.AllocateUninitializedArray<float>(length, pinned: true);
        return _product;
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree(_packed);
        _packed = null;
        _packedLength = 0;
    }
}
