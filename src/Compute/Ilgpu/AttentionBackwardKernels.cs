// Causal attention as training needs it (Cpu/CausalAttention's operation order), with the probabilities kept:
// forward one thread per (head, query); backward one thread per (head, query) for dq and the score gradients, then
// one per (KV head, key) for dk and dv, summing its query heads and queries in the CPU's order (no two threads add
// into the same element).
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class AttentionBackwardKernels
{
    private static bool Attends(ArrayView<int> documents, int hasDocuments, int s, int t) => hasDocuments == 0 || documents[s] == documents[t];

    /// <summary>Thread (h, t): probs[h, t, :] (zero where masked) and output[t, h·hd ..] = Σ_s p·v[s].</summary>
    public static void Forward(Index1D i, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> output, ArrayView<float> probs,
        ArrayView<int> documents, int hasDocuments, int tokens, int heads, int kvHeads, int headDim)
    {
        int h = i / tokens, t = i % tokens, kvh = h / (heads / kvHeads);
        int qWidth = heads * headDim, kvWidth = kvHeads * headDim, row = (h * tokens + t) * tokens;
        float scale = 1f / MathF.Sqrt(headDim), max = float.NegativeInfinity;
        for (int s = 0; s < tokens; s++)
        {
            if (s > t || !Attends(documents, hasDocuments, s, t))
            {
                probs[row + s] = 0f;
                continue;
            }
            float dot = 0f;
            for (int d = 0; d < headDim; d++) dot += q[t * qWidth + h * headDim + d] * k[s * kvWidth + kvh * headDim + d];
            probs[row + s] = scale * dot;
            max = MathF.Max(max, probs[row + s]);
        }
        float sum = 0f;
        for (int s = 0; s <= t; s++)
        {
            if (!Attends(documents, hasDocuments, s, t)) continue;
            probs[row + s] = MathF.Exp(probs[row + s] - max);
            sum += probs[row + s];
        }
        for (int d = 0; d < headDim; d++) output[t * qWidth + h * headDim + d] = 0f;
        for (int s = 0; s <= t; s++)
        {
            if (!Attends(documents, hasDocuments, s, t)) continue;
            probs[row + s] /= sum;
            for (int d = 0; d < headDim; d++) output[t * qWidth + h * headDim + d] += probs[row + s] * v[s * kvWidth + kvh * headDim + d];
        }
    }

    /// <summary>Thread (h, t): dscores[h, t, s] = p·(dp − Σ p·dp)·scale with dp = dout[t]·v[s], and dq[t] += Σ_s dscore·k[s].</summary>
    public static void Queries(Index1D i, ArrayView<float> k, ArrayView<float> v, ArrayView<float> probs, ArrayView<float> dout, ArrayView<float> dq,
        ArrayView<float> dscores, int tokens, int heads, int kvHeads, int headDim)
    {
        int h = i / tokens, t = i % tokens, kvh = h / (heads / kvHeads);
        int qWidth = heads * headDim, kvWidth = kvHeads * headDim, row = (h * tokens + t) * tokens;
        float scale = 1f / MathF.Sqrt(headDim), weighted = 0f;
        for (int s = 0; s <= t; s++)
        {
            float p = probs[row + s];
            if (p == 0f) continue;
            weighted += p * Dot(dout, t * qWidth + h * headDim, v, s * kvWidth + kvh * headDim, headDim);
        }
        for (int s = 0; s < tokens; s++)
        {
            float p = s <= t ? probs[row + s] : 0f;
            if (p == 0f)
            {
                dscores[row + s] = 0f;
                continue;
            }
            float dscore = p * (Dot(dout, t * qWidth + h * headDim, v, s * kvWidth + kvh * headDim, headDim) - weighted) * scale;
            dscores[row + s] = dscore;
            for (int d = 0; d < headDim; d++) dq[t * qWidth + h * headDim + d] += dscore * k[s * kvWidth + kvh * headDim + d];
        }
    }

    /// <summary>Thread (kvh, s): dv[s] += Σ_h Σ_t p·dout[t], dk[s] += Σ_h Σ_t dscore·q[t], over the query heads that read kvh.</summary>
    public static void Keys(Index1D i, ArrayView<float> q, ArrayView<float> probs, ArrayView<float> dout, ArrayView<float> dscores,
        ArrayView<float> dk, ArrayView<float> dv, int tokens, int heads, int kvHeads, int headDim)
    {
        int kvh = i / tokens, s = i % tokens, group = heads / kvHeads;
        int qWidth = heads * headDim, kvWidth = kvHeads * headDim;
        for (int h = kvh * group; h < (kvh + 1) * group; h++)
            for (int t = s; t < tokens; t++)
            {
                int at = (h * tokens + t) * tokens + s;
                float p = probs[at];
                if (p == 0f) continue;
                float dscore = dscores[at];
                for (int d = 0; d < headDim; d++)
                {
                    dv[s * kvWidth + kvh * headDim + d] += p * dout[t * qWidth + h * headDim + d];
                    dk[s * kvWidth + kvh * headDim + d] += dscore * q[t * qWidth + h * headDim + d];
                }
            }
    }

    /// <summary>One thread per column c of the table: dtable[rows[t], c] += dx[t, c] for every token whose row is not −1.</summary>
    public static void EmbeddingRows(Index1D c, ArrayView<int> rows, ArrayView<float> dx, ArrayView<float> dtable, int tokens, int dim)
    {
        for (int t = 0; t < tokens; t++)
            if (rows[t] >= 0) dtable[rows[t] * dim + c] += dx[t * dim + c];
    }

    private static float Dot(ArrayView<float> a, int aOffset, ArrayView<float> b, int bOffset, int length)
    {
        float sum = 0f;
        for (int d = 0; d < length; d++) sum += a[aOffset + d] * b[bOffset + d];
        return sum;
    }
}
