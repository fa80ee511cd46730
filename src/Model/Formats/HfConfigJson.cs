// Hugging Face config.json ↔ ModelConfig for LlamaForCausalLM / MistralForCausalLM (attention_bias: all four biases, in
// the weights), MixtralForCausalLM, Qwen2ForCausalLM (q/k/v biases), Qwen2MoeForCausalLM and GPT2LMHeadModel.
// Llama keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
// vocab_size, max_position_embeddings, rms_norm_eps, rope_theta, tie_word_embeddings (HF Llama RoPE is half-split);
// Mixtral adds num_local_experts, num_experts_per_tok and router_aux_loss_coef (its top-k weights are renormalized);
// Qwen2-MoE num_experts, num_experts_per_tok, norm_topk_prob, moe_intermediate_size and shared_expert_intermediate_size.
// GPT-2 keys: n_embd, n_inner (null = 4·n_embd), n_layer, n_head, n_positions, vocab_size, layer_norm_epsilon.
// RoPE scaling and explicit head_dim ≠ hidden/heads are not modelled by ModelConfig and are rejected; Mistral's
// sliding_window cuts the context to the window (where attention is still full attention).
using System.Text.Json;

namespace Cluster.Model.Formats;

public static class HfConfigJson
{
    public sealed record Result(ModelConfig Config, int? BosId, int? EosId);

