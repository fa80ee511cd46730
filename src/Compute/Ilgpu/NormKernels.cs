// RMSNorm and LayerNorm: one group of GroupReduce.GroupSize threads per row, threads striding over the row
// and meeting in a shared-memory reduction. Same formulas and eps placement as Cpu/Norms.cs.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class NormKernels
{
    /// <summary>y[r] = x[r] · (1 / sqrt(mean(x[r]²) + eps)) · w; group r handles row r.</summary>
    public static void RmsNorm(ArrayView<float> x, ArrayView<float> w, ArrayView<float> y, int dim, float eps)
    {
        var scratch = SharedMemory.Allocate<float>(GroupReduce.GroupSize);
        int row = Grid.IdxX * dim;
        float squares = 0f;
        for (int i = Group.IdxX; i < dim; i += GroupReduce.GroupSize) squares += x[row + i] * x[row + i];
        float scale = 1f / MathF.Sqrt(GroupReduce.Sum(scratch, squares) / dim + eps);
        for (int i = Group.IdxX; i < dim; i += GroupReduce.GroupSize) y[row + i] = x[row + i] * scale * w[i];
    }

    /// <summary>y[r] = (x[r] − mean) · (1 / sqrt(var + eps)) · w + b, variance taken about the mean (two passes).</summary>
    public static void LayerNorm(ArrayView<float> x, ArrayView<float> w, ArrayView<float> b, ArrayView<float> y, int dim, float eps)
    {
        var scratch = SharedMemory.Allocate<float>(GroupReduce.GroupSize);
        int row = Grid.IdxX * dim;
        float sum = 0f;
        for (int i = Group.IdxX; i < dim; i += GroupReduce.GroupSize) sum += x[row + i];
        float mean = GroupReduce.Sum(scratch, sum) / dim;
        float squares = 0f;
        for (int i = Group.IdxX; i < dim; i += GroupReduce.GroupSize)
        {
            float centered = x[row + i] - mean;
            squares += centered * centered;
        }
        float scale = 1f / MathF.Sqrt(GroupReduce.Sum(scratch, squares) / dim + eps);
        for (int i = Group.IdxX; i < dim; i += GroupReduce.GroupSize) y[row + i] = (x[row + i] - mean) * scale * w[i] + b[i];
    }
}
