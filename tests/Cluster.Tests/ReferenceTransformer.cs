// A plain single-sequence decoder forward (llm.c style: whole sequence, full attention, double sums) for
// both architectures, used to check TransformerModel's math where no external reference exists (GPT-2).
using Cluster.Compute;
using Cluster.Model;

namespace Cluster.Tests;

public static class ReferenceTransformer
{
    /// <summary>Logits (T, V) for every position of <paramref name="tokens"/>.</summary>
    public static float[] Forward(ModelConfig c, ModelWeights w, int[] tokens)
    {
        int T = tokens.Length, C = c.Dim, kv = c.KvDim, H = c.HiddenDim;
        bool llama = c.Architecture == Architecture.Llama;
        var x = new float[T * C];                                           // (T, C)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < C; i++)
                x[t * C + i] = w.TokenEmbedding[tokens[t] * C + i] + (llama ? 0 : w.PositionEmbedding![t * C + i]);
        foreach (var l in w.Layers)
        {
            var xb = Norm(c, x, T, l.AttnNorm, l.AttnNormBias);
            var q = Linear(xb, l.Wq, l.Bq, T, C, C);                        // (T, C)
            var k = Linear(xb, l.Wk, l.Bk, T, kv, C);                       // (T, kvDim)
            var v = Linear(xb, l.Wv, l.Bv, T, kv, C);                       // (T, kvDim)
            if (llama)
            {
                Rope(c, q, T, c.Heads);
                Rope(c, k, T, c.KvHeads);
            }
            var att = Reference.CausalAttention(q, k, v, T, c.Heads, c.KvHeads, c.HeadDim);
            Accumulate(x, Linear(att, l.Wo, l.Bo, T, C, C));
            xb = Norm(c, x, T, l.FfnNorm, l.FfnNormBias);
            var h = Linear(xb, l.W1, l.B1, T, H, C);                        // (T, H)
            if (llama)
            {
                var up = Linear(xb, l.W3!, null, T, H, C);
                for (int i = 0; i < h.Length; i++) h[i] = (float)(h[i] / (1 + Math.Exp(-h[i])) * up[i]);
            }
            else
                for (int i = 0; i < h.Length; i++)
                    h[i] = (float)(0.5 * h[i] * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (h[i] + 0.044715 * Math.Pow(h[i], 3)))));
            Accumulate(x, Linear(h, l.W2, l.B2, T, C, H));
        }
        var final = Norm(c, x, T, w.FinalNorm, w.FinalNormBias);
        return Linear(final, w.Output ?? w.TokenEmbedding, null, T, c.VocabSize, C);   // (T, V)
    }

    private static float[] Linear(float[] x, float[] w, float[]? bias, int T, int outDim, int inDim)
    {
        var y = Reference.MatMul(x, w, T, outDim, inDim);
        if (bias is not null) for (int t = 0; t < T; t++) for (int o = 0; o < outDim; o++) y[t * outDim + o] += bias[o];
        return y;
    }

    private static void Accumulate(float[] x, float[] y) { for (int i = 0; i < x.Length; i++) x[i] += y[i]; }

    private static float[] Norm(ModelConfig c, float[] x, int T, float[] weight, float[]? bias)
    {
        int C = c.Dim;
        var y = new float[x.Length];
        for (int t = 0; t < T; t++)
        {
            var row = x.AsSpan(t * C, C).ToArray();
            double mean = c.Architecture == Architecture.Llama ? 0 : row.Average(v => (double)v);
            double variance = row.Average(v => (v - mean) * (v - mean));
            for (int i = 0; i < C; i++)
                y[t * C + i] = (float)((row[i] - mean) / Math.Sqrt(variance + c.NormEps) * weight[i] + (bias?[i] ?? 0));
        }
        return y;
    }

    private static void Rope(ModelConfig c, float[] x, int T, int heads)
    {
        int hd = c.HeadDim, rot = c.EffectiveRotaryDim;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < rot / 2; i++)
                {
                    bool interleaved = c.RopeLayout == RopeLayout.Interleaved;
                    int o = (t * heads + h) * hd, a = o + (interleaved ? 2 * i : i), b = o + (interleaved ? 2 * i + 1 : i + rot / 2);
                    double angle = t * Math.Pow(c.RopeTheta, -2.0 * i / rot);
                    float x0 = x[a], x1 = x[b];
                    x[a] = (float)(x0 * Math.Cos(angle) - x1 * Math.Sin(angle));
                    x[b] = (float)(x0 * Math.Sin(angle) + x1 * Math.Cos(angle));
                }
    }
}
