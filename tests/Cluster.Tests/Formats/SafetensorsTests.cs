// Safetensors + config.json + tokenizer.json: random Llama, Mixtral, Qwen2-MoE and GPT-2 checkpoints written and read
// back; Qwen2-MoE's published config keys; attention biases through both formats' RoPE layouts.
using System.Text.Json.Nodes;
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Tokenizers;

namespace Cluster.Tests.Formats;

public class SafetensorsTests
{
    [Theory]
    [InlineData("tiny", true)]
    [InlineData("tiny", false)]
    [InlineData("moe-tiny", true)]     // Mixtral names and config keys
    [InlineData("moe-tiny", false)]
    [InlineData("qwen-moe-tiny", true)]   // Qwen2-MoE names and config keys: the shared expert and its gate
    [InlineData("gpt2-tiny", true)]
    [InlineData("gpt2-tiny", false)]
    public void Random_checkpoint_round_trips(string preset, bool tied)
    {
        var config = RandomModel.Preset(preset) with { TiedEmbeddings = tied, NormEps = 1e-6f };
        if (config.Architecture == Architecture.Llama) config = config with { RopeLayout = RopeLayout.HalfSplit, RopeTheta = 500000f };
        var model = RandomModel.Create(config, seed: 9);
        using var dir = new TempDirectory();
        SafetensorsWriter.Write(model, dir.Path);
        var loaded = ModelLoader.Load(dir.Path);
        Assert.Equal(model.Config, loaded.Config);
        WeightAssert.Equal(model.Weights, loaded.Weights);
        Assert.IsType<SentencePieceBpeTokenizer>(loaded.Tokenizer);
        foreach (var text in new[] { "Once upon a time, Lily saw a dog.", "naïve ☕ 42", "" })
            Assert.Equal(model.Tokenizer!.Encode(text, true), loaded.Tokenizer.Encode(text, true));
    }

    [Fact]
    public void Interleaved_model_is_written_half_split()
    {
        var model = RandomModel.Create("tiny", seed: 2);
        using var dir = new TempDirectory();
        SafetensorsWriter.Write(model, dir.Path);
        var loaded = SafetensorsFormat.Load(Path.Combine(dir.Path, SafetensorsFormat.WeightsFile));
        var c = loaded.Config;
        Assert.Equal(RopeLayout.HalfSplit, c.RopeLayout);
        Assert.Equal(model.Weights.Layers[0].Wq, RopePermutation.Convert(loaded.Weights.Layers[0].Wq, c.Heads, c.HeadDim, c.HeadDim, c.Dim, RopeLayout.HalfSplit, RopeLayout.Interleaved));
        Assert.Equal(model.Weights.Layers[0].Wv, loaded.Weights.Layers[0].Wv);
    }

    /// <summary>
    /// A config.json as Qwen1.5-MoE publishes it (dims shrunk): every layer an MoE with a gated shared expert, top-k
    /// weights not renormalized; the keys that would change the math and are not modelled are refused by name.
    /// </summary>
    [Fact]
    public void Qwen2_moe_config_reads_and_what_it_cannot_model_is_refused()
    {
        const string published = """
            {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 344,
             "moe_intermediate_size": 32, "shared_expert_intermediate_size": 128, "num_experts": 6, "num_experts_per_tok": 4,
             "norm_topk_prob": false, "decoder_sparse_step": 1, "mlp_only_layers": [], "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 320, "max_position_embeddings": 128,
             "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "tie_word_embeddings": false,
             "use_sliding_window": false, "sliding_window": 32768, "bos_token_id": 1, "eos_token_id": 2}
            """;
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("config.json"), published);
        var c = HfConfigJson.Load(dir.File("config.json")).Config;
        Assert.Equal((64, 32, 2, 320), (c.Dim, c.HiddenDim, c.Layers, c.VocabSize));
        Assert.Equal(new MoeConfig(6, 4, NormalizeTopK: false, AuxLossCoefficient: 0.001f, SharedExpertHidden: 128, SharedExpertGate: true), c.Moe);
        Assert.Equal(RopeLayout.HalfSplit, c.RopeLayout);

