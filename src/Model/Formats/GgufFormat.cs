// Interprets a GGUF file (see GgufFile) as a model. Architectures:
//   llama: token_embd (V, C); blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down};
//          Mixtral-style MoE (llama.expert_count, llama.expert_used_count): ffn_gate_inp (E, C) and ffn_{gate,up,down}_exps (E, H, C) / (E, C, H),
//          and where trained with aux-loss-free balancing exp_probs_b (E,); optional attn_{q,k,v}.bias
//   qwen2moe: the llama tensors (Q/K rows half-split, RoPE NEOX) with ffn_gate_inp_shexp (C,) and ffn_{gate,up,down}_shexp,
//          qwen2moe.expert_feed_forward_length and expert_shared_feed_forward_length
//          output_norm; output (absent ⇒ tied). llama.cpp's converter stores Q/K rows in interleaved RoPE order.
//   gpt2:  token_embd, position_embd; blk.N.{attn_norm, attn_qkv (fused q|k|v rows), attn_output, ffn_norm, ffn_up, ffn_down}
//          each with .weight and .bias; output_norm (+bias); output (absent ⇒ tied).
// Tokenizers: tokenizer.ggml.model "llama" (SentencePiece pieces with "▁" for space, scores) or "gpt2" (byte-level BPE + merges).
using System.Text;
using Cluster.Model.Tokenizers;

using Cluster.Compute;

namespace Cluster.Model.Formats;

public static class GgufFormat
{
    /// <param name="select">Chooses, once the metadata is read, which tensors to read (default: all).</param>
    public static LoadedModel Load(string path, Func<ModelConfig, WeightFilter>? select = null)
    {
        using var file = MappedFile.Open(path);
        var gguf = GgufFile.Parse(file);
        string arch = gguf.String("general.architecture");
        var config = arch switch
        {
            "llama" or "qwen2moe" => LlamaConfig(gguf, arch),
            "gpt2" => Gpt2Config(gguf),
            _ => throw new ModelFormatException(path, $"architecture '{arch}' is not supported (llama, qwen2moe and gpt2 are)"),
        };
        config.Validate(path);
        var tensors = new TensorSource(file, gguf);
        var filter = select?.Invoke(config) ?? WeightFilter.Everything(config);
        var weights = config.Architecture == Architecture.Llama ? LlamaWeights(tensors, config, filter, path) : Gpt2Weights(tensors, config, filter, path);
        weights.Validate(config, path, filter);
        return new LoadedModel(config, weights, ReadTokenizer(gguf, config), path, StoredFormat(gguf));
    }

    /// <summary>
    /// The format to serve the layer matrices in (2-D and up, rows of whole 32-element blocks, the MoE router aside):
    /// Q8_0 or Q4_0 when every one is stored in it (multiplied as stored); Q8_0 when every one is quantized otherwise
    /// (K-quants such as a Q4_K_M download, or a mixture: the nearest format with a kernel here, re-quantized from the
    /// decoded values); F32 when any is stored as a float type.
    /// </summary>
    private static WeightFormat StoredFormat(GgufFile g)
    {
        var types = g.Tensors.Values
            .Where(t => t.Name.StartsWith("blk.", StringComparison.Ordinal) && t.Dims.Length >= 2 && t.Dims[0] % BlockQuantizer.Block == 0 && !t.Name.Contains("gate_inp"))
            .Select(t => t.Type).Distinct().ToArray();
        return types switch
        {
            [TensorType.Q8_0] => WeightFormat.Q8_0,
            [TensorType.Q4_0] => WeightFormat.Q4_0,
            _ when types.Length > 0 && types.All(t => TensorCodec.BlockSize(t) > 1) => WeightFormat.Q8_0,
            _ => WeightFormat.F32,
        };
    }

