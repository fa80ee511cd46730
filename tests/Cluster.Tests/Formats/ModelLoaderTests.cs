// ModelLoader picks the format from the file's content (or a checkpoint directory), whatever the file is called.
using Cluster.Model;
using Cluster.Model.Formats;

namespace Cluster.Tests.Formats;

public class ModelLoaderTests
{
    [Fact]
    public void Dispatches_by_content_not_extension()
    {
        var model = RandomModel.Create("tiny", seed: 4);
        using var dir = new TempDirectory();
        Llama2cFormat.Write(model, dir.File("a.model"));
        GgufWriter.Write(model, dir.File("b.model"));
        string hf = Path.Combine(dir.Path, "hf");
        SafetensorsWriter.Write(model, hf);

        Assert.Equal(model.Config, ModelLoader.Load(dir.File("a.model")).Config);
        Assert.Equal(model.Config, ModelLoader.Load(dir.File("b.model")).Config);
        Assert.NotNull(ModelLoader.Load(dir.File("b.model")).Tokenizer);
        Assert.Equal(model.Config with { RopeLayout = Compute.RopeLayout.HalfSplit }, ModelLoader.Load(hf).Config);
        Assert.Equal(model.Config with { RopeLayout = Compute.RopeLayout.HalfSplit }, ModelLoader.Load(Path.Combine(hf, SafetensorsFormat.WeightsFile)).Config);
    }

    [Fact]
    public void Real_files_load_through_the_loader()
    {
        var bin = ModelLoader.Load(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));
        var gguf = ModelLoader.Load(SharedModels.Require("stories260K.gguf"));
        Assert.Equal(bin.Tokenizer!.Encode("Once upon a time", true), gguf.Tokenizer!.Encode("Once upon a time", true));
    }

    [Fact]
    public void Garbage_and_missing_files_are_format_errors()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("junk"), [1, 2, 3]);
        Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("junk")));
        Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("absent")));
        Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path));   // a directory without model.safetensors
    }
}
