// A shard loads only its own tensors: with a WeightFilter each format reads the selected layers, the embedding
// where the stage needs it and the head on the last stage, leaves everything else empty, and the shard's slices
// cut from that equal the slices cut from a whole load; so do layers cut to a rank's slices as they are read.
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;

namespace Cluster.Tests.Formats;

public sealed class FilteredLoadTests
{
    public static TheoryData<string, string> FormatsAndLayouts()
    {
        var data = new TheoryData<string, string>();
        foreach (string format in new[] { "llama2c", "gguf", "safetensors" })
            foreach (string layout in new[] { "pp=2,layers=2+3", "tp=2,pp=3" })
                data.Add(format, layout);
        foreach (string format in new[] { "gguf-gpt2", "safetensors-gpt2" })   // gpt2-tiny has 2 layers
            foreach (string layout in new[] { "pp=2", "tp=2,pp=2" })
                data.Add(format, layout);
        return data;
    }

    [Theory]
    [MemberData(nameof(FormatsAndLayouts))]
    public void EachStageReadsOnlyItsTensorsAndSlicesTheSame(string format, string layoutText)
    {
        var model = RandomModel.Create(format.EndsWith("gpt2") ? "gpt2-tiny" : "tiny", seed: 9);
        using var dir = new TempDirectory();
        string path = format switch
        {
            "llama2c" => dir.File("model.bin"),
            "gguf" or "gguf-gpt2" => dir.File("model.gguf"),
            _ => dir.Path,
        };
        switch (format)
        {
            case "llama2c": Llama2cFormat.Write(model, path); break;
            case "gguf" or "gguf-gpt2": GgufWriter.Write(model, path); break;
            default: SafetensorsWriter.Write(model, path); break;
        }
        var whole = ModelLoader.Load(path);
        var layout = ParallelLayout.Parse(layoutText);
        var plan = ShardingPlan.Create(whole.Config, layout);

        foreach (var spec in plan.Shards)
        {
            var filter = WeightFilter.For(spec);
            var partial = ModelLoader.Load(path, select: config => WeightFilter.For(ShardingPlan.Create(config, layout).Get(0, spec.Stage, spec.Rank)));
            for (int l = 0; l < whole.Config.Layers; l++)
                Assert.Equal(filter.Layer(l) ? whole.Weights.Layers[l].Wq.Length : 0, partial.Weights.Layers[l].Wq.Length);
            Assert.Equal(filter.TokenEmbedding(whole.Config), partial.Weights.TokenEmbedding.Length > 0);

            var expected = ShardWeights.Slice(whole.Config, whole.Weights, spec);
            AssertSameShard(expected, ShardWeights.Slice(partial.Config, partial.Weights, spec));
            // Cut as read: each layer holds only this rank's slices straight out of the loader.
            var cut = ModelLoader.Load(path, select: config => WeightFilter.Cutting(config, ShardingPlan.Create(config, layout).Get(0, spec.Stage, spec.Rank)));
            if (spec.TensorParallel > 1)
                Assert.Equal(whole.Weights.Layers[spec.Layers.Offset].Wq.Length / spec.TensorParallel, cut.Weights.Layers[spec.Layers.Offset].Wq.Length);
            AssertSameShard(expected, ShardWeights.FromCutLoad(cut.Config, cut.Weights, spec));
        }
    }

    private static void AssertSameShard(ShardWeights expected, ShardWeights actual)
    {
        Assert.Equal(expected.TokenEmbedding, actual.TokenEmbedding);
        Assert.Equal(expected.Output, actual.Output);
        Assert.Equal(expected.PositionEmbedding, actual.PositionEmbedding);
        Assert.Equal(expected.FinalNorm, actual.FinalNorm);
        Assert.Equal(expected.Layers.Length, actual.Layers.Length);
        for (int i = 0; i < expected.Layers.Length; i++)
            Assert.Equal(expected.Layers[i].Tensors(), actual.Layers[i].Tensors());
    }

    [Fact]
    public void AWholeLoadIsNotTakenForACutOne()
    {
        var model = RandomModel.Create("tiny", seed: 9);
        var spec = ShardingPlan.Create(model.Config, ParallelLayout.Parse("tp=2")).Get(0, 0, 1);
        Assert.Throws<ArgumentException>(() => ShardWeights.FromCutLoad(model.Config, model.Weights, spec));
    }

    [Fact]
    public void ALayerCutAsReadIsStillCheckedWhole()
    {
        var model = RandomModel.Create("tiny", seed: 9);
        using var dir = new TempDirectory();
        GgufWriter.Write(model, dir.File("m.gguf"));
        var spec = ShardingPlan.Create(model.Config, ParallelLayout.Parse("tp=2")).Get(0, 0, 0);
        var wrongConfig = model.Config with { HiddenDim = model.Config.HiddenDim * 2 };   // what a file whose FFN disagrees with its header looks like
        var error = Assert.Throws<ModelFormatException>(() => WeightFilter.Cutting(wrongConfig, spec).Keep(model.Weights.Layers[0], wrongConfig, 0, "m.gguf"));
        Assert.Contains("layers.0.w1", error.Message);
    }

    [Fact]
    public void PartialWeightsCannotBuildAWholeModel()
    {
        var model = RandomModel.Create("tiny", seed: 9);
        using var dir = new TempDirectory();
        GgufWriter.Write(model, dir.File("m.gguf"));
        var partial = ModelLoader.Load(dir.File("m.gguf"), select: c => new WeightFilter(new Slice(0, 2), Embedding: true, Output: false));
        using var device = new Cluster.Compute.Cpu.CpuDevice(1);
        Assert.Throws<ModelFormatException>(() => new TransformerModel(device, partial.Config, partial.Weights));
    }
}
