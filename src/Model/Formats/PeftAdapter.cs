// LoRA adapters in Hugging Face PEFT's layout: a directory with adapter_config.json (peft_type LORA, r, lora_alpha,
// target_modules, lora_dropout) and adapter_model.safetensors holding, per adapted projection of a Llama model,
//   base_model.model.model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}.lora_A.weight  (r, in)
//   base_model.model.model.layers.N.{...}.lora_B.weight                                                (out, r)
// with W' = W + (lora_alpha / r) · B · A. Q/K rows are stored in HF's half-split RoPE order and converted to the
// model's on load, as the safetensors loader does for the projections themselves. Serving merges an adapter into the
// base weights at load.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Cluster.Model.Formats;

/// <summary>One adapted projection: <paramref name="Target"/> is this engine's weight name (wq, wk, wv, wo, w1, w2, w3).</summary>
public sealed record LoraTensors(int Layer, string Target, float[] A, float[] B);

public sealed record PeftAdapterConfig(int Rank, float Alpha, string[] Targets, float Dropout)
{
    public float Scale => Alpha / Rank;
}

public static class PeftAdapter
{
    public const string ConfigFile = "adapter_config.json", WeightsFile = "adapter_model.safetensors";

    /// <summary>This engine's weight names and PEFT's module names for them.</summary>
    public static readonly IReadOnlyDictionary<string, string> Modules = new Dictionary<string, string>
    {
        ["wq"] = "self_attn.q_proj", ["wk"] = "self_attn.k_proj", ["wv"] = "self_attn.v_proj", ["wo"] = "self_attn.o_proj",
        ["w1"] = "mlp.gate_proj", ["w3"] = "mlp.up_proj", ["w2"] = "mlp.down_proj",
    };

    /// <summary>(out, in) of a target's weight.</summary>
    public static (int Out, int In) Shape(ModelConfig c, string target) => target switch
    {
        "wq" or "wo" => (c.Dim, c.Dim),
        "wk" or "wv" => (c.KvDim, c.Dim),
        "w1" or "w3" => (c.HiddenDim, c.Dim),
        "w2" => (c.Dim, c.HiddenDim),
        _ => throw new ArgumentException($"unknown LoRA target '{target}' (known: {string.Join(", ", Modules.Keys)})", nameof(target)),
    };

