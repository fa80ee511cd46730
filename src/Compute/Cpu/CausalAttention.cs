// Causal self-attention of one packed training sequence, forward and backward (llm.c's attention_forward/backward
// with GQA and document masks). Token t attends to s ≤ t of the same document; query head h reads KV head
// h / (heads / kvHeads). The forward keeps the softmax probabilities (heads, T, T) for the backward; inference uses
// the paged, tiled PagedAttention instead.
using System.Numerics.Tensors;

namespace Cluster.Compute.Cpu;

public static class CausalAttention
{
    /// <summary>
    /// out (T, heads·hd) from q (T, heads·hd), k and v (T, kvHeads·hd); probs (heads, T, T) receives the attention
    /// weights (zero where masked). <paramref name="documents"/> (T,) ids keep packed documents apart; empty = one.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, Span<float> probs,
        ReadOnlySpan<int> documents, int tokens, int heads, int kvHeads, int headDim)
    {
        int qWidth = heads * headDim, kvWidth = kvHeads * headDim, group = heads / kvHeads;
        float scale = 1f / MathF.Sqrt(headDim);
        probs.Clear();
        output.Clear();
        for (int h = 0; h < heads; h++)
        {
            int kvh = h / group;
            for (int t = 0; t < tokens; t++)
            {
                var p = probs.Slice((h * tokens + t) * tokens, tokens);                 // (T,)
                var qt = q.Slice(t * qWidth + h * headDim, headDim);
                float max = float.NegativeInfinity;
                for (int s = 0; s <= t; s++)
                {
                    if (!SameDocument(documents, s, t)) continue;
                    p[s] = scale * TensorPrimitives.Dot(qt, k.Slice(s * kvWidth + kvh * headDim, headDim));
                    max = MathF.Max(max, p[s]);
                }
                float sum = 0;
                for (int s = 0; s <= t; s++)
                {
                    if (!SameDocument(documents, s, t)) continue;
                    p[s] = MathF.Exp(p[s] - max);
                    sum += p[s];
                }
                var ot = output.Slice(t * qWidth + h * headDim, headDim);
                for (int s = 0; s <= t; s++)
                {
                    if (!SameDocument(documents, s, t)) continue;
                    p[s] /= sum;
                    TensorPrimitives.MultiplyAdd(v.Slice(s * kvWidth + kvh * headDim, headDim), p[s], ot, ot);
                }
            }
        }
    }

    /// <summary>dq (T, heads·hd), dk and dv (T, kvHeads·hd) accumulate the gradients of <see cref="Forward"/> given dout and its probs.</summary>
    public static void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> probs, ReadOnlySpan<float> dout,
        Span<float> dq, Span<float> dk, Span<float> dv, int tokens, int heads, int kvHeads, int headDim)
    {
        int qWidth = heads * headDim, kvWidth = kvHeads * headDim, group = heads / kvHeads;
        float scale = 1f / MathF.Sqrt(headDim);
        var dp = new float[tokens];                                                      // (T,) ∂L/∂p for one query
        for (int h = 0; h < heads; h++)
        {
            int kvh = h / group;
            for (int t = 0; t < tokens; t++)
            {
                var p = probs.Slice((h * tokens + t) * tokens, tokens);
                var dot = dout.Slice(t * qWidth + h * headDim, headDim);
                float weighted = 0;                                                      // Σ_s p·dp
                for (int s = 0; s <= t; s++)
                {
                    if (p[s] == 0f) { dp[s] = 0; continue; }
                    dp[s] = TensorPrimitives.Dot(dot, v.Slice(s * kvWidth + kvh * headDim, headDim));
                    weighted += p[s] * dp[s];
                    var dvs = dv.Slice(s * kvWidth + kvh * headDim, headDim);
                    TensorPrimitives.MultiplyAdd(dot, p[s], dvs, dvs);                   // dv[s] += p · dout[t]
                }
                var qt = q.Slice(t * qWidth + h * headDim, headDim);
                var dqt = dq.Slice(t * qWidth + h * headDim, headDim);
                for (int s = 0; s <= t; s++)
                {
                    if (p[s] == 0f) continue;
                    float dscore = p[s] * (dp[s] - weighted) * scale;                  // softmax backward, then the scale
                    TensorPrimitives.MultiplyAdd(k.Slice(s * kvWidth + kvh * headDim, headDim), dscore, dqt, dqt);
                    var dks = dk.Slice(s * kvWidth + kvh * headDim, headDim);
                    TensorPrimitives.MultiplyAdd(qt, dscore, dks, dks);
                }
            }
        }
    }

    private static bool SameDocument(ReadOnlySpan<int> documents, int s, int t) => documents.IsEmpty || documents[s] == documents[t];
}
