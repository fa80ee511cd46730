// Checkpoints: N steps straight equal K steps, a checkpoint, a fresh process's model and optimizer loading it, and
// N − K more steps, bit for bit (fp32), data cursor included; a damaged checkpoint is refused with a clear error.
using Cluster.Model;
using Cluster.Tests.Formats;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class CheckpointTests
{
    private static readonly ModelConfig Config = TestModels.SmallConfig(Architecture.Llama) with { VocabSize = 16, MaxSeqLen = 32 };
    private static readonly OptimizerOptions Options = new() { LearningRate = 1e-2f, WarmupSteps = 2, TotalSteps = 8 };

    private static PackedDataset Data() =>
        new(ArithmeticData.Additions(200, seed: 3).Select(t => new[] { 12 }.Concat(t.Select(ch => ch switch { '+' => 10, '=' => 11, _ => ch - '0' })).ToArray()), 32, seed: 5);

    private static (List<float> Losses, DataCursor Cursor) Run(TrainableModel model, Optimizer optimizer, PackedDataset data, DataCursor cursor, int steps)
    {
        var losses = new List<float>();
        for (int i = 0; i < steps; i++)
        {
            (var batch, cursor) = data.Take(2, cursor);
            model.ZeroGradients();
            losses.Add(model.ForwardBackward(batch));
            optimizer.Apply();
        }
        return (losses, cursor);
    }

    [Fact]
    public void ResumingFromACheckpointIsBitwiseTheSameRun()
    {
        using var straight = new TrainableModel(Config, TestModels.RandomWeights(Config, 1));
        var (straightLosses, _) = Run(straight, new Optimizer(straight, Options), Data(), default, 8);

        using var first = new TrainableModel(Config, TestModels.RandomWeights(Config, 1));
        var firstOptimizer = new Optimizer(first, Options);
        var (firstLosses, cursor) = Run(first, firstOptimizer, Data(), default, 3);
        using var dir = new TempDirectory();
        Checkpoint.Save(dir.Path, first, firstOptimizer, cursor);

        using var resumed = new TrainableModel(Config, TestModels.RandomWeights(Config, 99));   // other weights: the checkpoint overwrites them
        var resumedOptimizer = new Optimizer(resumed, Options);
        var resumedCursor = Checkpoint.Load(dir.Path, resumed, resumedOptimizer);
        var (restLosses, _) = Run(resumed, resumedOptimizer, Data(), resumedCursor, 5);

        Assert.Equal(straightLosses, firstLosses.Concat(restLosses));
        foreach (var (a, b) in straight.Parameters().Zip(resumed.Parameters()))
            Assert.True(a.Parameter.AsSpan().SequenceEqual(b.Parameter), $"{a.Name} differs");
        Assert.Equal(8, resumedOptimizer.Step);
    }

    [Fact]
    public void DamagedCheckpointsAreRefused()
    {
        using var model = new TrainableModel(Config, TestModels.RandomWeights(Config, 1));
        var optimizer = new Optimizer(model, Options);
        using var dir = new TempDirectory();
        Assert.Throws<ModelFormatException>(() => Checkpoint.Load(dir.Path, model, optimizer));              // nothing there

        Checkpoint.Save(dir.Path, model, optimizer, default);
        var other = TestModels.SmallConfig(Architecture.Llama) with { Layers = 3 };
        using var bigger = new TrainableModel(other, TestModels.RandomWeights(other, 1));
        Assert.Throws<ModelFormatException>(() => Checkpoint.Load(dir.Path, bigger, new Optimizer(bigger, Options)));   // another model

        File.WriteAllBytes(Path.Combine(dir.Path, Checkpoint.ManifestFile), [0xc1, 0x00]);
        Assert.Throws<ModelFormatException>(() => Checkpoint.Load(dir.Path, model, optimizer));              // unreadable manifest
    }
}
