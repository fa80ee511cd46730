// Compares two models tensor by tensor (exactly or within a tolerance), naming the first tensor that differs.
using Cluster.Model;

namespace Cluster.Tests.Formats;

public static class WeightAssert
{
    public static IEnumerable<(string Name, float[]? Values)> Tensors(ModelWeights w)
    {
        yield return ("token_embedding", w.TokenEmbedding);
        yield return ("position_embedding", w.PositionEmbedding);
        for (int l = 0; l < w.Layers.Length; l++)
        {
            var x = w.Layers[l];
            string p = $"layers.{l}.";
            yield return (p + "attn_norm", x.AttnNorm);
            yield return (p + "attn_norm.bias", x.AttnNormBias);
            yield return (p + "wq", x.Wq);
            yield return (p + "wk", x.Wk);
            yield return (p + "wv", x.Wv);
            yield return (p + "wo", x.Wo);
            yield return (p + "bq", x.Bq);
            yield return (p + "bk", x.Bk);
            yield return (p + "bv", x.Bv);
            yield return (p + "bo", x.Bo);
            yield return (p + "ffn_norm", x.FfnNorm);
            yield return (p + "ffn_norm.bias", x.FfnNormBias);
            yield return (p + "w1", x.W1);
            yield return (p + "w2", x.W2);
            yield return (p + "w3", x.W3);
            yield return (p + "b1", x.B1);
            yield return (p + "b2", x.B2);
            yield return (p + "router", x.Router);
            yield return (p + "router_bias", x.RouterBias);
            yield return (p + "shared_w1", x.SharedW1);
            yield return (p + "shared_w2", x.SharedW2);
            yield return (p + "shared_w3", x.SharedW3);
            yield return (p + "shared_gate", x.SharedExpertGate);
        }
        yield return ("final_norm", w.FinalNorm);
        yield return ("final_norm.bias", w.FinalNormBias);
        yield return ("output", w.Output);
    }

    /// <summary>Every tensor equal within <paramref name="tolerance"/> times the tensor's largest magnitude (0 = bit-exact).</summary>
    public static void Equal(ModelWeights expected, ModelWeights actual, float tolerance = 0)
    {
        Assert.Equal(expected.Layers.Length, actual.Layers.Length);
        foreach (var ((name, e), (_, a)) in Tensors(expected).Zip(Tensors(actual)))
        {
            Assert.True((e is null) == (a is null), $"{name}: present in only one model");
            if (e is null) continue;
            ValuesEqual(e, a!, tolerance, name);
        }
    }

    public static void ValuesEqual(float[] expected, float[] actual, float tolerance, string name)
    {
        Assert.True(expected.Length == actual.Length, $"{name}: {expected.Length} vs {actual.Length} elements");
        float scale = tolerance == 0 ? 0 : tolerance * expected.Max(MathF.Abs);
        for (int i = 0; i < expected.Length; i++)
            if (!(MathF.Abs(expected[i] - actual[i]) <= scale))
                Assert.Fail($"{name}[{i}]: expected {expected[i]}, got {actual[i]} (allowed difference {scale})");
    }
}
