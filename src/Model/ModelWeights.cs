// Host-side weights of a decoder, in the engine's canonical layout: every matrix row-major (out, in),
// RoPE pairs in the config's layout. Loaders produce this; TransformerModel uploads it to a device.
namespace Cluster.Model;

public sealed class LayerWeights
{
    public required float[] AttnNorm { get; init; }        // (C,)
    public float[]? AttnNormBias { get; init; }            // (C,) GPT-2
    public required float[] Wq { get; init; }              // (C, C)
    public required float[] Wk { get; init; }              // (kvDim, C)
    public required float[] Wv { get; init; }              // (kvDim, C)
    public required float[] Wo { get; init; }              // (C, C)
    public float[]? Bq { get; init; }                      // (C,) GPT-2
    public float[]? Bk { get; init; }                      // (kvDim,) GPT-2
    public float[]? Bv { get; init; }                      // (kvDim,) GPT-2
    public float[]? Bo { get; init; }                      // (C,) GPT-2
    public required float[] FfnNorm { get; init; }         // (C,)
    public float[]? FfnNormBias { get; init; }             // (C,) GPT-2
    /// <summary>Llama: gate projection w1; GPT-2: c_fc. An MoE layer's E experts stacked: (E·H, C), expert e's rows [e·H, (e+1)·H).</summary>
    public required float[] W1 { get; init; }              // (H, C)
    /// <summary>Down projection (Llama w2, GPT-2 c_proj of the MLP). MoE: (E·C, H), expert e's rows [e·C, (e+1)·C).</summary>
    public required float[] W2 { get; init; }              // (C, H)
    /// <summary>Llama only: up projection w3 (MoE: stacked as W1).</summary>
    public float[]? W3 { get; init; }                      // (H, C)
    /// <summary>MoE only: the router's weights, one row of logits per expert.</summary>
    public float[]? Router { get; init; }                  // (E, C)
    /// <summary>MoE only, optional: added to the router's logits to choose the experts, not to weigh them (aux-loss-free balancing).</summary>
    public float[]? RouterBias { get; init; }              // (E,)
    public float[]? B1 { get; init; }                      // (H,) GPT-2
    public float[]? B2 { get; init; }                      // (C,) GPT-2
    /// <summary>MoE with a shared expert (MoeConfig.SharedExpertHidden Hs): its gate, up and down projections.</summary>
    public float[]? SharedW1 { get; init; }                // (Hs, C)
    public float[]? SharedW2 { get; init; }                // (C, Hs)
    public float[]? SharedW3 { get; init; }                // (Hs, C)
    /// <summary>MoE, MoeConfig.SharedExpertGate: the shared expert's output is scaled by σ(x·g).</summary>
    public float[]? SharedExpertGate { get; init; }        // (C,)

    /// <summary>Every tensor this layer has (the architecture's optional ones only when present).</summary>
    public IEnumerable<float[]> Tensors() =>
        new[] { AttnNorm, AttnNormBias, Wq, Wk, Wv, Wo, Bq, Bk, Bv, Bo, FfnNorm, FfnNormBias, W1, W2, W3, B1, B2, Router, RouterBias,
            SharedW1, SharedW2, SharedW3, SharedExpertGate }.OfType<float[]>();

    /// <summary>Host memory of its tensors.</summary>
    public long Bytes => Tensors().Sum(t => (long)t.Length * sizeof(float));

