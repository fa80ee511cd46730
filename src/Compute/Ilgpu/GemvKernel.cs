// Skinny GEMM for decode (M ≤ MaxRows): y (M, N) = x (M, K) · Wᵀ with one group per output column n. The
// group's threads stride along row n of W (coalesced reads, each weight read once for all M rows of x) and
// meet in a shared-memory reduction per row. The 64×64-tile GemmKernel would leave most of its tile idle here.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class GemvKernel
{
    public const int MaxRows = 4;

    /// <summary>Group n computes y[r, n] for r &lt; m (m ≤ MaxRows).</summary>
    public static void Kernel(ArrayView<float> x, ArrayView<float> w, ArrayView<float> y, int m, int n, int k)
    {
        var scratch = SharedMemory.Allocate<float>(GroupReduce.GroupSize);
        int column = Grid.IdxX, row = column * k;
        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f;
        for (int i = Group.IdxX; i < k; i += GroupReduce.GroupSize)
        {
            float weight = w[row + i];
            a0 += weight * x[i];
            if (m > 1) a1 += weight * x[k + i];
            if (m > 2) a2 += weight * x[2 * k + i];
            if (m > 3) a3 += weight * x[3 * k + i];
        }
        // m is uniform across the group, so every thread reaches the same reductions (and barriers).
        Write(y, GroupReduce.Sum(scratch, a0), column);
        if (m > 1) Write(y, GroupReduce.Sum(scratch, a1), n + column);
        if (m > 2) Write(y, GroupReduce.Sum(scratch, a2), 2 * n + column);
        if (m > 3) Write(y, GroupReduce.Sum(scratch, a3), 3 * n + column);
    }

    private static void Write(ArrayView<float> y, float value, int index)
    {
        if (Group.IdxX == 0) y[index] = value;
    }
}
