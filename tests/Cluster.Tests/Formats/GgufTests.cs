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

    /// <summary>
    /// A Qwen2-MoE model is written as llama.cpp's qwen2moe (the shared expert and its gate, Q/K rows half-split, and the
    /// q/k/v biases and separate head llama.cpp requires: zeros and the embedding's copy where the model has none), and
    /// read back it gives the same logits, tied head or not.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Qwen2moe_gguf_holds_what_llama_cpp_requires_and_reads_back_the_same_logits(bool tied)
    {
        var preset = RandomModel.Preset("qwen-moe-tiny");
        var model = RandomModel.Create(preset with { TiedEmbeddings = tied }, seed: 3);
        using var dir = new TempDirectory();
        GgufWriter.Write(model, dir.File("m.gguf"));
        using (var file = MappedFile.Open(dir.File("m.gguf")))
        {
            var gguf = GgufFile.Parse(file);
            Assert.Equal("qwen2moe", gguf.String("general.architecture"));
            foreach (string name in new[] { "output.weight", "blk.0.attn_q.bias", "blk.0.ffn_gate_inp_shexp.weight", "blk.3.ffn_down_shexp.weight" })
                Assert.True(gguf.Tensors.ContainsKey(name), name);
        }
        var loaded = GgufFormat.Load(dir.File("m.gguf"));
        Assert.Equal(preset with { TiedEmbeddings = false }, loaded.Config);
        Assert.Equal(model.Weights.Layers[2].SharedExpertGate, loaded.Weights.Layers[2].SharedExpertGate);
        Assert.Equal(model.Weights.Layers[2].SharedW2, loaded.Weights.Layers[2].SharedW2);
        int[] tokens = [1, 17, 300, 42, 5, 99, 7];
        Assert.True(Reference.MaxRelativeError(Logits(loaded), Logits(model)) <= 1e-5);

        float[] Logits(LoadedModel m)
        {
            using var device = new Cluster.Compute.Cpu.CpuDevice(1);
            using var transformer = new TransformerModel(device, m.Config, m.Weights);
            using var cache = transformer.CreateCache(1, tokens.Length, 4);
            return transformer.Forward([new SequenceChunk(cache.CreateSequence(), tokens, AllLogits: true)], cache);
        }
    }

    /// <summary>A tensor that changes the math and is not modelled (Llama 3.1's rope_freqs) is refused by name, not ignored.</summary>
    [Fact]
    public void Llama31s_rope_frequency_factors_are_refused()
    {
        using var dir = new TempDirectory();
        GgufWriter.Write(RandomModel.Create("tiny", seed: 1), dir.File("m.gguf"));
        byte[] bytes = File.ReadAllBytes(dir.File("m.gguf"));
        byte[] from = System.Text.Encoding.ASCII.GetBytes("token_embd.weight"), to = System.Text.Encoding.ASCII.GetBytes("rope_freqs.weight");
        int at = bytes.AsSpan().IndexOf(from);
        to.CopyTo(bytes, at);   // the same length: the file stays well-formed, with a rope_freqs tensor
        File.WriteAllBytes(dir.File("m.gguf"), bytes);
        Assert.Contains("rope_freqs", Assert.Throws<ModelFormatException>(() => GgufFormat.Load(dir.File("m.gguf"))).Message);
    }

    /// <summary>What neither of llama.cpp's MoE architectures computes is refused, not written as something else.</summary>
    [Fact]
    public void A_mixture_gguf_cannot_hold_is_refused_rather_than_changed()
    {
        using var dir = new TempDirectory();
        var preset = RandomModel.Preset("qwen-moe-tiny");
        foreach (var moe in new[] { preset.Moe! with { NormalizeTopK = true }, preset.Moe! with { SharedExpertGate = false }, new MoeConfig(8, 2, NormalizeTopK: false) })
        {
            var error = Assert.Throws<ArgumentException>(() => GgufWriter.Write(RandomModel.Create(preset with { Moe = moe }, seed: 1), dir.File("m.gguf")));
            Assert.Equal(GgufWriter.CannotWrite(preset with { Moe = moe }), error.Message.Split(" (Parameter")[0]);
        }
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
