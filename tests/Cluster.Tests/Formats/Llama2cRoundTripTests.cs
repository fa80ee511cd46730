// llama2.c: random models and vocabularies written and read back; the real checkpoint re-written byte for byte.
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Tokenizers;

namespace Cluster.Tests.Formats;

public class Llama2cRoundTripTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Random_model_and_vocabulary_round_trip(bool tied)
    {
        var model = RandomModel.Create(RandomModel.Preset("tiny") with { TiedEmbeddings = tied }, seed: 11);
        using var dir = new TempDirectory();
        Llama2cFormat.Write(model, dir.File("m.bin"));
        ((SentencePieceBpeTokenizer)model.Tokenizer!).WriteLlama2c(dir.File("tok.bin"));
        var loaded = Llama2cFormat.Load(dir.File("m.bin"), dir.File("tok.bin"));
        Assert.Equal(model.Config, loaded.Config);
        WeightAssert.Equal(model.Weights, loaded.Weights);
        Assert.Equal(model.Tokenizer!.Encode("The little dog ran home.", true), loaded.Tokenizer!.Encode("The little dog ran home.", true));
    }

    [Fact]
    public void Stories260K_rewrites_to_the_same_header_weights_and_vocabulary()
    {
        string source = SharedModels.Require("stories260K.bin");
        var model = Llama2cFormat.Load(source, SharedModels.Require("tok512.bin"));
        using var dir = new TempDirectory();
        Llama2cFormat.Write(model, dir.File("m.bin"));
        Assert.Equal(File.ReadAllBytes(source)[..(7 * 4)], File.ReadAllBytes(dir.File("m.bin"))[..(7 * 4)]);
        WeightAssert.Equal(model.Weights, Llama2cFormat.Load(dir.File("m.bin")).Weights);
        ((SentencePieceBpeTokenizer)model.Tokenizer!).WriteLlama2c(dir.File("tok.bin"));
        Assert.Equal(File.ReadAllBytes(SharedModels.Require("tok512.bin")), File.ReadAllBytes(dir.File("tok.bin")));
    }
}
