// Backward of the embedding lookup out (T, C) = table[tokens[t]]: dtable (V, C) rows accumulate their tokens' dout.
using System.Numerics.Tensors;

namespace Cluster.Compute.Cpu;

public static class EmbeddingBackward
{
    public static void Backward(ReadOnlySpan<int> tokens, ReadOnlySpan<float> dout, Span<float> dtable, int dim)
    {
        for (int t = 0; t < tokens.Length; t++)
        {
            var row = dtable.Slice(tokens[t] * dim, dim);
            TensorPrimitives.Add(row, dout.Slice(t * dim, dim), row);
        }
    }
}