    public static void Save(string directory, ModelConfig c, PeftAdapterConfig config, IEnumerable<LoraTensors> adapters, string baseModel)
    {
        if (c.Architecture != Architecture.Llama) throw new ArgumentException("PEFT adapters are written for Llama-family models");
        Directory.CreateDirectory(directory);
        var tensors = new List<(string, long[], float[])>();
        foreach (var (layer, target, a, b) in adapters)
        {
            var (n, k) = Shape(c, target);
            string prefix = $"base_model.model.model.layers.{layer}.{Modules[target]}.";
            tensors.Add((prefix + "lora_A.weight", [config.Rank, k], a));
            tensors.Add((prefix + "lora_B.weight", [n, config.Rank], ToHf(b, c, target, config.Rank, toHf: true)));
        }
        SafetensorsWriter.WriteTensors(tensors, Path.Combine(directory, WeightsFile));
        var json = new JsonObject
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["base_model_name_or_path"] = baseModel, ["r"] = config.Rank,
            ["lora_alpha"] = config.Alpha, ["lora_dropout"] = config.Dropout, ["bias"] = "none", ["fan_in_fan_out"] = false,
            ["target_modules"] = new JsonArray([.. config.Targets.Select(t => JsonValue.Create(Modules[t].Split('.')[1]))]),
        };
        File.WriteAllText(Path.Combine(directory, ConfigFile), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public static (PeftAdapterConfig Config, LoraTensors[] Adapters) Load(string directory, ModelConfig c)
    {
        string configPath = Path.Combine(directory, ConfigFile), weightsPath = Path.Combine(directory, WeightsFile);
        if (!File.Exists(configPath)) throw new ModelFormatException(directory, $"no {ConfigFile}: not a PEFT adapter directory");
        PeftAdapterConfig config;
        try
        {
            var json = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
            if ((string?)json["peft_type"] != "LORA") throw new ModelFormatException(configPath, "peft_type must be LORA");
            int rank = (int)json["r"]!;
            float alpha = (float)json["lora_alpha"]!;
            if (rank <= 0 || !float.IsFinite(alpha)) throw new ModelFormatException(configPath, "r must be positive and lora_alpha finite");
            string[] modules = [.. json["target_modules"]!.AsArray().Select(m => (string)m!)];
            string[] targets = [.. modules.Select(m => Modules.FirstOrDefault(kv => kv.Value.EndsWith("." + m)).Key
                ?? throw new ModelFormatException(configPath, $"target module '{m}' is not one this engine adapts"))];
            config = new PeftAdapterConfig(rank, alpha, targets, (float?)json["lora_dropout"] ?? 0);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new ModelFormatException(configPath, "unreadable adapter config: " + e.Message, inner: e);
        }
        using var file = MappedFile.Open(weightsPath);
        var index = SafetensorsFile.Parse(file);
        var adapters = new List<LoraTensors>();
        for (int layer = 0; layer < c.Layers; layer++)
            foreach (string target in config.Targets)
            {
                var (n, k) = Shape(c, target);
                string prefix = $"base_model.model.model.layers.{layer}.{Modules[target]}.";
                float[] Read(string name, long rows, long cols)
                {
                    if (!index.TryGetValue(prefix + name, out var t)) throw new ModelFormatException(weightsPath, "missing", prefix + name);
                    if (!t.Shape.SequenceEqual([rows, cols])) throw new ModelFormatException(weightsPath, $"shape [{string.Join(", ", t.Shape)}] should be [{rows}, {cols}]", prefix + name);
                    return file.ReadTensor(t.Offset, t.Type, t.ElementCount, prefix + name);
                }
                adapters.Add(new LoraTensors(layer, target, Read("lora_A.weight", config.Rank, k), ToHf(Read("lora_B.weight", n, config.Rank), c, target, config.Rank, toHf: false)));
            }
        return (config, [.. adapters]);
    }

    /// <summary>Merges the adapter in <paramref name="directory"/> into <paramref name="w"/>'s loaded layers: W += scale · B·A.</summary>
    public static void Merge(ModelWeights w, ModelConfig c, string directory)
    {
        var (config, adapters) = Load(directory, c);
        foreach (var (layer, target, a, b) in adapters)
        {
            var weights = w.Layers[layer];
            float[] m = target switch
            {
                "wq" => weights.Wq, "wk" => weights.Wk, "wv" => weights.Wv, "wo" => weights.Wo, "w1" => weights.W1, "w2" => weights.W2,
                _ => weights.W3 ?? throw new ModelFormatException(directory, "the model has no up projection", target),
            };
            if (m.Length == 0) continue;   // a layer this shard did not load
            var (n, k) = Shape(c, target);
            for (int row = 0; row < n; row++)
                for (int j = 0; j < config.Rank; j++)
                {
                    float coefficient = config.Scale * b[row * config.Rank + j];
                    if (coefficient != 0) System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(a.AsSpan(j * k, k), coefficient, m.AsSpan(row * k, k), m.AsSpan(row * k, k));
                }
        }
    }

    /// <summary>B's rows for Q and K between this model's RoPE layout and HF's half-split one.</summary>
    private static float[] ToHf(float[] b, ModelConfig c, string target, int rank, bool toHf)
    {
        if (target is not ("wq" or "wk")) return b;
        int heads = target == "wq" ? c.Heads : c.KvHeads;
        var (from, to) = toHf ? (c.RopeLayout, Compute.RopeLayout.HalfSplit) : (Compute.RopeLayout.HalfSplit, c.RopeLayout);
        return RopePermutation.Convert(b, heads, c.HeadDim, c.EffectiveRotaryDim, rank, from, to);
    }
}
