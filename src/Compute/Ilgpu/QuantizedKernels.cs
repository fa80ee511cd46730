// Q8_0 / Q4_0 weights on an ILGPU device, kept as the CPU's QuantizedMatrix keeps them: blocks of 32 values along each
// row with one float scale each; Q8_0's values as int8, Q4_0's as nibbles (element j of a block in the low nibble of
// byte j, element j + 16 in its high nibble, each 8 more than the value). The product is the CPU's: each input row
// quantized to Q8_0 (its scale rounded to float16, as the CPU and llama.cpp do), then per output the integer sum of
// each block pair scaled by the two blocks' scales.
using ILGPU;
using ILGPU.Algorithms;

namespace Cluster.Compute.Ilgpu;

internal static class QuantizedKernels
{
    private const int Block = 32;

    /// <summary>One thread per block of x (rows, k): its Q8_0 values xq and scale xd.</summary>
    public static void QuantizeInputs(Index1D block, ArrayView<float> x, ArrayView<sbyte> xq, ArrayView<float> xd)
    {
        long start = (long)(int)block * Block;
        float amax = 0f;
        for (int j = 0; j < Block; j++) amax = XMath.Max(amax, XMath.Abs(x[start + j]));
        float d = amax / 127f, inverse = d != 0f ? 1f / d : 0f;
        for (int j = 0; j < Block; j++)
        {
            float v = x[start + j] * inverse;   // rounded half away from zero, as MathF.Round(v, AwayFromZero)
            xq[start + j] = (sbyte)(v >= 0f ? (int)(v + 0.5f) : -(int)(-v + 0.5f));
        }
        xd[block] = RoundToHalf(d);
    }

    /// <summary>A non-negative float rounded to the nearest float16 value (ties to even), as (float)(Half)d.</summary>
    private static float RoundToHalf(float d)
    {
        if (d >= 6.103515625e-05f)   // float16's normal range: keep 10 mantissa bits
        {
            uint bits = Interop.FloatAsInt(d);
            return Interop.IntAsFloat((bits + 0x0FFFu + ((bits >> 13) & 1u)) & 0xFFFFE000u);
        }
        float t = d * 16777216f, floor = XMath.Floor(t), fraction = t - floor;   // subnormal: a multiple of 2^-24
        bool up = fraction > 0.5f || (fraction == 0.5f && ((int)floor & 1) == 1);
        return (up ? floor + 1f : floor) / 16777216f;
    }

    /// <summary>y[r, c] (m, n) = Σ_b wd[c, b] · xd[r, b] · Σ_j qW[c, 32b + j] · qX[r, 32b + j]; one thread per output.</summary>
    public static void Product(Index1D i, ArrayView<sbyte> xq, ArrayView<float> xd, ArrayView<byte> wq, ArrayView<float> wd, ArrayView<float> y,
        int n, int k, int q4)
    {
        int r = i / n, c = i % n, blocks = k / Block;
        float total = 0f;
        for (int b = 0; b < blocks; b++)
        {
            long x0 = (long)r * k + b * Block, w0 = ((long)c * blocks + b) * (q4 != 0 ? Block / 2 : Block);
            int sum = 0;
            if (q4 != 0)
                for (int j = 0; j < Block / 2; j++)
                {
                    int packed = wq[w0 + j];
                    sum += ((packed & 15) - 8) * xq[x0 + j] + ((packed >> 4) - 8) * xq[x0 + j + Block / 2];
                }
            else
                for (int j = 0; j < Block; j++) sum += (sbyte)wq[w0 + j] * xq[x0 + j];
            total += wd[(long)c * blocks + b] * xd[(long)r * blocks + b] * sum;
        }
        y[i] = total;
    }

    /// <summary>output[t, d] = row tokens[t] of the quantized table, dequantized (0 for −1); one thread per output element.</summary>
    public static void EmbeddingRows(Index1D i, ArrayView<int> tokens, ArrayView<byte> wq, ArrayView<float> wd, ArrayView<float> output, int cols, int q4)
    {
        int t = i / cols, d = i % cols, row = tokens[t];
        if (row < 0)
        {
            output[i] = 0f;
            return;
        }
        int blocks = cols / Block, b = d / Block, j = d % Block;
        long block = (long)row * blocks + b;
        int value = q4 != 0
            ? (j < Block / 2 ? wq[block * (Block / 2) + j] & 15 : wq[block * (Block / 2) + j - Block / 2] >> 4) - 8
            : (sbyte)wq[block * Block + j];
        output[i] = value * wd[block];
    }
}