    /// <summary>
    /// llama (Mixtral's MoE: llama.cpp renormalizes the chosen experts' weights) or qwen2moe (every layer an MoE of
    /// expert_feed_forward_length experts, weighted by the plain softmax, beside a shared expert gated by σ(x·g); RoPE
    /// NEOX, so its Q/K rows are half-split as Hugging Face stores them).
    /// </summary>
    private static ModelConfig LlamaConfig(GgufFile g, string arch)
    {
        string Key(string name) => $"{arch}.{name}";
        bool qwen = arch == "qwen2moe";
        RefuseWhatChangesTheMath(g, arch);
        int heads = g.Int(Key("attention.head_count"), 1, 1 << 16);
        int dim = g.Int(Key("embedding_length"), 1, 1 << 20);
        int context = g.Int(Key("context_length"), 1, 1 << 22);
        // A sliding window: within that many positions attention is full attention, so the context is cut to it.
        if (g.Has(Key("attention.sliding_window")) && g.Int(Key("attention.sliding_window"), 1, int.MaxValue) is var window && window < context) context = window;
        int rotary = g.Int(Key("rope.dimension_count"), 0, 1 << 20, fallback: 0);
        int experts = g.Int(Key("expert_count"), qwen ? 2 : 0, MoeConfig.MaxExperts, fallback: 0);
        int feedForward = g.Int(Key("feed_forward_length"), 1, 1 << 22);
        int used = experts == 0 ? 0 : g.Int(Key("expert_used_count"), 1, experts);
        return new ModelConfig
        {
            Architecture = Architecture.Llama,
            Dim = dim,
            HiddenDim = qwen ? g.Int(Key("expert_feed_forward_length"), 1, 1 << 22) : feedForward,
            Layers = g.Int(Key("block_count"), 1, 1024),
            Heads = heads,
            KvHeads = g.Int(Key("attention.head_count_kv"), 1, 1 << 16, fallback: heads),
            VocabSize = VocabFromEmbedding(g),
            MaxSeqLen = context,
            NormEps = g.Float(Key("attention.layer_norm_rms_epsilon"), 1e-5f),
            RopeTheta = g.Float(Key("rope.freq_base"), 10000f),
            RopeLayout = qwen ? Compute.RopeLayout.HalfSplit : Compute.RopeLayout.Interleaved,
            RotaryDim = rotary == dim / heads ? 0 : rotary,
            TiedEmbeddings = !g.Tensors.ContainsKey("output.weight"),
            Moe = experts == 0 ? null
                : qwen ? new MoeConfig(experts, used, NormalizeTopK: false,
                    SharedExpertHidden: g.Int(Key("expert_shared_feed_forward_length"), 1, 1 << 22, fallback: feedForward), SharedExpertGate: true)
                : new MoeConfig(experts, used),
        };
    }

    /// <summary>
    /// Metadata and tensors llama.cpp reads that would change the math and that this engine does not model: refused by
    /// name rather than ignored (RoPE scaling and Llama 3.1's frequency factors, logit soft-capping, head sizes other
    /// than dim/heads, scaled or sigmoid-gated experts, dense layers before the MoE ones).
    /// </summary>
    private static void RefuseWhatChangesTheMath(GgufFile g, string arch)
    {
        void Refuse(string what) => throw new ModelFormatException(g.Path, $"{what} is not supported");
        string Key(string name) => $"{arch}.{name}";
        if (g.Tensors.ContainsKey("rope_freqs.weight")) Refuse("rope_freqs.weight (Llama 3.1's RoPE frequency factors)");
        if (g.Has(Key("rope.scaling.type")) && g.String(Key("rope.scaling.type")) != "none") Refuse($"{Key("rope.scaling.type")} '{g.String(Key("rope.scaling.type"))}'");
        foreach (string factor in new[] { "rope.scaling.factor", "rope.scale_linear" })
            if (g.Has(Key(factor)) && g.Float(Key(factor), 1f) is not (0f or 1f)) Refuse($"{Key(factor)} = {g.Float(Key(factor), 1f)}");
        foreach (string softcap in new[] { "attn_logit_softcapping", "final_logit_softcapping" })
            if (g.Has(Key(softcap))) Refuse(Key(softcap));
        int heads = g.Int(Key("attention.head_count"), 1, 1 << 16), dim = g.Int(Key("embedding_length"), 1, 1 << 20);
        foreach (string length in new[] { "attention.key_length", "attention.value_length" })
            if (g.Has(Key(length)) && g.Int(Key(length), 0, 1 << 20) != dim / heads) Refuse($"{Key(length)} other than embedding_length / head_count");
        if (g.Has(Key("expert_weights_scale")) && g.Float(Key("expert_weights_scale"), 1f) is not (0f or 1f)) Refuse(Key("expert_weights_scale"));
        if (g.Has(Key("expert_gating_func")) && g.Int(Key("expert_gating_func"), 0, 16) is not (0 or 1)) Refuse($"{Key("expert_gating_func")} other than softmax");
        if (g.Has(Key("leading_dense_block_count")) && g.Int(Key("leading_dense_block_count"), 0, 1 << 16) > 0) Refuse(Key("leading_dense_block_count"));
    }