    public static Result Load(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ModelFormatException(path, "cannot read config: " + e.Message, inner: e); }
        JsonDocument json;
        try { json = JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw new ModelFormatException(path, "not valid JSON: " + e.Message, inner: e); }
        using (json)
        try
        {
            var root = json.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, "config is not a JSON object");
            var keys = new Keys(root, path);
            string arch = root.TryGetProperty("architectures", out var a) && a.ValueKind == JsonValueKind.Array && a.GetArrayLength() > 0
                && a[0].ValueKind == JsonValueKind.String ? a[0].GetString()! : keys.String("model_type");
            var config = arch switch
            {
                "LlamaForCausalLM" or "MistralForCausalLM" or "llama" or "mistral" => Llama(keys),
                "Qwen2ForCausalLM" or "qwen2" => Qwen2(keys),
                "MixtralForCausalLM" or "mixtral" => Llama(keys) with
                {
                    Moe = new MoeConfig(keys.Int("num_local_experts"), keys.Int("num_experts_per_tok"),
                        AuxLossCoefficient: keys.Float("router_aux_loss_coef", 0.001f)),
                },
                "Qwen2MoeForCausalLM" or "qwen2_moe" => Qwen2Moe(keys),
                "GPT2LMHeadModel" or "gpt2" => Gpt2(keys),
                _ => throw new ModelFormatException(path, $"architecture '{arch}' is not supported (LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen2MoeForCausalLM, GPT2LMHeadModel are)"),
            };
            config.Validate(path);
            return new Result(config, keys.OptionalId("bos_token_id"), keys.OptionalId("eos_token_id"));
        }
        catch (InvalidOperationException e)   // a JSON string that is not valid UTF-8
        {
            throw new ModelFormatException(path, "not valid JSON: " + e.Message, inner: e);
        }
    }

    private static ModelConfig Llama(Keys k)
    {
        if (k.Has("rope_scaling")) throw new ModelFormatException(k.Path, "rope_scaling is not supported");
        if (k.Bool("mlp_bias", false)) throw new ModelFormatException(k.Path, "mlp_bias (biases on the MLP's projections) is not supported");
        if (k.Has("hidden_act") && k.String("hidden_act") != "silu") throw new ModelFormatException(k.Path, $"hidden_act '{k.String("hidden_act")}' is not supported (the Llama family's MLP is SwiGLU: silu)");
        if (k.Has("partial_rotary_factor") && k.Float("partial_rotary_factor", 1f) != 1f) throw new ModelFormatException(k.Path, "partial_rotary_factor other than 1 is not supported");
        int dim = k.Int("hidden_size"), heads = k.Int("num_attention_heads"), context = k.Int("max_position_embeddings");
        // Mistral's sliding window (where no use_sliding_window turns it off, as Qwen2's does): attention sees the last
        // sliding_window positions only. Within that many positions it is full attention, so the context is cut to it and
        // the math stays exact.
        if (k.Has("sliding_window") && !k.Has("use_sliding_window") && k.Int("sliding_window") is > 0 and var window && window < context) context = window;
        if (k.Has("head_dim") && k.Int("head_dim") * heads != dim) throw new ModelFormatException(k.Path, "head_dim other than hidden_size / num_attention_heads is not supported");
        return new ModelConfig
        {
            Architecture = Architecture.Llama,
            Dim = dim,
            HiddenDim = k.Int("intermediate_size"),
            Layers = k.Int("num_hidden_layers"),
            Heads = heads,
            KvHeads = k.Has("num_key_value_heads") ? k.Int("num_key_value_heads") : heads,
            VocabSize = k.Int("vocab_size"),
            MaxSeqLen = context,
            NormEps = k.Float("rms_norm_eps", 1e-6f),
            RopeTheta = k.Float("rope_theta", 10000f),
            RopeLayout = Compute.RopeLayout.HalfSplit,
            TiedEmbeddings = k.Bool("tie_word_embeddings", false),
        };
    }

    /// <summary>Qwen2: the Llama keys, with q/k/v biases (in the weights); a sliding window is refused.</summary>
    private static ModelConfig Qwen2(Keys k)
    {
        if (k.Bool("use_sliding_window", false)) throw new ModelFormatException(k.Path, "sliding-window attention (use_sliding_window) is not supported");
        return Llama(k);
    }

    /// <summary>
    /// Qwen2-MoE (Qwen1.5-MoE): every layer an MoE of num_experts experts of moe_intermediate_size, top num_experts_per_tok
    /// weighted by the plain softmax unless norm_topk_prob, beside a shared expert of shared_expert_intermediate_size
    /// gated by σ(x·g). Anything that would change the math and is not modelled is refused: sliding windows, dense
    /// layers among the MoE ones (decoder_sparse_step, mlp_only_layers).
    /// </summary>
    private static ModelConfig Qwen2Moe(Keys k)
    {
        if (k.Bool("use_sliding_window", false)) throw new ModelFormatException(k.Path, "sliding-window attention (use_sliding_window) is not supported");
        if (k.Has("decoder_sparse_step") && k.Int("decoder_sparse_step") != 1)
            throw new ModelFormatException(k.Path, "decoder_sparse_step other than 1 (dense layers among the MoE layers) is not supported");
        if (k.ArrayLength("mlp_only_layers") > 0) throw new ModelFormatException(k.Path, "mlp_only_layers (dense layers among the MoE layers) is not supported");
        int shared = k.Has("shared_expert_intermediate_size") ? k.Int("shared_expert_intermediate_size") : 0;
        return Llama(k) with
        {
            HiddenDim = k.Int("moe_intermediate_size"),
            Moe = new MoeConfig(k.Int("num_experts"), k.Int("num_experts_per_tok"), NormalizeTopK: k.Bool("norm_topk_prob", false),
                AuxLossCoefficient: k.Float("router_aux_loss_coef", 0.001f), SharedExpertHidden: shared, SharedExpertGate: shared > 0),
        };
    }

    private static ModelConfig Gpt2(Keys k)
    {
        // The engine's GELU is GPT-2's tanh approximation, and its attention is scaled by 1/√d only.
        if (k.Has("activation_function") && k.String("activation_function") is not ("gelu_new" or "gelu_pytorch_tanh"))
            throw new ModelFormatException(k.Path, $"activation_function '{k.String("activation_function")}' is not supported (GPT-2's tanh-approximated gelu_new is)");
        if (!k.Bool("scale_attn_weights", true) || k.Bool("scale_attn_by_inverse_layer_idx", false))
            throw new ModelFormatException(k.Path, "attention scaled other than by 1/√(head dim) (scale_attn_weights, scale_attn_by_inverse_layer_idx) is not supported");
        int dim = k.Int("n_embd"), heads = k.Int("n_head");
        return new ModelConfig
        {
            Architecture = Architecture.Gpt2,
            Dim = dim,
            HiddenDim = k.Has("n_inner") ? k.Int("n_inner") : 4 * dim,
            Layers = k.Int("n_layer"),
            Heads = heads,
            KvHeads = heads,
            VocabSize = k.Int("vocab_size"),
            MaxSeqLen = k.Int("n_positions"),
            NormEps = k.Float("layer_norm_epsilon", 1e-5f),
            TiedEmbeddings = k.Bool("tie_word_embeddings", true),
        };
    }

    /// <summary>Which attention biases a Llama-family model's layers have: the config says so (Qwen2 has q/k/v's, Llama's attention_bias all four).</summary>
    public enum AttentionBiases { None, QueryKeyValue, All }

    /// <summary>Writes the config.json that <see cref="Load"/> reads (and transformers accepts).</summary>
    public static void Write(ModelConfig c, string path, int bosId, int eosId, AttentionBiases biases = AttentionBiases.None)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        bool llama = c.Architecture == Architecture.Llama;
        bool qwen = c.Moe is { SharedExpertHidden: > 0 };   // a shared expert: Qwen2-MoE, else Mixtral
        bool qwen2 = c.Moe is null && biases == AttentionBiases.QueryKeyValue;   // a dense model with Qwen2's biases
        if (c.Moe is not null && (biases == AttentionBiases.All || !qwen && biases != AttentionBiases.None))
            throw new ArgumentException("Mixtral has no attention biases and Qwen2-MoE no output bias: this model's biases have no Hugging Face architecture here", nameof(biases));
        w.WriteStartArray("architectures");
        w.WriteStringValue(qwen ? "Qwen2MoeForCausalLM" : c.Moe is not null ? "MixtralForCausalLM" : qwen2 ? "Qwen2ForCausalLM" : llama ? "LlamaForCausalLM" : "GPT2LMHeadModel");
        w.WriteEndArray();
        w.WriteString("model_type", qwen ? "qwen2_moe" : c.Moe is not null ? "mixtral" : qwen2 ? "qwen2" : llama ? "llama" : "gpt2");
        if (llama && biases == AttentionBiases.All) w.WriteBoolean("attention_bias", true);
        if (qwen)
        {
            var q = c.Moe!;
            if (!q.SharedExpertGate) throw new ArgumentException("Qwen2-MoE gates its shared expert: a model whose shared expert has no gate cannot be written as it", nameof(c));
            w.WriteNumber("num_experts", q.Experts);
            w.WriteNumber("num_experts_per_tok", q.ExpertsPerToken);
            w.WriteBoolean("norm_topk_prob", q.NormalizeTopK);
            w.WriteNumber("moe_intermediate_size", c.HiddenDim);
            w.WriteNumber("shared_expert_intermediate_size", q.SharedExpertHidden);
            w.WriteNumber("decoder_sparse_step", 1);
            w.WriteStartArray("mlp_only_layers");
            w.WriteEndArray();
            w.WriteNumber("router_aux_loss_coef", q.AuxLossCoefficient);
            w.WriteBoolean("use_sliding_window", false);
        }
        else if (c.Moe is { } moe)
        {
            if (!moe.NormalizeTopK) throw new ArgumentException("Mixtral renormalizes the chosen experts' weights: a model that does not cannot be written as Mixtral", nameof(c));
            w.WriteNumber("num_local_experts", moe.Experts);
            w.WriteNumber("num_experts_per_tok", moe.ExpertsPerToken);
            w.WriteNumber("router_aux_loss_coef", moe.AuxLossCoefficient);
        }
        if (llama)
        {
            w.WriteNumber("hidden_size", c.Dim);
            w.WriteNumber("intermediate_size", c.HiddenDim);
            w.WriteNumber("num_hidden_layers", c.Layers);
            w.WriteNumber("num_attention_heads", c.Heads);
            w.WriteNumber("num_key_value_heads", c.KvHeads);
            w.WriteNumber("max_position_embeddings", c.MaxSeqLen);
            w.WriteNumber("rms_norm_eps", c.NormEps);
            w.WriteNumber("rope_theta", c.RopeTheta);
            w.WriteString("hidden_act", "silu");
        }
        else
        {
            w.WriteNumber("n_embd", c.Dim);
            w.WriteNumber("n_inner", c.HiddenDim);
            w.WriteNumber("n_layer", c.Layers);
            w.WriteNumber("n_head", c.Heads);
            w.WriteNumber("n_positions", c.MaxSeqLen);
            w.WriteNumber("n_ctx", c.MaxSeqLen);
            w.WriteNumber("layer_norm_epsilon", c.NormEps);
        }
        w.WriteNumber("vocab_size", c.VocabSize);
        w.WriteBoolean("tie_word_embeddings", c.TiedEmbeddings);
        w.WriteNumber("bos_token_id", bosId);
        w.WriteNumber("eos_token_id", eosId);
        w.WriteString("torch_dtype", "float32");
        w.WriteEndObject();
    }

    /// <summary>Typed, range-checked reads of top-level keys.</summary>
    private sealed class Keys(JsonElement root, string path)
    {
        public string Path => path;

        public bool Has(string key) => root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

        private JsonElement Get(string key) =>
            Has(key) ? root.GetProperty(key) : throw new ModelFormatException(path, $"config key '{key}' is missing");

        public string String(string key) =>
            Get(key) is { ValueKind: JsonValueKind.String } v ? v.GetString()! : throw new ModelFormatException(path, $"config key '{key}' is not a string");

        public int Int(string key) =>
            Get(key) is { ValueKind: JsonValueKind.Number } v && v.TryGetInt32(out int i) ? i : throw new ModelFormatException(path, $"config key '{key}' is not a 32-bit integer");

        public float Float(string key, float fallback) => !Has(key) ? fallback
            : Get(key) is { ValueKind: JsonValueKind.Number } v && v.TryGetDouble(out double d) ? (float)d
            : throw new ModelFormatException(path, $"config key '{key}' is not a number");

        /// <summary>The length of an array key (0 when absent).</summary>
        public int ArrayLength(string key) => !Has(key) ? 0
            : Get(key) is { ValueKind: JsonValueKind.Array } v ? v.GetArrayLength() : throw new ModelFormatException(path, $"config key '{key}' is not an array");

        public bool Bool(string key, bool fallback) => !Has(key) ? fallback : Get(key).ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ModelFormatException(path, $"config key '{key}' is not a boolean"),
        };

        /// <summary>A token id, or the first of a list of them (Llama 3 lists several EOS ids).</summary>
        public int? OptionalId(string key)
        {
            if (!Has(key)) return null;
            var v = Get(key);
            if (v.ValueKind == JsonValueKind.Array && v.GetArrayLength() > 0) v = v[0];
            return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int id) ? id : throw new ModelFormatException(path, $"config key '{key}' is not a token id");
        }
    }
}
