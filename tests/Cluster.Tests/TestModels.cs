// Small seeded models for tests that need a model but not a trained one.
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Training;

namespace Cluster.Tests;

public static class TestModels
{
    public static ModelConfig SmallConfig(Architecture architecture) => new()
    {
        Architecture = architecture, Dim = 48, HiddenDim = 100, Layers = 2, Heads = 6,
        KvHeads = architecture == Architecture.Llama ? 2 : 6, VocabSize = 97, MaxSeqLen = 64,
        TiedEmbeddings = architecture == Architecture.Gpt2,
    };

    /// <summary>Two random sequences of 7 and 4 tokens, the second target of each not counted: a batch for finite-difference checks.</summary>
    public static TrainingSequence[] FiniteDifferenceBatch(ModelConfig config, int seed)
    {
        var rng = new Random(seed);
        TrainingSequence Sequence(int n) => new([.. Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize))],
                                                [.. Enumerable.Range(0, n).Select(i => i == 1 ? CrossEntropy.Ignore : rng.Next(config.VocabSize))]);
        return [Sequence(7), Sequence(4)];
    }

    /// <summary>SmallConfig's Llama with a mixture of 4 experts, 2 per token, in place of each MLP.</summary>
    public static ModelConfig SmallMoeConfig(MoeConfig? moe = null) =>
        SmallConfig(Architecture.Llama) with { Moe = moe ?? new MoeConfig(Experts: 4, ExpertsPerToken: 2) };

    /// <summary>SmallMoeConfig as Qwen2-MoE routes: the plain softmax's weights, and a shared expert of 60 hidden units, gated (or not, as DeepSeek-MoE's).</summary>
    public static ModelConfig SmallSharedExpertConfig(float capacityFactor = 0, bool gated = true) =>
        SmallMoeConfig(new MoeConfig(4, 2, NormalizeTopK: false, CapacityFactor: capacityFactor, AuxLossCoefficient: 0.05f, SharedExpertHidden: 60, SharedExpertGate: gated));

    /// <summary>Weights with query, key and value biases on a Llama model, as Qwen2 has them (and the output's, as Llama's attention_bias).</summary>
    public static ModelWeights WithAttentionBiases(ModelConfig c, ModelWeights w, int seed, bool output = false)
    {
        var rng = new Random(seed);
        float[] R(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 0.2f)];
        return new ModelWeights
        {
            TokenEmbedding = w.TokenEmbedding, PositionEmbedding = w.PositionEmbedding, FinalNorm = w.FinalNorm, FinalNormBias = w.FinalNormBias, Output = w.Output,
            Layers = [.. w.Layers.Select(l => new LayerWeights
            {
                AttnNorm = l.AttnNorm, AttnNormBias = l.AttnNormBias, Wq = l.Wq, Wk = l.Wk, Wv = l.Wv, Wo = l.Wo,
                Bq = R(c.Dim), Bk = R(c.KvDim), Bv = R(c.KvDim), Bo = output ? R(c.Dim) : l.Bo, FfnNorm = l.FfnNorm, FfnNormBias = l.FfnNormBias,
                W1 = l.W1, W2 = l.W2, W3 = l.W3, B1 = l.B1, B2 = l.B2, Router = l.Router, RouterBias = l.RouterBias,
                SharedW1 = l.SharedW1, SharedW2 = l.SharedW2, SharedW3 = l.SharedW3, SharedExpertGate = l.SharedExpertGate,
            })],
        };
    }

    public static ModelWeights RandomWeights(ModelConfig c, int seed)
    {
        var rng = new Random(seed);
        float[] R(long n, float scale = 0.2f) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale; return a; }
        float[] Ones(long n) { var a = R(n, 0.1f); for (long i = 0; i < n; i++) a[i] += 1; return a; }
        bool gpt2 = c.Architecture == Architecture.Gpt2;
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, E = c.FfnBlocks, Hs = c.Moe?.SharedExpertHidden ?? 0;
        return new ModelWeights
        {
            TokenEmbedding = R(c.VocabSize * C, 1f),
            PositionEmbedding = gpt2 ? R(c.MaxSeqLen * C, 0.5f) : null,
            Layers = Enumerable.Range(0, c.Layers).Select(_ => new LayerWeights
            {
                AttnNorm = Ones(C), Wq = R(C * C), Wk = R(kv * C), Wv = R(kv * C), Wo = R(C * C),
                FfnNorm = Ones(C), W1 = R(E * H * C), W2 = R(E * C * H), W3 = gpt2 ? null : R(E * H * C),
                AttnNormBias = gpt2 ? R(C) : null, FfnNormBias = gpt2 ? R(C) : null,
                Bq = gpt2 ? R(C) : null, Bk = gpt2 ? R(kv) : null, Bv = gpt2 ? R(kv) : null, Bo = gpt2 ? R(C) : null,
                B1 = gpt2 ? R(H) : null, B2 = gpt2 ? R(C) : null, Router = c.Moe is null ? null : R(E * C, 1f),
                RouterBias = c.Moe is { BiasUpdateRate: > 0 } ? new float[E] : null,
                SharedW1 = Hs == 0 ? null : R(Hs * C), SharedW2 = Hs == 0 ? null : R(C * Hs), SharedW3 = Hs == 0 ? null : R(Hs * C),
                SharedExpertGate = c.Moe is { SharedExpertGate: true } ? R(C, 1f) : null,
            }).ToArray(),
            FinalNorm = Ones(C), FinalNormBias = gpt2 ? R(C) : null,
            Output = c.TiedEmbeddings ? null : R(c.VocabSize * C),
        };
    }
}
