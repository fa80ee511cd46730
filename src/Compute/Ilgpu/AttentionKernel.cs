// Causal paged attention: one group per (token, head), walking the token's visible positions in tiles of
// GroupSize keys with an online softmax (running max, running sum, per-thread accumulator), so no T×T
// score matrix exists. Thread j scores key j of the tile; thread d (< headDim) accumulates output dim d.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

/// <summary>The scalar shape of one attention call (see <see cref="AttentionLayout"/>).</summary>
internal readonly struct AttentionShape(int heads, int kvHeads, int headDim, int blockSize, int maxBlocksPerSequence, float scale)
{
    public readonly int Heads = heads, KvHeads = kvHeads, HeadDim = headDim, BlockSize = blockSize, MaxBlocksPerSequence = maxBlocksPerSequence;
    public readonly float Scale = scale;
}

internal static class AttentionKernel
{
    private const int Tile = GroupReduce.GroupSize;

    /// <summary>Group g handles token g / heads, head g % heads; headDim ≤ GroupSize.</summary>
    public static void Kernel(ArrayView<float> q, ArrayView<float> cacheK, ArrayView<float> cacheV, ArrayView<float> output,
        ArrayView<int> tokenSequence, ArrayView<int> tokenPosition, ArrayView<int> blockTables, AttentionShape shape)
    {
        var query = SharedMemory.Allocate<float>(Tile);
        var weights = SharedMemory.Allocate<float>(Tile);
        var slots = SharedMemory.Allocate<int>(Tile);
        var scratch = SharedMemory.Allocate<float>(Tile);

        int tid = Group.IdxX, headDim = shape.HeadDim;
        int token = Grid.IdxX / shape.Heads, head = Grid.IdxX % shape.Heads;
        int kvOffset = head / (shape.Heads / shape.KvHeads) * headDim;
        int kvDim = shape.KvHeads * headDim;
        int table = tokenSequence[token] * shape.MaxBlocksPerSequence;
        int length = tokenPosition[token] + 1;   // positions 0..pos are visible
        int qOffset = (token * shape.Heads + head) * headDim;
        if (tid < headDim) query[tid] = q[qOffset + tid];
        Group.Barrier();

        float runningMax = float.NegativeInfinity, runningSum = 0f, acc = 0f;
        for (int start = 0; start < length; start += Tile)
        {
            int count = Math.Min(Tile, length - start);
            float score = float.NegativeInfinity;
            if (tid < count)
            {
                int pos = start + tid;
                int slot = blockTables[table + pos / shape.BlockSize] * shape.BlockSize + pos % shape.BlockSize;
                slots[tid] = slot;
                float dot = 0f;
                for (int d = 0; d < headDim; d++) dot += query[d] * cacheK[slot * kvDim + kvOffset + d];
                score = dot * shape.Scale;
            }
            float newMax = MathF.Max(runningMax, GroupReduce.Max(scratch, score));   // its barriers publish slots
            float correction = MathF.Exp(runningMax - newMax);   // exp(−∞) = 0 on the first tile
            float p = tid < count ? MathF.Exp(score - newMax) : 0f;
            weights[tid] = p;
            runningSum = runningSum * correction + GroupReduce.Sum(scratch, p);   // its barriers publish weights
            if (tid < headDim)
            {
                acc *= correction;
                for (int j = 0; j < count; j++) acc += weights[j] * cacheV[slots[j] * kvDim + kvOffset + tid];
            }
            runningMax = newMax;
            Group.Barrier();   // weights and slots are rewritten by the next tile
        }
        if (tid < headDim) output[qOffset + tid] = acc * (1f / runningSum);
    }
}
