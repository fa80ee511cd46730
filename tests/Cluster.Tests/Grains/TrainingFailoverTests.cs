// A training job survives losing a silo: killing the silo that holds a pipeline stage's trainer mid-job, the job
// re-places the lost shard, restores every trainer from the last checkpoint and finishes without being resubmitted;
// killing the silo that holds the job grain itself, a keeper on a surviving silo wakes it and it resumes from its
// durable record with nobody calling it; when the newest checkpoint is found damaged on the resume, the job falls back
// to the one before. Either way its step log counts every step once.
using Cluster.Contracts;
using Cluster.Training;

namespace Cluster.Tests.Grains;

public sealed class TrainingFailoverTests
{
    /// <summary>A trainer's silo killed mid-job: stage 1's under pp=2, or under ep=2 the one holding half an MoE model's experts.</summary>
    [Theory]
    [InlineData("tiny", "pp=2")]
    [InlineData("moe-tiny", "ep=2")]
    public async Task AJobResumesFromItsLastCheckpointWhenATrainersSiloIsKilled(string preset, string layout)
    {
        await using var cluster = await TestClusters.StartAsync(silos: 3);
        var cancel = TestContext.Current.CancellationToken;
        var victim = cluster.Silos[2];
        var job = cluster.Client.GetGrain<ITrainingJobGrain>("job-failover-" + preset);
        const int steps = 300;
        await job.Submit(new TrainingJobSpec
        {
            Source = ModelSource.Random(preset, seed: 3), Steps = steps, BatchSize = 4, SequenceLength = 32, LearningRate = 3e-3f,
            WarmupSteps = 2, Layout = layout, Silos = [cluster.Silos[1].Name, victim.Name], CheckpointEvery = 10,
        });

        var status = await job.WaitForAsync(s => s.CheckpointStep >= 20, cancel);
        Assert.True(status.Step < steps, "the job ended before the silo could be killed");
        await cluster.KillSiloAsync(victim, cancel);   // no graceful shutdown: stage 1's trainer dies with it

        var events = await AssertFinishedOnceEach(job, steps, cancel);
        Assert.Contains(events, e => e.Note?.Contains("resumed from the checkpoint") == true);
    }

    [Fact]
    public async Task AJobWhoseOwnSiloIsKilledIsWokenAndResumesByItself()
    {
        using var root = new Formats.TempDirectory();
        await using var cluster = await TestClusters.StartAsync(silos: 3, trainingRoot: root.Path);
        var cancel = TestContext.Current.CancellationToken;
        var victim = cluster.Silos[2];
        string id = $"job-self@{victim.Name}";   // the job grain lives on the victim
        var job = cluster.Client.GetGrain<ITrainingJobGrain>(id);
        const int steps = 300;
        await job.Submit(new TrainingJobSpec
        {
            Source = ModelSource.Random("tiny", seed: 5), Steps = steps, BatchSize = 4, SequenceLength = 32, LearningRate = 3e-3f,
            WarmupSteps = 2, Layout = "dp=2", Silos = [cluster.Silos[0].Name, cluster.Silos[1].Name], CheckpointEvery = 10,
        });

        var status = await job.WaitForAsync(s => s.CheckpointStep >= 20, cancel);
        Assert.True(status.Step < steps, "the job ended before the silo could be killed");
        await cluster.KillSiloAsync(victim, cancel);

        // Nobody calls the job now: the keeper on a surviving silo wakes it, and it resumes from its durable record,
        // which shows as checkpoints past the one it was killed after.
        string checkpoints = Path.Combine(root.Path, "jobs", Uri.EscapeDataString(id));
        int killedAfter = Checkpoint.ReadManifest(Checkpoint.Latest(checkpoints)!).Step;
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (Checkpoint.ReadManifest(Checkpoint.Latest(checkpoints)!).Step <= killedAfter + 10 && DateTime.UtcNow < deadline)
            await Task.Delay(200, cancel);
        Assert.True(Checkpoint.ReadManifest(Checkpoint.Latest(checkpoints)!).Step > killedAfter + 10, "the job did not go on by itself");
        await AssertFinishedOnceEach(job, steps, cancel);
    }

    [Fact]
    public async Task AResumeFallsBackPastADamagedCheckpoint()
    {
        using var root = new Formats.TempDirectory();
        await using var cluster = await TestClusters.StartAsync(silos: 3, trainingRoot: root.Path);
        var cancel = TestContext.Current.CancellationToken;
        var victim = cluster.Silos[2];
        string id = $"job-torn@{cluster.Silos[0].Name}";   // the job grain stays up; the trainer of stage 1 dies
        var job = cluster.Client.GetGrain<ITrainingJobGrain>(id);
        const int steps = 200;
        await job.Submit(new TrainingJobSpec
        {
            Source = ModelSource.Random("tiny", seed: 7), Steps = steps, BatchSize = 4, SequenceLength = 32, LearningRate = 3e-3f,
            WarmupSteps = 2, Layout = "pp=2", Silos = [cluster.Silos[1].Name, victim.Name], CheckpointEvery = 10,
        });
        await job.WaitForAsync(s => s.CheckpointStep >= 20, cancel);
        await cluster.KillSiloAsync(victim, cancel);   // the job's step now waits on the dead trainer until its silo is declared dead
        await Task.Delay(500, cancel);                  // a checkpoint whose shards were all written before may still be renamed into place

        // Its newest checkpoint is torn, as by a crash of the disk under it: the resume takes the one before.
        string checkpoints = Path.Combine(root.Path, "jobs", Uri.EscapeDataString(id));
        string newest = Checkpoint.Latest(checkpoints)!;
        int damaged = Checkpoint.ReadManifest(newest).Step;
        using (var shard = File.OpenWrite(Directory.EnumerateFiles(newest, "shard-*").First())) shard.SetLength(shard.Length - 1);

        var events = await AssertFinishedOnceEach(job, steps, cancel);
        Assert.Contains(events, e => e.Note?.Contains($"the checkpoint of step {damaged} failed verification") == true);
        Assert.Contains(events, e => e.Note == $"resumed from the checkpoint of step {damaged - 10}");
        Assert.Equal(3, Directory.EnumerateDirectories(checkpoints).Count());   // keep_checkpoints (3) kept; no staging directories left
        Assert.Equal(steps, Checkpoint.ReadManifest(Checkpoint.Latest(checkpoints)!).Step);
    }

    /// <summary>The job completes all its steps after at least one restart, and its step log holds each step once.</summary>
    private static async Task<List<TrainingJobEvent>> AssertFinishedOnceEach(ITrainingJobGrain job, int steps, CancellationToken cancel)
    {
        var status = await job.WaitForAsync(s => s.IsEnded(), cancel);
        Assert.True(status.State == TrainingJobState.Completed, $"{status.State}: {status.Error}");
        Assert.Equal(steps, status.Step);
        Assert.True(status.Restarts >= 1, "the job never restarted");
        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(cancel)) events.Add(e);
        Assert.Equal(Enumerable.Range(1, steps), events.Where(e => e.IsStep).Select(e => e.Step));   // no step counted twice
        return events;
    }
}
