// Group-wide tree reductions in shared memory for kernels launched with GroupSize threads per group.
// Every thread of the group must call them (they contain barriers) and every thread gets the result.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class GroupReduce
{
    /// <summary>Threads per group of every grouped kernel (row norms, attention, GEMM).</summary>
    public const int GroupSize = 256;

    public static float Sum(ArrayView<float> scratch, float value)
    {
        int tid = Group.IdxX;
        scratch[tid] = value;
        Group.Barrier();
        for (int stride = GroupSize / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride) scratch[tid] += scratch[tid + stride];
            Group.Barrier();
        }
        float total = scratch[0];
        Group.Barrier();   // scratch may be reused right after
        return total;
    }

    public static float Max(ArrayView<float> scratch, float value)
    {
        int tid = Group.IdxX;
        scratch[tid] = value;
        Group.Barrier();
        for (int stride = GroupSize / 2; stride > 0; stride >>= 1)
        {
            if (tid < stride) scratch[tid] = MathF.Max(scratch[tid], scratch[tid + stride]);
            Group.Barrier();
        }
        float max = scratch[0];
        Group.Barrier();
        return max;
    }
}
