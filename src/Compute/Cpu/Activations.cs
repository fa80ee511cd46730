// Elementwise MLP activations: SwiGLU (Llama) and tanh-approximated GELU (GPT-2), in place.
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
}
