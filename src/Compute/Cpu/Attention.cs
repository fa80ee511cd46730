// Causal attention of one (token, head) over the paged KV cache, one cache block at a time with an
// online softmax (running max m, running sum l, accumulator acc), so no (T, T) score matrix exists.
using System.Numerics.Tensors;

namespace Cluster.Compute.Cpu;

public static class Attention
{
    public static void TokenHead(float[] q, float[] cacheK, float[] cacheV, float[] output, AttentionLayout layout, int token, int head)
    {
        int headDim = layout.HeadDim;
        int kvDim = layout.KvHeads * headDim;
        int kvHead = head / (layout.Heads / layout.KvHeads);
        int seq = layout.TokenSequence[token];
        int length = layout.TokenPosition[token] + 1;   // positions 0..pos are visible
        int blockSize = layout.BlockSize;
        float scale = 1f / MathF.Sqrt(headDim);

        ReadOnlySpan<float> query = q.AsSpan((token * layout.Heads + head) * headDim, headDim);   // (hd,)
        Span<float> acc = output.AsSpan((token * layout.Heads + head) * headDim, headDim);          // (hd,)
        acc.Clear();
        Span<float> scores = blockSize <= 256 ? stackalloc float[blockSize] : new float[blockSize];
        float runningMax = float.NegativeInfinity, runningSum = 0f;

        for (int start = 0; start < length; start += blockSize)
        {
            int block = layout.BlockTables[seq * layout.MaxBlocksPerSequence + start / blockSize];
            int count = Math.Min(blockSize, length - start);
            int firstSlot = block * blockSize;
            float blockMax = float.NegativeInfinity;
            for (int j = 0; j < count; j++)
            {
                scores[j] = TensorPrimitives.Dot(query, cacheK.AsSpan((firstSlot + j) * kvDim + kvHead * headDim, headDim)) * scale;
                blockMax = MathF.Max(blockMax, scores[j]);
            }
            float newMax = MathF.Max(runningMax, blockMax);
            float correction = MathF.Exp(runningMax - newMax);   // exp(−∞) = 0 on the first block
            runningSum *= correction;
            TensorPrimitives.Multiply(acc, correction, acc);
            for (int j = 0; j < count; j++)
            {
                float p = MathF.Exp(scores[j] - newMax);
                runningSum += p;
                TensorPrimitives.MultiplyAdd(cacheV.AsSpan((firstSlot + j) * kvDim + kvHead * headDim, headDim), p, acc, acc);
            }
            runningMax = newMax;
        }
        TensorPrimitives.Multiply(acc, 1f / runningSum, acc);
    }
}
