// A Hugging Face checkpoint: one model.safetensors (see SafetensorsFile) with config.json (see HfConfigJson) and,
// when present, tokenizer.json beside it. Sharded checkpoints (model-0000N-of-0000M + index) are not read.
//   Llama/Mistral: model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
//     mlp.{gate,up,down}_proj}, model.norm, lm_head (absent or tie_word_embeddings ⇒ tied); all (out, in), RoPE half-split.
//   Mixtral: the same, with block_sparse_moe.{gate, experts.E.{w1, w2, w3}} (router (E, C); gate, down, up) for the MLP.
//   Qwen2-MoE: q/k/v biases, and mlp.{gate, experts.E.{gate,up,down}_proj, shared_expert.{gate,up,down}_proj,
//     shared_expert_gate (1, C)}.
//   GPT-2: [transformer.]{wte, wpe, h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_f}; the Conv1D
//     weights are stored (in, out) and are transposed; c_attn's output columns are q | k | v.
using Cluster.Model.Tokenizers;

namespace Cluster.Model.Formats;

public static class SafetensorsFormat
{
    public const string WeightsFile = "model.safetensors", ConfigFile = "config.json", TokenizerFile = "tokenizer.json";

    /// <summary>Loads a checkpoint from its directory or its .safetensors file; the tokenizer defaults to tokenizer.json beside it.</summary>
    /// <param name="select">Chooses, once config.json is read, which tensors to read (default: all).</param>
    public static LoadedModel Load(string path, string? tokenizerPath = null, Func<ModelConfig, WeightFilter>? select = null)
    {
        string weightsPath = Directory.Exists(path) ? Path.Combine(path, WeightsFile) : path;
        string directory = Path.GetDirectoryName(Path.GetFullPath(weightsPath))!;
        string configPath = Path.Combine(directory, ConfigFile);
        if (!File.Exists(configPath)) throw new ModelFormatException(weightsPath, $"no {ConfigFile} beside the weights");
        var (config, bos, eos) = HfConfigJson.Load(configPath);

        using var file = MappedFile.Open(weightsPath);
        var tensors = new TensorSource(file, SafetensorsFile.Parse(file));
        if (config.Architecture == Architecture.Llama && !tensors.Has("lm_head.weight")) config = config with { TiedEmbeddings = true };
        var filter = select?.Invoke(config) ?? WeightFilter.Everything(config);
        var weights = config.Architecture == Architecture.Llama ? LlamaWeights(tensors, config, filter, weightsPath) : Gpt2Weights(tensors, config, filter, weightsPath);
        weights.Validate(config, weightsPath, filter);

        tokenizerPath ??= Path.Combine(directory, TokenizerFile);
        var tokenizer = File.Exists(tokenizerPath) ? HfTokenizerJson.Load(tokenizerPath, bos, eos) : null;
        if (tokenizer is not null && tokenizer.VocabSize > config.VocabSize)
            throw new ModelFormatException(tokenizerPath, $"tokenizer has {tokenizer.VocabSize} tokens, the embedding has {config.VocabSize} rows");
        return new LoadedModel(config, weights, tokenizer, weightsPath);
    }

    /// <summary>Reads tensors by name, checking their PyTorch shape against what the config implies.</summary>
    private sealed class TensorSource(MappedFile file, Dictionary<string, SafetensorsTensor> tensors)
    {
        public bool Has(string name) => tensors.ContainsKey(name);

        public float[] Read(string name, params long[] shape)
        {
            if (!tensors.TryGetValue(name, out var t)) throw new ModelFormatException(file.Path, "missing", name);
            if (!t.Shape.SequenceEqual(shape))
                throw new ModelFormatException(file.Path, $"shape [{string.Join(", ", t.Shape)}] should be [{string.Join(", ", shape)}]", name);
            return file.ReadTensor(t.Offset, t.Type, t.ElementCount, name);
        }

        public float[]? ReadOptional(string name, params long[] shape) => Has(name) ? Read(name, shape) : null;

        /// <summary>A Conv1D weight stored (rows, cols) = (in, out), returned as (out, in).</summary>
        public float[] ReadTransposed(string name, long rows, long cols) => Transpose(Read(name, rows, cols), (int)rows, (int)cols);
    }

