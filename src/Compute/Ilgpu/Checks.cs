// Argument checks of the ILGPU backend, done on the caller's thread before any work is queued: kernels
// do not bounds-check, so every index and length a kernel will use is validated here.
using static Cluster.Compute.DeviceArguments;

namespace Cluster.Compute.Ilgpu;

internal static class Checks
{

    public static void CheckRows(int rows, int dim, DeviceBuffer x, DeviceBuffer y, DeviceBuffer weight)
    {
        CheckLength(x, (long)rows * dim, nameof(x));
        CheckLength(y, (long)rows * dim, nameof(y));
        CheckLength(weight, dim, nameof(weight));
    }

    public static void CheckIndices(ReadOnlySpan<int> indices, int count, string what)
    {
        foreach (int index in indices)
            if ((uint)index >= (uint)count) throw new ArgumentOutOfRangeException(what, index, $"{what} {index} outside [0, {count})");
    }

    public static void CheckAttention(DeviceBuffer q, DeviceBuffer cacheK, DeviceBuffer cacheV, DeviceBuffer output, AttentionLayout layout)
    {
        if (layout.HeadDim > GroupReduce.GroupSize) throw new NotSupportedException($"headDim {layout.HeadDim} exceeds {GroupReduce.GroupSize}");
        if (layout.KvHeads <= 0 || layout.Heads % layout.KvHeads != 0) throw new ArgumentException($"heads {layout.Heads} is not a multiple of kvHeads {layout.KvHeads}");
        if (layout.TokenPosition.Length != layout.Tokens) throw new ArgumentException("TokenPosition and TokenSequence differ in length");
        long width = (long)layout.Tokens * layout.Heads * layout.HeadDim;
        CheckLength(q, width, nameof(q));
        CheckLength(output, width, nameof(output));
        int blocks = Math.Min(cacheK.Length, cacheV.Length) / (layout.KvHeads * layout.HeadDim) / layout.BlockSize;
        int sequences = layout.BlockTables.Length / layout.MaxBlocksPerSequence;
        for (int t = 0; t < layout.Tokens; t++)
        {
            int seq = layout.TokenSequence[t], pos = layout.TokenPosition[t];
            if ((uint)seq >= (uint)sequences) throw new ArgumentOutOfRangeException(nameof(layout), seq, $"sequence {seq} outside [0, {sequences})");
            if (pos < 0 || pos / layout.BlockSize >= layout.MaxBlocksPerSequence) throw new ArgumentOutOfRangeException(nameof(layout), pos, $"position {pos} outside the block table");
            for (int b = 0; b <= pos / layout.BlockSize; b++)
                CheckIndices([layout.BlockTables[seq * layout.MaxBlocksPerSequence + b]], blocks, "cache block");
        }
    }
}
