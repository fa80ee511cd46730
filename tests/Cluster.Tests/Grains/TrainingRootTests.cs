// The training root: by default in the user's data directory, not the shared temp folder; on Unix created 0700 with
// the job records, running-job markers and checkpoints in it 0600; and a silo never resumes a job recorded under
// another cluster id, even when both clusters share the directory.
using Cluster.Contracts;
using Cluster.Grains;
using Cluster.Training;

namespace Cluster.Tests.Grains;

public sealed class TrainingRootTests
{
    private static TrainingJobSpec Spec(int steps) => new()
    {
        Source = ModelSource.Random("tiny", seed: 3), Steps = steps, BatchSize = 4, SequenceLength = 32, LearningRate = 3e-3f, WarmupSteps = 2,
        CheckpointEvery = 5,
    };

    [Fact]
    public void TheDefaultRootIsInTheUsersDataDirectory()
    {
        string root = new TrainingOptions().Root;
        Assert.StartsWith(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), root);
        Assert.DoesNotContain(Path.GetTempPath(), root);
    }

    [Fact]
    public async Task TheRootAndWhatAJobWritesThereArePrivate()
    {
        if (OperatingSystem.IsWindows()) return;   // Unix modes
        using var temp = new Formats.TempDirectory();
        string root = Path.Combine(temp.Path, "training");   // not there yet: the silo creates it
        await using var cluster = await TestClusters.StartAsync(silos: 1, trainingRoot: root, clusterId: "private-cluster");
        var cancel = TestContext.Current.CancellationToken;
        Assert.Equal(DurableFile.PrivateDirectoryMode, File.GetUnixFileMode(root));

        var job = cluster.Client.GetGrain<ITrainingJobGrain>("job-private");
        await job.Submit(Spec(100_000));
        await job.WaitForAsync(s => s.CheckpointStep >= 5, cancel);
        string marker = Path.Combine(root, "running", "job-private");
        Assert.Equal("private-cluster", File.ReadAllText(marker));   // the cluster it runs under
        Assert.Equal(DurableFile.PrivateFileMode, File.GetUnixFileMode(marker));
        await job.Cancel();
        Assert.Equal(TrainingJobState.Cancelled, (await job.WaitForAsync(s => s.IsEnded(), cancel)).State);

        foreach (string directory in new[] { "running", "records", "jobs", Path.Combine("jobs", "job-private") })
            Assert.Equal(DurableFile.PrivateDirectoryMode, File.GetUnixFileMode(Path.Combine(root, directory)));
        string[] records = [.. Directory.EnumerateFiles(Path.Combine(root, "records"))];
        string[] checkpoints = [.. Directory.EnumerateFiles(Path.Combine(root, "jobs", "job-private"), "*", SearchOption.AllDirectories)];
        Assert.NotEmpty(records);
        Assert.Contains(checkpoints, f => f.EndsWith(Checkpoint.ManifestFile));
        foreach (string file in records.Concat(checkpoints)) Assert.Equal(DurableFile.PrivateFileMode, File.GetUnixFileMode(file));
        foreach (string directory in Directory.EnumerateDirectories(Path.Combine(root, "jobs", "job-private")))
            Assert.Equal(DurableFile.PrivateDirectoryMode, File.GetUnixFileMode(directory));
    }

    [Fact]
    public async Task ASiloNeverResumesAJobOfAnotherCluster()
    {
        using var root = new Formats.TempDirectory();
        await using var owner = await TestClusters.StartAsync(silos: 1, trainingRoot: root.Path, clusterId: "cluster-a");
        await using var other = await TestClusters.StartAsync(silos: 1, trainingRoot: root.Path, clusterId: "cluster-b");
        var cancel = TestContext.Current.CancellationToken;
        var job = owner.Client.GetGrain<ITrainingJobGrain>("job-of-cluster-a");
        await job.Submit(Spec(100_000));
        await job.WaitForAsync(s => s.CheckpointStep >= 5, cancel);

        await Task.Delay(TimeSpan.FromSeconds(3), cancel);   // the other cluster's keeper looks at the markers every second: it leaves this one alone
        // Asked directly, the other cluster reads the job's record but does not run it: its view stays where the record was.
        var seenThere = await other.Client.GetGrain<ITrainingJobGrain>("job-of-cluster-a").Status();
        Assert.Equal(0, seenThere!.Restarts);
        await Task.Delay(TimeSpan.FromSeconds(1), cancel);
        Assert.Equal(seenThere, await other.Client.GetGrain<ITrainingJobGrain>("job-of-cluster-a").Status());
        await Assert.ThrowsAsync<ArgumentException>(() => other.Client.GetGrain<ITrainingJobGrain>("job-of-cluster-a").Cancel());   // nor writes its record

        await job.Cancel();
        var status = await job.WaitForAsync(s => s.IsEnded(), cancel);
        Assert.Equal(TrainingJobState.Cancelled, status.State);
        Assert.Equal(0, status.Restarts);
        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(cancel)) events.Add(e);
        Assert.Equal(Enumerable.Range(1, status.Step), events.Where(e => e.IsStep).Select(e => e.Step));   // run once, by its own cluster
    }
}