    /// <summary>Throws <see cref="ModelFormatException"/> naming the first tensor of layer <paramref name="l"/> whose size or presence disagrees with the config.</summary>
    public void Validate(ModelConfig c, int l, string source)
    {
        void Check(float[]? t, long expected, string name, bool required = true) => ModelWeights.CheckTensor(t, expected, source, $"layers.{l}.{name}", required);
        bool gpt2 = c.Architecture == Architecture.Gpt2;
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, E = c.FfnBlocks;
        Check(AttnNorm, C, "attn_norm");
        Check(Wq, C * C, "wq");
        Check(Wk, kv * C, "wk");
        Check(Wv, kv * C, "wv");
        Check(Wo, C * C, "wo");
        Check(FfnNorm, C, "ffn_norm");
        Check(W1, E * H * C, "w1");
        Check(W2, E * C * H, "w2");
        Check(W3, E * H * C, "w3", !gpt2);
        Check(Router, c.Moe is null ? 0 : E * C, "router", c.Moe is not null);   // a dense layer has none
        Check(RouterBias, c.Moe is null ? 0 : E, "router_bias", c.Moe is { BiasUpdateRate: > 0 });
        long Hs = c.Moe?.SharedExpertHidden ?? 0;
        Check(SharedW1, Hs * C, "shared_w1", Hs > 0);
        Check(SharedW2, C * Hs, "shared_w2", Hs > 0);
        Check(SharedW3, Hs * C, "shared_w3", Hs > 0);
        Check(SharedExpertGate, c.Moe is { SharedExpertGate: true } ? C : 0, "shared_gate", c.Moe is { SharedExpertGate: true });
        Check(AttnNormBias, C, "attn_norm.bias", gpt2);
        Check(FfnNormBias, C, "ffn_norm.bias", gpt2);
        Check(Bq, C, "bq", gpt2);
        Check(Bk, kv, "bk", gpt2);
        Check(Bv, kv, "bv", gpt2);
        Check(Bo, C, "bo", gpt2);
        Check(B1, H, "b1", gpt2);
        Check(B2, C, "b2", gpt2);
    }

    /// <summary>A layer a WeightFilter left out: every tensor empty.</summary>
    public static LayerWeights Skipped { get; } = new() { AttnNorm = [], Wq = [], Wk = [], Wv = [], Wo = [], FfnNorm = [], W1 = [], W2 = [] };
}

public sealed class ModelWeights
{
    public required float[] TokenEmbedding { get; init; }  // (V, C)
    public float[]? PositionEmbedding { get; init; }       // (maxT, C) GPT-2
    public required LayerWeights[] Layers { get; init; }
    public required float[] FinalNorm { get; init; }       // (C,)
    public float[]? FinalNormBias { get; init; }           // (C,) GPT-2
    /// <summary>The LM head (V, C); null when tied to the token embedding.</summary>
    public float[]? Output { get; init; }

    /// <summary>
    /// Throws <see cref="ModelFormatException"/> naming the first tensor whose size or presence disagrees with the config;
    /// with a <paramref name="filter"/>, only the tensors it selects are checked.
    /// </summary>
    public void Validate(ModelConfig c, string source, WeightFilter? filter = null)
    {
        filter ??= WeightFilter.Everything(c);
        void Check(float[]? t, long expected, string name, bool required = true) => CheckTensor(t, expected, source, name, required);
        bool gpt2 = c.Architecture == Architecture.Gpt2;
        long C = c.Dim;
        if (filter.TokenEmbedding(c)) Check(TokenEmbedding, c.VocabSize * C, "token_embedding");
        if (filter.Embedding) Check(PositionEmbedding, (long)c.MaxSeqLen * C, "position_embedding", gpt2);
        if (Layers.Length != c.Layers) throw new ModelFormatException(source, $"has {Layers.Length} layers, config says {c.Layers}");
        if (filter.CutLayer is null)   // a cut layer was checked whole, as it was read (WeightFilter.Keep)
            for (int l = 0; l < Layers.Length; l++)
                if (filter.Layer(l)) Layers[l].Validate(c, l, source);
        Check(FinalNorm, C, "final_norm");
        Check(FinalNormBias, C, "final_norm.bias", gpt2);
        if (filter.Output) Check(Output, c.VocabSize * C, "output", !c.TiedEmbeddings);
    }

    /// <summary>Throws <see cref="ModelFormatException"/> unless <paramref name="t"/> holds <paramref name="expected"/> elements (or is absent and not required).</summary>
    internal static void CheckTensor(float[]? t, long expected, string source, string name, bool required = true)
    {
        if (t is null)
        {
            if (required) throw new ModelFormatException(source, "missing", name);
            return;
        }
        if (t.LongLength != expected)
            throw new ModelFormatException(source, $"has {t.LongLength} elements, config needs {expected}", name);
    }
}