        foreach (var (key, value) in new (string, JsonNode)[]
        {
            ("use_sliding_window", true), ("mlp_only_layers", new JsonArray(1)), ("decoder_sparse_step", 2),
            ("rope_scaling", new JsonObject { ["type"] = "yarn", ["factor"] = 4.0 }), ("mlp_bias", true),
        })
        {
            var changed = JsonNode.Parse(published)!.AsObject();
            changed[key] = value;
            File.WriteAllText(dir.File("config.json"), changed.ToJsonString());
            var error = Assert.Throws<ModelFormatException>(() => HfConfigJson.Load(dir.File("config.json")));
            Assert.Contains(key, error.Message);
        }
    }

    /// <summary>Config keys that would change the math and are not modelled are refused by name, never ignored.</summary>
    [Theory]
    [InlineData("LlamaForCausalLM", "hidden_act", "\"gelu\"")]
    [InlineData("LlamaForCausalLM", "partial_rotary_factor", "0.5")]
    [InlineData("LlamaForCausalLM", "mlp_bias", "true")]
    [InlineData("GPT2LMHeadModel", "activation_function", "\"relu\"")]
    [InlineData("GPT2LMHeadModel", "scale_attn_by_inverse_layer_idx", "true")]
    public void Config_keys_that_change_the_math_are_refused(string architecture, string key, string value)
    {
        string body = architecture == "GPT2LMHeadModel"
            ? "\"n_embd\": 64, \"n_layer\": 2, \"n_head\": 4, \"n_positions\": 128, \"vocab_size\": 100"
            : "\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100, \"max_position_embeddings\": 128";
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("config.json"), $"{{\"architectures\": [\"{architecture}\"], {body}}}");
        HfConfigJson.Load(dir.File("config.json"));   // the plain config loads
        File.WriteAllText(dir.File("config.json"), $"{{\"architectures\": [\"{architecture}\"], {body}, \"{key}\": {value}}}");
        Assert.Contains(key, Assert.Throws<ModelFormatException>(() => HfConfigJson.Load(dir.File("config.json"))).Message);
    }

    /// <summary>Mistral's sliding window: the context is cut to it, where sliding-window attention is full attention.</summary>
    [Theory]
    [InlineData("""{"sliding_window": 64}""", 64)]
    [InlineData("""{"sliding_window": null}""", 128)]
    [InlineData("""{"sliding_window": 4096}""", 128)]
    [InlineData("""{"sliding_window": 64, "use_sliding_window": false}""", 128)]   // Qwen2's switch: off
    public void A_sliding_window_cuts_the_context_to_itself(string window, int context)
    {
        var config = JsonNode.Parse("""
            {"architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 128}
            """)!.AsObject();
        foreach (var (key, value) in JsonNode.Parse(window)!.AsObject()) config[key] = value?.DeepClone();
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("config.json"), config.ToJsonString());
        Assert.Equal(context, HfConfigJson.Load(dir.File("config.json")).Config.MaxSeqLen);
    }

    /// <summary>
    /// Query, key and value biases (Qwen2's, written as Qwen2ForCausalLM) and all four with the output's (Llama's
    /// attention_bias) on a model whose RoPE pairs are interleaved: written to safetensors (half-split, the biases
    /// permuted with their rows) and to GGUF (interleaved), each read back gives the same logits.
    /// </summary>
    [Theory]
    [InlineData(false, "Qwen2ForCausalLM")]
    [InlineData(true, "LlamaForCausalLM")]
    public void Attention_biases_round_trip_with_their_rope_layout(bool output, string architecture)
    {
        var model = RandomModel.Create("tiny", seed: 4);
        var withBiases = new LoadedModel(model.Config, TestModels.WithAttentionBiases(model.Config, model.Weights, 5, output), model.Tokenizer, "biased");
        int[] tokens = [1, 17, 300, 42, 5, 99];
        float[] Logits(LoadedModel m)
        {
            using var device = new CpuDevice(1);
            using var transformer = new TransformerModel(device, m.Config, m.Weights);
            using var cache = transformer.CreateCache(1, tokens.Length, 4);
            return transformer.Forward([new SequenceChunk(cache.CreateSequence(), tokens, AllLogits: true)], cache);
        }
        float[] expected = Logits(withBiases);
        Assert.True(Reference.MaxRelativeError(Logits(model), expected) > 1e-3, "the biases change the logits");
        using var dir = new TempDirectory();
        SafetensorsWriter.Write(withBiases, dir.Path);
        GgufWriter.Write(withBiases, dir.File("m.gguf"));
        using (var config = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("config.json"))))
        {
            Assert.Equal(architecture, config.RootElement.GetProperty("architectures")[0].GetString());
            Assert.Equal(output, config.RootElement.TryGetProperty("attention_bias", out var bias) && bias.GetBoolean());
        }
        foreach (var loaded in new[] { ModelLoader.Load(dir.Path), ModelLoader.Load(dir.File("m.gguf")) })
        {
            Assert.NotNull(loaded.Weights.Layers[0].Bq);
            Assert.Equal(output, loaded.Weights.Layers[0].Bo is not null);
            float error = (float)Reference.MaxRelativeError(Logits(loaded), expected);
            Assert.True(error <= 1e-5, $"{loaded.Source}: max error {error}");
        }
        Assert.Throws<ArgumentException>(() => Llama2cFormat.Write(withBiases, dir.File("m.bin")));   // llama2.c has no place for them
    }

    [Fact]
    public void Stories260K_vocabulary_survives_tokenizer_json()
    {
        var model = Llama2cFormat.Load(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));
        using var dir = new TempDirectory();
        HfTokenizerJson.Write((SentencePieceBpeTokenizer)model.Tokenizer!, dir.File("tokenizer.json"));
        var tokenizer = HfTokenizerJson.Load(dir.File("tokenizer.json"), 1, 2);
        foreach (var line in File.ReadAllLines(SharedModels.Require("expected/tokenizer_cases.txt")))
        {
            var parts = line.Split('\t');
            Assert.Equal(parts[1].Split(' ').Select(int.Parse).ToArray(), tokenizer.Encode(parts[0], addBos: true));
        }
    }

    [Fact]
    public void Bf16_and_f16_tensors_decode()
    {
        using var dir = new TempDirectory();
        string path = dir.File("t.safetensors");
        // Header by hand: a BF16 (2,) tensor then an F16 (1,) tensor.
        string json = """{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]}}""";
        var bytes = new List<byte>(BitConverter.GetBytes((ulong)json.Length));
        bytes.AddRange(System.Text.Encoding.ASCII.GetBytes(json));
        bytes.AddRange([0xC0, 0x3F, 0x00, 0xC0, 0x00, 0x3C]);   // bf16 1.5, bf16 -2, f16 1
        File.WriteAllBytes(path, [.. bytes]);
        using var file = MappedFile.Open(path);
        var tensors = SafetensorsFile.Parse(file);
        Assert.Equal([1.5f, -2f], file.ReadTensor(tensors["a"].Offset, tensors["a"].Type, 2, "a"));
        Assert.Equal([1f], file.ReadTensor(tensors["b"].Offset, tensors["b"].Type, 1, "b"));
    }
}
