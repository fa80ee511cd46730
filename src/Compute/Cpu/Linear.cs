// A linear layer y (M, N) = x (M, K) · Wᵀ + b with W (N, K) row-major, forward and backward, on host spans for
// training: dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy. Plain row loops over SIMD dots and
// axpys; inference uses the packed GEMM (CpuDevice.MatMul), and packed training GEMMs are still to come.
using System.Numerics.Tensors;

namespace Cluster.Compute.Cpu;

public static class Linear
{
    /// <summary>y (M, N) = x (M, K) · Wᵀ (+ b when not empty).</summary>
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k)
    {
        for (int row = 0; row < m; row++)
        {
            var xRow = x.Slice(row * k, k);
            for (int o = 0; o < n; o++) y[row * n + o] = TensorPrimitives.Dot(xRow, w.Slice(o * k, k)) + (b.IsEmpty ? 0f : b[o]);
        }
    }

    public static void Backward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> dy,
        Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k)
    {
        for (int row = 0; row < m; row++)
        {
            var dyRow = dy.Slice(row * n, n);                                    // (N,)
            var xRow = x.Slice(row * k, k);                                      // (K,)
            var dxRow = dx.Slice(row * k, k);                                    // (K,)
            for (int o = 0; o < n; o++)
            {
                float g = dyRow[o];
                if (g == 0f) continue;
                TensorPrimitives.MultiplyAdd(w.Slice(o * k, k), g, dxRow, dxRow);           // dx[row] += g · W[o]
                TensorPrimitives.MultiplyAdd(xRow, g, dw.Slice(o * k, k), dw.Slice(o * k, k));   // dW[o] += g · x[row]
            }
            if (!db.IsEmpty) TensorPrimitives.Add(db, dyRow, db);
        }
    }
}
