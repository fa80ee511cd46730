// Sharded checkpoints: N steps straight equal K steps, a checkpoint, a fresh run restored from it and N-K more steps,
// bitwise (same layout, with and without ZeRO-1); a checkpoint saved at one layout resumes at others (within 1e-5 of
// the straight run, the sums running in other orders); damaged or foreign checkpoints are refused with a clear error.
// Durability: a resume falls back past torn or altered checkpoints (SHA-256 per file), older ones are pruned, a step
// whose checkpoint exists is never written again, and on Unix checkpoints are private (0700 directories, 0600 files).
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class CheckpointTests
{
    private static readonly ModelConfig Config = TestModels.SmallConfig(Architecture.Llama) with { VocabSize = 16, MaxSeqLen = 32 };
    private static readonly OptimizerOptions Options = new() { LearningRate = 1e-2f, WarmupSteps = 2, TotalSteps = 8, Eps = 1e-6f };

    private static PackedDataset Data() =>
        new(Datasets.Additions(200, seed: 3).Select(p => new TrainingDocument([12, .. (p.Prompt + p.Completion).Select(ch => ch switch { '+' => 10, '=' => 11, _ => ch - '0' })])), 32, seed: 5);

    private static LocalTrainingRun Run(string layout, int zeroStage = 0, int seed = 1) =>
        LocalTrainingRun.Create(Config, TestModels.RandomWeights(Config, seed), ParallelLayout.Parse(layout), Options, zeroStage);

    private static (List<float> Losses, DataCursor Cursor) Train(LocalTrainingRun run, DataCursor cursor, int steps)
    {
        var data = Data();
        var losses = new List<float>();
        for (int i = 0; i < steps; i++)
        {
            (var batch, cursor) = data.Take(4, cursor);
            losses.Add(run.TrainStep(batch, microBatches: 2).LossShare);
        }
        return (losses, cursor);
    }

    [Theory]
    [InlineData("tp=1", 0)]
    [InlineData("tp=2,pp=2", 0)]
    [InlineData("dp=2", 1)]
    [InlineData("pp=2,dp=2", 2)]
    [InlineData("tp=2,dp=2", 3)]
    public void ResumingFromACheckpointIsBitwiseTheSameRun(string layout, int zeroStage)
    {
        using var straight = Run(layout, zeroStage);
        var (straightLosses, _) = Train(straight, default, 8);

        using var dir = new Formats.TempDirectory();
        using var first = Run(layout, zeroStage);
        var (firstLosses, cursor) = Train(first, default, 3);
        string saved = first.SaveCheckpoint(dir.Path, cursor);
        Assert.Equal(saved, Checkpoint.Latest(dir.Path));

        using var resumed = Run(layout, zeroStage, seed: 99);   // other weights: the checkpoint overwrites them
        var manifest = resumed.Restore(saved);
        Assert.Equal(3, manifest.Step);
        var (restLosses, _) = Train(resumed, manifest.Cursor, 5);

        Assert.Equal(straightLosses, firstLosses.Concat(restLosses));
        Assert.Equal(8, resumed.Step);
        foreach (var (a, b) in straight.WholeParameters().SelectMany(p => p).Zip(resumed.WholeParameters().SelectMany(p => p)))
            Assert.True(a.Parameter.AsSpan().SequenceEqual(b.Parameter), $"{a.Name} differs");
    }

    [Theory]
    [InlineData("tp=2,pp=2", "tp=1", 0)]
    [InlineData("tp=1", "pp=2,dp=2", 1)]
    [InlineData("pp=2", "tp=2", 0)]
    [InlineData("tp=2,pp=2", "pp=2,dp=2", 3)]
    public void ACheckpointResumesAtAnotherLayout(string savedAt, string resumedAt, int zeroStage)
    {
        using var straight = Run("tp=1");
        Train(straight, default, 6);

        using var dir = new Formats.TempDirectory();
        using var first = Run(savedAt);
        var (_, cursor) = Train(first, default, 3);
        string saved = first.SaveCheckpoint(dir.Path, cursor);

        using var resumed = Run(resumedAt, zeroStage, seed: 99);
        var manifest = resumed.Restore(saved);
        Assert.Equal(ParallelLayout.Parse(savedAt), ParallelLayout.Parse(manifest.Layout));
        Train(resumed, manifest.Cursor, 3);

        var expected = WeightAssembly.Tensors(straight.WholeParameters().SelectMany(p => p));
        var actual = WeightAssembly.Tensors(resumed.WholeParameters().Where((_, i) => resumed.Shards[i].Model.Spec.Replica == 0).SelectMany(p => p));
        foreach (var (name, tensor) in expected)
            Assert.True(Reference.MaxRelativeError(actual[name], tensor) <= 1e-5, $"{name}: max error {Reference.MaxRelativeError(actual[name], tensor)}");
    }

    [Fact]
    public void DamagedCheckpointsAreRefused()
    {
        using var run = Run("tp=1");
        using var dir = new Formats.TempDirectory();
        Assert.Throws<ModelFormatException>(() => run.Restore(dir.Path));                                   // nothing there
        Assert.Null(Checkpoint.Latest(dir.Path));

        string saved = run.SaveCheckpoint(dir.Path, default);
        var other = Config with { Layers = 3 };
        using var bigger = LocalTrainingRun.Create(other, TestModels.RandomWeights(other, 1), ParallelLayout.Single, Options);
        Assert.Throws<ModelFormatException>(() => bigger.Restore(saved));                                   // another model

        File.Delete(Directory.EnumerateFiles(saved, "shard-*").First());
        Assert.Throws<ModelFormatException>(() => run.Restore(saved));                                      // a shard's file is gone

        File.WriteAllBytes(Path.Combine(saved, Checkpoint.ManifestFile), [0xc1, 0x00]);
        Assert.Throws<ModelFormatException>(() => run.Restore(saved));                                      // unreadable manifest
    }

    [Fact]
    public void AResumeFallsBackPastTornAndAlteredCheckpoints()
    {
        using var dir = new Formats.TempDirectory();
        using var run = Run("tp=2");
        var (_, cursor) = Train(run, default, 2);
        string second = run.SaveCheckpoint(dir.Path, cursor);
        (_, cursor) = Train(run, cursor, 2);
        string fourth = run.SaveCheckpoint(dir.Path, cursor);
        (_, cursor) = Train(run, cursor, 2);
        string sixth = run.SaveCheckpoint(dir.Path, cursor);

        string torn = Directory.EnumerateFiles(sixth, "shard-*").First();
        using (var file = File.OpenWrite(torn)) file.SetLength(file.Length / 2);          // a crash mid-write
        string altered = Directory.EnumerateFiles(fourth, "shard-*").Last();
        var bytes = File.ReadAllBytes(altered);
        bytes[^1] ^= 1;                                                                    // one bit flipped, the length kept
        File.WriteAllBytes(altered, bytes);

        var resume = Checkpoint.FindResumePoint(dir.Path);
        Assert.Equal(second, resume.Directory);
        Assert.Equal(2, resume.Manifest!.Step);
        Assert.Collection(resume.Removed,
            r => Assert.Contains("step 6 failed verification", r),
            r => Assert.Contains("SHA-256", r));
        Assert.False(Directory.Exists(sixth));   // the redo writes them again, each into a fresh directory
        Assert.False(Directory.Exists(fourth));

        using var resumed = Run("tp=2", seed: 99);
        Assert.Equal(2, resumed.Restore(resume.Directory!).Step);
        var (_, redoCursor) = Train(resumed, resume.Manifest.Cursor, 2);
        Assert.Equal(fourth, resumed.SaveCheckpoint(dir.Path, redoCursor));
        Checkpoint.Verify(fourth);
    }

    [Fact]
    public void OnlyTheNewestCheckpointsAreKept()
    {
        using var dir = new Formats.TempDirectory();
        using var run = Run("tp=1");
        string abandoned = Checkpoint.StagingDirectory(dir.Path, 1, "an-attempt-that-died");
        Directory.CreateDirectory(abandoned);
        var saved = new List<string>();
        var cursor = default(DataCursor);
        for (int i = 0; i < 4; i++)
        {
            (_, cursor) = Train(run, cursor, 1);
            saved.Add(run.SaveCheckpoint(dir.Path, cursor, keep: 2));
        }
        Assert.Equal(saved[2..], Directory.EnumerateDirectories(dir.Path).Order(StringComparer.Ordinal));   // the abandoned staging directory went too
        Assert.Equal(saved[3], Checkpoint.Latest(dir.Path));
    }

    [Fact]
    public void ARedoNeverWritesIntoACompletedCheckpoint()
    {
        using var dir = new Formats.TempDirectory();
        using var run = Run("pp=2");
        var (_, cursor) = Train(run, default, 2);
        string second = run.SaveCheckpoint(dir.Path, cursor);
        (_, var fourthCursor) = Train(run, cursor, 2);
        string fourth = run.SaveCheckpoint(dir.Path, fourthCursor);
        var written = Directory.EnumerateFiles(fourth).ToDictionary(f => f, f => (File.ReadAllBytes(f), File.GetLastWriteTimeUtc(f)));

        // A run that resumed from step 2 without knowing of step 4's checkpoint redoes steps 3 and 4: it may not save over it.
        using var redo = Run("pp=2", seed: 99);
        redo.Restore(second);
        Train(redo, cursor, 2);
        Assert.Throws<IOException>(() => redo.SaveCheckpoint(dir.Path, fourthCursor));
        foreach (var (file, (bytes, time)) in written)
        {
            Assert.Equal(bytes, File.ReadAllBytes(file));
            Assert.Equal(time, File.GetLastWriteTimeUtc(file));
        }
        Assert.Equal(new[] { second, fourth }, Directory.EnumerateDirectories(dir.Path).Order(StringComparer.Ordinal));   // its staging directory is gone

        // Resuming at most from step 2 (what a job recorded) removes step 4's checkpoint first: the redo then saves its own.
        var resume = Checkpoint.FindResumePoint(dir.Path, maxStep: 2);
        Assert.Equal(second, resume.Directory);
        Assert.Contains("step 4 was never recorded", Assert.Single(resume.Removed));
        Assert.Equal(fourth, redo.SaveCheckpoint(dir.Path, fourthCursor));
        Checkpoint.Verify(fourth);
    }

    [Fact]
    public void CheckpointsArePrivate()
    {
        if (OperatingSystem.IsWindows()) return;   // Unix modes
        using var dir = new Formats.TempDirectory();
        using var run = Run("tp=2");
        string saved = run.SaveCheckpoint(dir.Path, default);
        Assert.Equal(DurableFile.PrivateDirectoryMode, File.GetUnixFileMode(saved));
        foreach (string file in Directory.EnumerateFiles(saved)) Assert.Equal(DurableFile.PrivateFileMode, File.GetUnixFileMode(file));
        Assert.Equal(3, Directory.EnumerateFiles(saved).Count());   // two shards and the manifest: no temporary names left
    }
}