    private static ModelConfig Gpt2Config(GgufFile g)
    {
        int heads = g.Int("gpt2.attention.head_count", 1, 1 << 16);
        return new ModelConfig
        {
            Architecture = Architecture.Gpt2,
            Dim = g.Int("gpt2.embedding_length", 1, 1 << 20),
            HiddenDim = g.Int("gpt2.feed_forward_length", 1, 1 << 22),
            Layers = g.Int("gpt2.block_count", 1, 1024),
            Heads = heads,
            KvHeads = heads,
            VocabSize = VocabFromEmbedding(g),
            MaxSeqLen = g.Int("gpt2.context_length", 1, 1 << 22),
            NormEps = g.Float("gpt2.attention.layer_norm_epsilon", 1e-5f),
            TiedEmbeddings = !g.Tensors.ContainsKey("output.weight"),
        };
    }

    private static int VocabFromEmbedding(GgufFile g)
    {
        if (!g.Tensors.TryGetValue("token_embd.weight", out var emb) || emb.Dims.Length != 2)
            throw new ModelFormatException(g.Path, "missing or not a matrix", "token_embd.weight");
        return (int)emb.Dims[1];
    }

    /// <summary>Reads tensors by name, checking their GGML shape (innermost first) against what the config implies.</summary>
    private sealed class TensorSource(MappedFile file, GgufFile gguf)
    {
        public float[] Read(string name, params long[] ne)
        {
            if (!gguf.Tensors.TryGetValue(name, out var t)) throw new ModelFormatException(file.Path, "missing", name);
            if (!t.Dims.SequenceEqual(ne))
                throw new ModelFormatException(file.Path, $"shape [{string.Join(", ", t.Dims)}] should be [{string.Join(", ", ne)}]", name);
            return file.ReadTensor(t.Offset, t.Type, t.ElementCount, name);
        }

        public float[]? ReadOptional(string name, params long[] ne) => gguf.Tensors.ContainsKey(name) ? Read(name, ne) : null;
    }

    private static ModelWeights LlamaWeights(TensorSource t, ModelConfig c, WeightFilter filter, string source)
    {
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize, E = c.FfnBlocks, Hs = c.Moe?.SharedExpertHidden ?? 0;
        var layers = new LayerWeights[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            bool moe = c.Moe is not null;
            layers[l] = !filter.Layer(l) ? LayerWeights.Skipped : filter.Keep(new LayerWeights
            {
                AttnNorm = t.Read(p + "attn_norm.weight", C),
                Wq = t.Read(p + "attn_q.weight", C, C),
                Wk = t.Read(p + "attn_k.weight", C, kv),
                Wv = t.Read(p + "attn_v.weight", C, kv),
                Bq = t.ReadOptional(p + "attn_q.bias", C),   // Qwen2-style attention biases, where the file has them
                Bk = t.ReadOptional(p + "attn_k.bias", kv),
                Bv = t.ReadOptional(p + "attn_v.bias", kv),
                Wo = t.Read(p + "attn_output.weight", C, C),
                Bo = t.ReadOptional(p + "attn_output.bias", C),
                FfnNorm = t.Read(p + "ffn_norm.weight", C),
                // An MoE layer's experts are 3-D tensors, expert outermost: (E, H, C) is ne [C, H, E], as our stacks lie.
                W1 = moe ? t.Read(p + "ffn_gate_exps.weight", C, H, E) : t.Read(p + "ffn_gate.weight", C, H),
                W2 = moe ? t.Read(p + "ffn_down_exps.weight", H, C, E) : t.Read(p + "ffn_down.weight", H, C),
                W3 = moe ? t.Read(p + "ffn_up_exps.weight", C, H, E) : t.Read(p + "ffn_up.weight", C, H),
                Router = moe ? t.Read(p + "ffn_gate_inp.weight", C, E) : null,
                RouterBias = moe ? t.ReadOptional(p + "exp_probs_b.bias", E) : null,   // llama.cpp's name (DeepSeek-V3's expert-choice bias)
                SharedExpertGate = Hs == 0 ? null : t.Read(p + "ffn_gate_inp_shexp.weight", C),   // qwen2moe's shared expert
                SharedW1 = Hs == 0 ? null : t.Read(p + "ffn_gate_shexp.weight", C, Hs),
                SharedW2 = Hs == 0 ? null : t.Read(p + "ffn_down_shexp.weight", Hs, C),
                SharedW3 = Hs == 0 ? null : t.Read(p + "ffn_up_shexp.weight", C, Hs),
            }, c, l, source);
        }
        return new ModelWeights
        {
            TokenEmbedding = filter.TokenEmbedding(c) ? t.Read("token_embd.weight", C, V) : [],
            Layers = layers,
            FinalNorm = t.Read("output_norm.weight", C),
            Output = filter.Head(c) ? t.ReadOptional("output.weight", C, V) : null,
        };
    }

