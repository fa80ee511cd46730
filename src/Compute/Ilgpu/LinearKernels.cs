// What Linear's backward needs beside the tiled GEMM: a transpose (so dx = dy·W and dW = dyᵀ·x become GEMMs of the
// y = x·Bᵀ form the GEMM kernel computes) and the bias gradient's column sums.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class LinearKernels
{
    /// <summary>t (cols, rows) = aᵀ of a (rows, cols); one thread per element of a.</summary>
    public static void Transpose(Index1D i, ArrayView<float> a, ArrayView<float> t, int rows, int cols)
    {
        int r = i / cols, c = i % cols;
        t[c * rows + r] = a[i];
    }

    /// <summary>One thread per column c: db[c] += Σ_rows dy[r, c] (rows in order, as the CPU backend adds them).</summary>
    public static void ColumnSums(Index1D c, ArrayView<float> dy, ArrayView<float> db, int rows, int n)
    {
        float sum = db[c];
        for (int r = 0; r < rows; r++) sum += dy[r * n + c];
        db[c] = sum;
    }
}
