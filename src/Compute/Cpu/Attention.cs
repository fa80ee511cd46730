// Causal attention of one (token, head) over the paged KV cache, one cache block at a time with an
// online softmax (running max m, running sum l, accumulator acc), so no (T, T) score matrix exists. The cache is read
// head row by head row through KvRows: a float32 cache in place, a float16 / int8 one widened row by row.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Cluster.Compute.Cpu;

/// <summary>One layer's K or V cache as attention reads it: a head's row of a slot, in place (float32) or widened.</summary>
public readonly struct KvRows(DeviceBuffer cache, int kvDim)
{
    private readonly float[]? _floats = (cache as CpuBuffer)?.Data;
    private readonly CpuKvBuffer? _packed = cache as CpuKvBuffer;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ReadOnlySpan<float> Head(int slot, int kvHead, int headDim, Span<float> scratch) =>
        _floats is not null ? _floats.AsSpan(slot * kvDim + kvHead * headDim, headDim) : _packed!.Head(slot, kvHead, scratch);
}

public static class Attention
{
    public static void TokenHead(float[] q, KvRows cacheK, KvRows cacheV, float[] output, AttentionLayout layout, int token, int head)
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
        Span<float> row = headDim <= 256 ? stackalloc float[headDim] : new float[headDim];   // a widened K or V head row
        float runningMax = float.NegativeInfinity, runningSum = 0f;

        for (int start = 0; start < length; start += blockSize)
        {
            int block = layout.BlockTables[seq * layout.MaxBlocksPerSequence + start / blockSize];
            int count = Math.Min(blockSize, length - start);
            int firstSlot = block * blockSize;
            float blockMax = float.NegativeInfinity;
            for (int j = 0; j < count; j++)
            {
                scores[j] = Dot(query, cacheK.Head(firstSlot + j, kvHead, headDim, row)) * scale;
                blockMax = MathF.Max(blockMax, scores[j]);
            }
            float newMax = MathF.Max(runningMax, blockMax);
            float correction = MathF.Exp(runningMax - newMax);   // exp(−∞) = 0 on the first block
            runningSum *= correction;
            TensorPrimitives.Multiply(acc, correction, acc);
            var weights = scores[..count];
            TensorPrimitives.Subtract(weights, newMax, weights);
            TensorPrimitives.Exp(weights, weights);
            runningSum += TensorPrimitives.Sum(weights);
            for (int j = 0; j < count; j++)
                MultiplyAdd(cacheV.Head(firstSlot + j, kvHead, headDim, row), weights[j], acc);
            runningMax = newMax;
        }
        TensorPrimitives.Multiply(acc, 1f / runningSum, acc);
    }

    // Head-sized (64-128 float) vector kernels, inlined: at these lengths TensorPrimitives' call and
    // dispatch overhead is as large as the arithmetic, and prefill makes millions of these calls.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        ref float ra = ref MemoryMarshal.GetReference(a);
        ref float rb = ref MemoryMarshal.GetReference(b);
        int i = 0;
        float result;
        // Vector512 where the CPU has it; elsewhere Vector256 (Vector512's software fallback is many times slower).
        if (Vector512.IsHardwareAccelerated)
        {
            var sum = Vector512<float>.Zero;
            for (; i + 16 <= a.Length; i += 16)
                sum = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref ra, (nuint)i), Vector512.LoadUnsafe(ref rb, (nuint)i), sum);
            result = Vector512.Sum(sum);
        }
        else
        {
            var sum = Vector256<float>.Zero;
            for (; i + 8 <= a.Length; i += 8)
                sum = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref ra, (nuint)i), Vector256.LoadUnsafe(ref rb, (nuint)i), sum);
            result = Vector256.Sum(sum);
        }
        for (; i < a.Length; i++) result += a[i] * b[i];
        return result;
    }

    /// <summary>acc += v · p.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MultiplyAdd(ReadOnlySpan<float> v, float p, Span<float> acc)
    {
        ref float rv = ref MemoryMarshal.GetReference(v);
        ref float racc = ref MemoryMarshal.GetReference(acc);
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var scale = Vector512.Create(p);
            for (; i + 16 <= v.Length; i += 16)
                Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref rv, (nuint)i), scale, Vector512.LoadUnsafe(ref racc, (nuint)i)).StoreUnsafe(ref racc, (nuint)i);
        }
        else
        {
            var scale = Vector256.Create(p);
            for (; i + 8 <= v.Length; i += 8)
                Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref rv, (nuint)i), scale, Vector256.LoadUnsafe(ref racc, (nuint)i)).StoreUnsafe(ref racc, (nuint)i);
        }
        for (; i < v.Length; i++) acc[i] += v[i] * p;
    }
}