    public static float[] Transpose(float[] a, int rows, int cols)
    {
        var t = new float[a.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                t[(long)c * rows + r] = a[(long)r * cols + c];
        return t;
    }

    private static ModelWeights LlamaWeights(TensorSource t, ModelConfig c, WeightFilter filter, string source)
    {
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize, Hs = c.Moe?.SharedExpertHidden ?? 0;
        // An MoE layer's experts, one tensor each, stacked expert after expert (E·rows, cols) as the engine keeps them:
        // Mixtral's block_sparse_moe.experts.E.{w1, w2, w3} or Qwen2-MoE's mlp.experts.E.{gate, down, up}_proj.
        bool mixtral = c.Moe is not null && t.Has("model.layers.0.block_sparse_moe.gate.weight");
        string moe = mixtral ? "block_sparse_moe." : "mlp.";
        float[] Experts(string layer, string mixtralName, string qwenName, long rows, long cols)
        {
            var stack = new float[c.FfnBlocks * rows * cols];
            for (int e = 0; e < c.FfnBlocks; e++)
                t.Read($"{layer}{moe}experts.{e}.{(mixtral ? mixtralName : qwenName)}.weight", rows, cols).CopyTo(stack, e * rows * cols);
            return stack;
        }
        var layers = new LayerWeights[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            layers[l] = !filter.Layer(l) ? LayerWeights.Skipped : filter.Keep(new LayerWeights
            {
                AttnNorm = t.Read(p + "input_layernorm.weight", C),
                Wq = t.Read(p + "self_attn.q_proj.weight", C, C),
                Wk = t.Read(p + "self_attn.k_proj.weight", kv, C),
                Wv = t.Read(p + "self_attn.v_proj.weight", kv, C),
                Bq = t.ReadOptional(p + "self_attn.q_proj.bias", C),   // Qwen2's query, key and value biases
                Bk = t.ReadOptional(p + "self_attn.k_proj.bias", kv),
                Bv = t.ReadOptional(p + "self_attn.v_proj.bias", kv),
                Wo = t.Read(p + "self_attn.o_proj.weight", C, C),
                Bo = t.ReadOptional(p + "self_attn.o_proj.bias", C),   // Llama's attention_bias
                FfnNorm = t.Read(p + "post_attention_layernorm.weight", C),
                W1 = c.Moe is null ? t.Read(p + "mlp.gate_proj.weight", H, C) : Experts(p, "w1", "gate_proj", H, C),
                W2 = c.Moe is null ? t.Read(p + "mlp.down_proj.weight", C, H) : Experts(p, "w2", "down_proj", C, H),
                W3 = c.Moe is null ? t.Read(p + "mlp.up_proj.weight", H, C) : Experts(p, "w3", "up_proj", H, C),
                Router = c.Moe is null ? null : t.Read(p + moe + "gate.weight", c.Moe.Experts, C),
                RouterBias = c.Moe is null ? null : t.ReadOptional(p + moe + "gate.e_score_correction_bias", c.Moe.Experts),   // DeepSeek-V3's name
                SharedW1 = Hs == 0 ? null : t.Read(p + "mlp.shared_expert.gate_proj.weight", Hs, C),
                SharedW2 = Hs == 0 ? null : t.Read(p + "mlp.shared_expert.down_proj.weight", C, Hs),
                SharedW3 = Hs == 0 ? null : t.Read(p + "mlp.shared_expert.up_proj.weight", Hs, C),
                SharedExpertGate = c.Moe is { SharedExpertGate: true } ? t.Read(p + "mlp.shared_expert_gate.weight", 1, C) : null,
            }, c, l, source);
        }
        return new ModelWeights
        {
            TokenEmbedding = filter.TokenEmbedding(c) ? t.Read("model.embed_tokens.weight", V, C) : [],
            Layers = layers,
            FinalNorm = t.Read("model.norm.weight", C),
            Output = filter.Head(c) ? t.Read("lm_head.weight", V, C) : null,
        };
    }

    private static ModelWeights Gpt2Weights(TensorSource t, ModelConfig c, WeightFilter filter, string source)
    {
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize;
        string root = t.Has("transformer.wte.weight") ? "transformer." : "";
        var layers = new LayerWeights[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"{root}h.{l}.";
            if (!filter.Layer(l))
            {
                layers[l] = LayerWeights.Skipped;
                continue;
            }
            var qkv = t.ReadTransposed(p + "attn.c_attn.weight", C, C + 2 * kv);   // → (C + 2kv, C)
            var qkvBias = t.Read(p + "attn.c_attn.bias", C + 2 * kv);
            layers[l] = filter.Keep(new LayerWeights
            {
                AttnNorm = t.Read(p + "ln_1.weight", C),
                AttnNormBias = t.Read(p + "ln_1.bias", C),
                Wq = qkv[..(int)(C * C)],
                Wk = qkv[(int)(C * C)..(int)((C + kv) * C)],
                Wv = qkv[(int)((C + kv) * C)..],
                Bq = qkvBias[..(int)C],
                Bk = qkvBias[(int)C..(int)(C + kv)],
                Bv = qkvBias[(int)(C + kv)..],
                Wo = t.ReadTransposed(p + "attn.c_proj.weight", C, C),
                Bo = t.Read(p + "attn.c_proj.bias", C),
                FfnNorm = t.Read(p + "ln_2.weight", C),
                FfnNormBias = t.Read(p + "ln_2.bias", C),
                W1 = t.ReadTransposed(p + "mlp.c_fc.weight", C, H),
                B1 = t.Read(p + "mlp.c_fc.bias", H),
                W2 = t.ReadTransposed(p + "mlp.c_proj.weight", H, C),
                B2 = t.Read(p + "mlp.c_proj.bias", C),
            }, c, l, source);
        }
        return new ModelWeights
        {
            TokenEmbedding = filter.TokenEmbedding(c) ? t.Read(root + "wte.weight", V, C) : [],
            PositionEmbedding = filter.Embedding ? t.Read(root + "wpe.weight", c.MaxSeqLen, C) : null,
            Layers = layers,
            FinalNorm = t.Read(root + "ln_f.weight", C),
            FinalNormBias = t.Read(root + "ln_f.bias", C),
            Output = filter.Head(c) ? t.Read("lm_head.weight", V, C) : null,
        };
    }
}
