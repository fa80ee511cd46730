// One-thread-per-element kernels: residual add, bias, row gathers (embedding, position embedding, logit rows),
// KV-cache writes, RoPE, the MLP activations and the MoE combine (row scales, row dots). Each mirrors the arithmetic order of the CPU backend.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class ElementwiseKernels
{
    /// <summary>x[i] += y[i].</summary>
    public static void Add(Index1D i, ArrayView<float> x, ArrayView<float> y) => x[i] += y[i];

    /// <summary>x[i] *= factor.</summary>
    public static void Scale(Index1D i, ArrayView<float> x, float factor) => x[i] *= factor;

    /// <summary>x[i] *= y[i].</summary>
    public static void Multiply(Index1D i, ArrayView<float> x, ArrayView<float> y) => x[i] *= y[i];

    /// <summary>y[i] += factor · x[i].</summary>
    public static void AddScaled(Index1D i, ArrayView<float> y, ArrayView<float> x, float factor) => y[i] += factor * x[i];

    /// <summary>x (rows, dim) += bias (dim,); one thread per element of x.</summary>
    public static void AddBias(Index1D i, ArrayView<float> x, ArrayView<float> bias, int dim) => x[i] += bias[i % dim];

    /// <summary>output[r, d] (+)= source[rows[r], d] (0 for a row of −1); accumulate = 1 adds instead of copying.</summary>
    public static void GatherRows(Index1D i, ArrayView<float> source, ArrayView<int> rows, ArrayView<float> output, int dim, int accumulate)
    {
        int r = i / dim, d = i % dim, row = rows[r];
        float value = row < 0 ? 0f : source[row * dim + d];
        output[i] = accumulate != 0 ? output[i] + value : value;
    }

    /// <summary>x[r, d] *= scales[r]; one thread per element of x (rows, dim).</summary>
    public static void ScaleRows(Index1D i, ArrayView<float> x, ArrayView<float> scales, int dim) => x[i] *= scales[i / dim];

    /// <summary>dots[r] = Σ_d a[r, d] · b[r, d], in the CPU's order of terms up to rounding; one thread per row.</summary>
    public static void RowDots(Index1D r, ArrayView<float> a, ArrayView<float> b, ArrayView<float> dots, int dim)
    {
        float sum = 0;
        for (int d = 0; d < dim; d++) sum += a[r * dim + d] * b[r * dim + d];
        dots[r] = sum;
    }

    /// <summary>cacheK/V[slots[t], d] = k/v[t, d]; one thread per element of k.</summary>
    public static void WriteKv(Index1D i, ArrayView<float> k, ArrayView<float> v, ArrayView<float> cacheK, ArrayView<float> cacheV, ArrayView<int> slots, int kvDim)
    {
        int target = slots[i / kvDim] * kvDim + i % kvDim;
        cacheK[target] = k[i];
        cacheV[target] = v[i];
    }

    /// <summary>
    /// One thread per (token, head, pair) of x (T, heads·headDim): pair p turns by pos · frequencies[p] (the host
    /// computes the frequencies as the CPU backend does). Interleaved pairs are (2p, 2p+1), half-split (p, p + pairs).
    /// </summary>
    public static void Rope(Index1D i, ArrayView<float> x, ArrayView<int> positions, ArrayView<float> frequencies, int heads, int headDim, int pairs, int interleaved)
    {
        int pair = i % pairs, head = i / pairs % heads, token = i / pairs / heads;
        float angle = ReduceAngle(positions[token] * frequencies[pair]);
        float cos = MathF.Cos(angle), sin = MathF.Sin(angle);
        int first = (token * heads + head) * headDim + (interleaved != 0 ? 2 * pair : pair);
        int second = first + (interleaved != 0 ? 1 : pairs);
        float x0 = x[first], x1 = x[second];
        x[first] = x0 * cos - x1 * sin;
        x[second] = x0 * sin + x1 * cos;
    }

    /// <summary>
    /// angle − k·2π, within [−π, π] (Cody–Waite: 2π = hi + lo with k·hi exact for k &lt; 2^16). GPU sin/cos are
    /// approximations accurate only near zero, and RoPE angles reach thousands of radians.
    /// </summary>
    private static float ReduceAngle(float angle)
    {
        const float TwoPiHi = 6.28125f, TwoPiLo = 1.9353071795864769e-3f, InverseTwoPi = 0.15915494309189535f;
        float k = MathF.Floor(angle * InverseTwoPi + 0.5f);
        return angle - k * TwoPiHi - k * TwoPiLo;
    }

    /// <summary>gate[i] = silu(gate[i]) · up[i].</summary>
    public static void SwiGlu(Index1D i, ArrayView<float> gate, ArrayView<float> up)
    {
        float g = gate[i];
        float sigmoid = 1f / (1f + MathF.Exp(-g));
        gate[i] = g * sigmoid * up[i];
    }

    /// <summary>x[i] = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in the CPU backend's operation order.</summary>
    public static void Gelu(Index1D i, ArrayView<float> x)
    {
        const float SqrtTwoOverPi = 0.7978845608f;
        float v = x[i];
        float t = (v * v * 0.044715f + 1f) * v * SqrtTwoOverPi;
        float tanh = 1f - 2f / (MathF.Exp(2f * t) + 1f);   // CUDA's MathF.Tanh is tanh.approx (error ~5e-4); exp is far closer
        x[i] = (tanh + 1f) * v * 0.5f;
    }
}
