// Elementwise MLP activations: SwiGLU (Llama) and tanh-approximated GELU (GPT-2), in place; and their backward.
using System.Numerics.Tensors;

namespace Cluster.Compute.Cpu;

public static class Activations
{
    private const int Chunk = 1024;

    /// <summary>gate (n,) = silu(gate) · up.</summary>
    public static void SwiGlu(Span<float> gate, ReadOnlySpan<float> up)
    {
        Span<float> sigmoid = stackalloc float[Chunk];
        for (int s = 0; s < gate.Length; s += Chunk)
        {
            int n = Math.Min(Chunk, gate.Length - s);
            var g = gate.Slice(s, n);
            TensorPrimitives.Sigmoid(g, sigmoid[..n]);
            TensorPrimitives.Multiply(g, sigmoid[..n], g);
            TensorPrimitives.Multiply(g, up.Slice(s, n), g);
        }
    }

    /// <summary>x (n,) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).</summary>
    public static void Gelu(Span<float> x)
    {
        const float SqrtTwoOverPi = 0.7978845608f;
        Span<float> inner = stackalloc float[Chunk];
        for (int s = 0; s < x.Length; s += Chunk)
        {
            int n = Math.Min(Chunk, x.Length - s);
            var v = x.Slice(s, n);
            var t = inner[..n];
            TensorPrimitives.Multiply(v, v, t);                        // x²
            TensorPrimitives.Multiply(t, 0.044715f, t);
            TensorPrimitives.Add(t, 1f, t);                             // 1 + 0.044715x²
            TensorPrimitives.Multiply(t, v, t);                        // x + 0.044715x³
            TensorPrimitives.Multiply(t, SqrtTwoOverPi, t);
            TensorPrimitives.Tanh(t, t);
            TensorPrimitives.Add(t, 1f, t);
            TensorPrimitives.Multiply(t, v, t);
            TensorPrimitives.Multiply(t, 0.5f, v);
        }
    }

    /// <summary>
    /// Backward of <see cref="SwiGlu"/> from its inputs gate, up (n,) (before the in-place forward): dgate, dup (n,)
    /// accumulate. silu(g) = g·σ(g), silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
    /// </summary>
    public static void SwiGluBackward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, ReadOnlySpan<float> dout, Span<float> dgate, Span<float> dup)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            float g = gate[i], sigmoid = 1f / (1f + MathF.Exp(-g));
            dup[i] += dout[i] * g * sigmoid;
            dgate[i] += dout[i] * up[i] * sigmoid * (1f + g * (1f - sigmoid));
        }
    }

    /// <summary>Backward of <see cref="Gelu"/> from its input x (n,): dx (n,) accumulates.</summary>
    public static void GeluBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> dout, Span<float> dx)
    {
        const float SqrtTwoOverPi = 0.7978845608f;
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i], u = SqrtTwoOverPi * (v + 0.044715f * v * v * v);
            float t = MathF.Tanh(u);
            float du = SqrtTwoOverPi * (1f + 3f * 0.044715f * v * v);
            dx[i] += dout[i] * (0.5f * (1f + t) + 0.5f * v * (1f - t * t) * du);
        }
    }
}
