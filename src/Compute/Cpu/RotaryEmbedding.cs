// RoPE over one token's heads. Interleaved (llama2.c, GGUF): pairs (2i, 2i+1); HalfSplit (HF): pairs
// (i, i + rotaryDim/2). Pair i turns by pos · theta^(−2i / rotaryDim), computed in float as run.c does; the
// backward turns the gradient back by the same angle.
namespace Cluster.Compute.Cpu;

public static class RotaryEmbedding
{
    /// <summary>Rotates x (heads·headDim,) of a token at position pos, in place.</summary>
    public static void Apply(Span<float> x, int pos, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout) =>
        Rotate(x, pos, heads, headDim, rotaryDim, theta, layout, direction: 1f);

    /// <summary>Backward of <see cref="Apply"/>: a rotation's gradient turns back by the same angle (dx = Rᵀ·dy), in place.</summary>
    public static void Backward(Span<float> dy, int pos, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout) =>
        Rotate(dy, pos, heads, headDim, rotaryDim, theta, layout, direction: -1f);

    private static void Rotate(Span<float> x, int pos, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout, float direction)
    {
        int pairs = rotaryDim / 2;
        Span<float> cos = pairs <= 256 ? stackalloc float[pairs] : new float[pairs];
        Span<float> sin = pairs <= 256 ? stackalloc float[pairs] : new float[pairs];
        for (int i = 0; i < pairs; i++)
        {
            float freq = 1.0f / MathF.Pow(theta, 2 * i / (float)rotaryDim);
            float angle = pos * freq;
            cos[i] = MathF.Cos(angle);
            sin[i] = direction * MathF.Sin(angle);
        }
        int stride = layout == RopeLayout.Interleaved ? 1 : pairs;   // distance from a pair's first element to its second
        for (int h = 0; h < heads; h++)
        {
            var head = x.Slice(h * headDim, headDim);
            for (int i = 0; i < pairs; i++)
            {
                int first = layout == RopeLayout.Interleaved ? 2 * i : i;
                float x0 = head[first], x1 = head[first + stride];
                head[first] = x0 * cos[i] - x1 * sin[i];
                head[first + stride] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}
