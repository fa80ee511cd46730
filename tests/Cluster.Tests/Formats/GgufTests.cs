// GGUF: the real stories260K.gguf against its llama2.c twin, and random models written by GgufWriter read back.
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Tokenizers;

namespace Cluster.Tests.Formats;

public class GgufTests
{
    [Fact]
    public void Stories260K_gguf_matches_the_llama2c_checkpoint()
    {
        var bin = Llama2cFormat.Load(SharedModels.Require("stories260K.bin"));
        var gguf = GgufFormat.Load(SharedModels.Require("stories260K.gguf"));
        Assert.Equal(bin.Config with { MaxSeqLen = 2048, TiedEmbeddings = false }, gguf.Config);
        Assert.Equal(bin.Weights.TokenEmbedding, gguf.Weights.Output);   // the converter stored the tied head separately
        WeightAssert.Equal(bin.Weights, new ModelWeights
        {
            TokenEmbedding = gguf.Weights.TokenEmbedding, Layers = gguf.Weights.Layers, FinalNorm = gguf.Weights.FinalNorm,
        });
    }

    [Fact]
    public void Stories260K_gguf_vocabulary_encodes_like_run_c()
    {
        var tokenizer = GgufFormat.Load(SharedModels.Require("stories260K.gguf")).Tokenizer;
        Assert.IsType<SentencePieceBpeTokenizer>(tokenizer);
        foreach (var line in File.ReadAllLines(SharedModels.Require("expected/tokenizer_cases.txt")))
        {
            var parts = line.Split('\t');
            int[] expected = parts[1].Split(' ').Select(int.Parse).ToArray();
            Assert.Equal(expected, tokenizer.Encode(parts[0], addBos: true));
        }
    }

    [Theory]
    [InlineData("tiny", TensorType.F32, 0f)]
    [InlineData("tiny", TensorType.F16, 1f / 1024)]
    [InlineData("tiny", TensorType.Q8_0, 1f / 100)]
    [InlineData("tiny", TensorType.Q4_0, 1f / 4)]
    [InlineData("moe-tiny", TensorType.F32, 0f)]
    [InlineData("moe-tiny", TensorType.Q8_0, 1f / 100)]
    [InlineData("gpt2-tiny", TensorType.F32, 0f)]
    [InlineData("gpt2-tiny", TensorType.Q8_0, 1f / 100)]
    public void Random_model_round_trips(string preset, TensorType type, float tolerance)
    {
        var model = RandomModel.Create(preset, seed: 3);
        using var dir = new TempDirectory();
        GgufWriter.Write(model, dir.File("m.gguf"), type);
        var loaded = GgufFormat.Load(dir.File("m.gguf"));
        Assert.Equal(model.Config, loaded.Config);
        WeightAssert.Equal(model.Weights, loaded.Weights, tolerance);
        foreach (var text in new[] { "Once upon a time", "Hello, wörld!", "" })
            Assert.Equal(model.Tokenizer!.Encode(text, true), loaded.Tokenizer!.Encode(text, true));
    }

    [Fact]
    public void A_shared_expert_is_refused_rather_than_dropped()
    {
        using var dir = new TempDirectory();
        var error = Assert.Throws<ArgumentException>(() => GgufWriter.Write(RandomModel.Create("qwen-moe-tiny", seed: 1), dir.File("m.gguf")));
        Assert.Contains("shared expert", error.Message);
    }

    /// <summary>A router bias (aux-loss-free balancing) travels with the model, in GGUF and as DeepSeek-V3 names it in safetensors.</summary>
    [Fact]
    public void Moe_router_biases_round_trip()
    {
        var config = RandomModel.Preset("moe-tiny") with { Moe = RandomModel.Preset("moe-tiny").Moe! with { BiasUpdateRate = 0.01f } };
        var model = RandomModel.Create(config, seed: 4);
        for (int l = 0; l < config.Layers; l++) model.Weights.Layers[l].RouterBias![l % 8] = 0.25f * (l + 1);
        using var dir = new TempDirectory();
        GgufWriter.Write(model, dir.File("m.gguf"));
        SafetensorsWriter.Write(model, dir.Path);
        foreach (var loaded in new[] { GgufFormat.Load(dir.File("m.gguf")), ModelLoader.Load(dir.Path) })
        {
            Assert.Equal(config.Moe!.Experts, loaded.Config.Moe!.Experts);   // the rate is a training choice: not in the file
            for (int l = 0; l < config.Layers; l++) Assert.Equal(model.Weights.Layers[l].RouterBias, loaded.Weights.Layers[l].RouterBias);
        }
    }

    [Fact]
    public void Untied_gqa_model_with_half_split_rope_is_stored_interleaved()
    {
        var config = RandomModel.Preset("tiny") with { TiedEmbeddings = false, RopeLayout = Compute.RopeLayout.HalfSplit, RopeTheta = 500000f, NormEps = 1e-6f };
        var model = RandomModel.Create(config, seed: 5);
        using var dir = new TempDirectory();
        GgufWriter.Write(model, dir.File("m.gguf"));
        var loaded = GgufFormat.Load(dir.File("m.gguf"));
        Assert.Equal(config with { RopeLayout = Compute.RopeLayout.Interleaved }, loaded.Config);
        var c = config;
        var back = loaded.Weights.Layers[1];
        Assert.Equal(model.Weights.Layers[1].Wk, RopePermutation.Convert(back.Wk, c.KvHeads, c.HeadDim, c.HeadDim, c.Dim, Compute.RopeLayout.Interleaved, Compute.RopeLayout.HalfSplit));
        Assert.Equal(model.Weights.Output, loaded.Weights.Output);
    }
}