    private static ModelWeights Gpt2Weights(TensorSource t, ModelConfig c, WeightFilter filter, string source)
    {
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize;
        var layers = new LayerWeights[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            if (!filter.Layer(l))
            {
                layers[l] = LayerWeights.Skipped;
                continue;
            }
            var qkv = t.Read(p + "attn_qkv.weight", C, C + 2 * kv);   // (C + 2kv, C)
            var qkvBias = t.Read(p + "attn_qkv.bias", C + 2 * kv);
            layers[l] = filter.Keep(new LayerWeights
            {
                AttnNorm = t.Read(p + "attn_norm.weight", C),
                AttnNormBias = t.Read(p + "attn_norm.bias", C),
                Wq = qkv[..(int)(C * C)],
                Wk = qkv[(int)(C * C)..(int)((C + kv) * C)],
                Wv = qkv[(int)((C + kv) * C)..],
                Bq = qkvBias[..(int)C],
                Bk = qkvBias[(int)C..(int)(C + kv)],
                Bv = qkvBias[(int)(C + kv)..],
                Wo = t.Read(p + "attn_output.weight", C, C),
                Bo = t.Read(p + "attn_output.bias", C),
                FfnNorm = t.Read(p + "ffn_norm.weight", C),
                FfnNormBias = t.Read(p + "ffn_norm.bias", C),
                W1 = t.Read(p + "ffn_up.weight", C, H),
                B1 = t.Read(p + "ffn_up.bias", H),
                W2 = t.Read(p + "ffn_down.weight", H, C),
                B2 = t.Read(p + "ffn_down.bias", C),
            }, c, l, source);
        }
        return new ModelWeights
        {
            TokenEmbedding = filter.TokenEmbedding(c) ? t.Read("token_embd.weight", C, V) : [],
            PositionEmbedding = filter.Embedding ? t.Read("position_embd.weight", C, c.MaxSeqLen) : null,
            Layers = layers,
            FinalNorm = t.Read("output_norm.weight", C),
            FinalNormBias = t.Read("output_norm.bias", C),
            Output = filter.Head(c) ? t.ReadOptional("output.weight", C, V) : null,
        };
    }

    private static ITokenizer? ReadTokenizer(GgufFile g, ModelConfig config)
    {
        if (!g.Has("tokenizer.ggml.model")) return null;
        string model = g.String("tokenizer.ggml.model");
        var tokens = g.Array<string>("tokenizer.ggml.tokens");
        if (tokens.Length == 0 || tokens.Length > config.VocabSize)
            throw new ModelFormatException(g.Path, $"tokenizer has {tokens.Length} tokens, the embedding has {config.VocabSize} rows");
        int bos = g.Int("tokenizer.ggml.bos_token_id", 0, tokens.Length - 1, fallback: 1);
        int eos = g.Int("tokenizer.ggml.eos_token_id", 0, tokens.Length - 1, fallback: 2);
        switch (model)
        {
            case "llama":
                var scores = g.Array<float>("tokenizer.ggml.scores");
                if (scores.Length != tokens.Length)
                    throw new ModelFormatException(g.Path, $"{tokens.Length} tokens but {scores.Length} scores");
                var pieces = tokens.Select(t => Encoding.UTF8.GetBytes(t.Replace('\u2581', ' '))).ToArray();
                return new SentencePieceBpeTokenizer(pieces, scores, bos, eos, g.Path);
            case "gpt2":
                var vocabulary = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
                for (int i = 0; i < tokens.Length; i++)
                    if (!vocabulary.TryAdd(tokens[i], i)) throw new ModelFormatException(g.Path, $"token '{tokens[i]}' appears twice in the vocabulary");
                return new ByteLevelBpeTokenizer(vocabulary, g.Array<string>("tokenizer.ggml.merges"), bos, eos, g.Path);
            default:
                throw new ModelFormatException(g.Path, $"unsupported tokenizer '{model}' (llama and gpt2 are supported)");
        }
    }
}
