// Safetensors + config.json + tokenizer.json: random Llama and GPT-2 checkpoints written and read back.
using Cluster.Compute;
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
