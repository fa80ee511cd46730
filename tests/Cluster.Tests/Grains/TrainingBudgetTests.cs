// Failure budgets of training jobs: a failure that repeats on every attempt (here a checkpoint that cannot be written,
// as on a full disk) fails the job after TrainingOptions.StepRetries with its cause; a job whose trainer's silo dies
// at every attempt fails after MaxSiloLosses while the silo left goes on serving; a job whose own silo dies that often
// is not resumed; a cancelled job whose silo dies before it has stopped is not resumed either; and jobs beyond
// TrainingOptions.MaxRunningJobs wait queued until a running one ends.
using Cluster.Contracts;
using Cluster.Grains;
using Orleans.Configuration;

namespace Cluster.Tests.Grains;

public sealed class TrainingBudgetTests
{
    private static TrainingJobSpec Spec(int steps) => new()
    {
        Source = ModelSource.Random("tiny", seed: 3), Steps = steps, BatchSize = 4, SequenceLength = 32, LearningRate = 3e-3f, WarmupSteps = 2,
    };

    [Fact]
    public async Task AFailureThatRepeatsFailsTheJobAfterItsRetriesWithItsCause()
    {
        using var root = new Formats.TempDirectory();
        await using var cluster = await TestClusters.StartAsync(silos: 2, trainingRoot: root.Path, training: o => o.RetryBackoff = TimeSpan.FromMilliseconds(50));
        var cancel = TestContext.Current.CancellationToken;
        const string id = "job-disk-full";
        // A file where the job's checkpoints go: every checkpoint fails to be written, at every attempt.
        Directory.CreateDirectory(Path.Combine(root.Path, "jobs"));
        File.WriteAllText(Path.Combine(root.Path, "jobs", id), "in the way");
        var job = cluster.Client.GetGrain<ITrainingJobGrain>(id);
        await job.Submit(Spec(4) with { CheckpointEvery = 2 });

        var status = await job.WaitForAsync(s => s.IsEnded(), cancel);
        Assert.Equal(TrainingJobState.Failed, status.State);
        Assert.Contains($"failed {new TrainingOptions().StepRetries + 1} times in a row", status.Error);
        Assert.Contains("IOException", status.Error);
        Assert.Equal(new TrainingOptions().StepRetries + 1, status.Restarts);
    }

    [Fact]
    public async Task AJobThatTakesDownItsTrainersSiloEveryTimeFailsAndTheSiloLeftServes()
    {
        const int maxLosses = 2;
        await using var cluster = await TestClusters.StartAsync(silos: 1 + maxLosses,
            training: o => (o.MaxSiloLosses, o.RetryBackoff) = (maxLosses, TimeSpan.FromMilliseconds(200)),
            silo: (options, silo) =>
            {
                // The primary silo (the gateway, never killed) hosts no trainers: every attempt's trainer lands on a silo to kill.
                if (options.GatewayPort != 0) silo.Configure<GrainTypeOptions>(o => o.Classes.Remove(typeof(TrainerGrain)));
            });
        var cancel = TestContext.Current.CancellationToken;
        var primary = cluster.Silos[0];
        string id = $"job-crash-loop@{primary.Name}";
        var job = cluster.Client.GetGrain<ITrainingJobGrain>(id);
        var trainer = cluster.Client.GetGrain<ITrainerGrain>(ShardKey.Create(id, 0, 0, 0)).GetGrainId();
        await job.Submit(Spec(100_000) with { CheckpointEvery = 100_000 });

        // Each attempt, once its trainer has started, has that trainer's silo killed, as if the job ran it out of memory.
        int kills = 0;
        TrainingJobEvent? last = null;
        await foreach (var e in job.Events().WithCancellation(cancel))
        {
            last = e;
            if (e.Note?.StartsWith("started:") != true) continue;
            Assert.True(cluster.TryGetGrainContext(trainer, out var context), "the trainer is not active on a live silo");
            var host = cluster.Silos.Single(s => s.SiloAddress.Equals(context.Address.SiloAddress));
            Assert.NotEqual(primary, host);
            await cluster.KillSiloAsync(host, cancel);
            kills++;
        }

        Assert.Equal(maxLosses, kills);
        Assert.Equal(TrainingJobState.Failed, last!.State);
        Assert.Contains($"took down its silo {maxLosses} times", last.Error);
        var status = await job.Status();
        Assert.Equal(TrainingJobState.Failed, status!.State);

        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("served-after-the-crash-loop");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny));
        var chunks = await scheduler.GenerateAsync(new GenerationRequest { Prompt = "hello", MaxTokens = 4, Temperature = 0 }, cancel);
        Assert.NotEmpty(chunks);
    }

    [Fact]
    public async Task AJobWhoseOwnSiloDiesTooOftenIsNotResumed()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 2, training: o => o.MaxSiloLosses = 1);
        var cancel = TestContext.Current.CancellationToken;
        var victim = cluster.Silos[1];
        var job = cluster.Client.GetGrain<ITrainingJobGrain>($"job-own-silo@{victim.Name}");
        await job.Submit(Spec(100_000) with { Silos = [victim.Name] });   // the job and its trainer on the victim
        await job.WaitForAsync(s => s.Step >= 2, cancel);
        await cluster.KillSiloAsync(victim, cancel);

        var status = await job.WaitForAsync(s => s.IsEnded(), cancel);   // activated again on the primary: failed, not resumed
        Assert.Equal(TrainingJobState.Failed, status.State);
        Assert.Contains("took down its silo 1 times", status.Error);
        Assert.Equal(0, status.Restarts);
    }

    [Fact]
    public async Task ACancelledJobIsNotResumedWhenItsSiloDiesBeforeItStopped()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 3);
        var cancel = TestContext.Current.CancellationToken;
        var (trainerSilo, jobSilo) = (cluster.Silos[1], cluster.Silos[2]);
        var job = cluster.Client.GetGrain<ITrainingJobGrain>($"job-cancel-then-die@{jobSilo.Name}");
        await job.Submit(Spec(100_000) with { Silos = [trainerSilo.Name], CheckpointEvery = 10 });
        await job.WaitForAsync(s => s.CheckpointStep >= 10, cancel);

        await cluster.KillSiloAsync(trainerSilo, cancel);   // the job's step now waits on a dead trainer: it cannot stop yet
        Assert.NotNull(await job.Cancel());
        await cluster.KillSiloAsync(jobSilo, cancel);       // and its own silo dies before it has

        var status = await job.WaitForAsync(s => s.IsEnded(), cancel);   // activated again on the primary
        Assert.Equal(TrainingJobState.Cancelled, status.State);
        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(cancel)) events.Add(e);
        Assert.DoesNotContain(events, e => e.Note?.StartsWith("resumed") == true);
    }

    [Fact]
    public async Task JobsBeyondTheRunningLimitWaitQueuedUntilASlotFrees()
    {
        using var root = new Formats.TempDirectory();
        await using var cluster = await TestClusters.StartAsync(silos: 1, trainingRoot: root.Path, training: o => o.MaxRunningJobs = 1);
        var cancel = TestContext.Current.CancellationToken;
        var first = cluster.Client.GetGrain<ITrainingJobGrain>("job-first");
        var second = cluster.Client.GetGrain<ITrainingJobGrain>("job-second");
        await first.Submit(Spec(100_000));   // runs until cancelled
        await first.WaitForAsync(s => s.State == TrainingJobState.Running, cancel);
        await second.Submit(Spec(4));

        await Task.Delay(TimeSpan.FromSeconds(3), cancel);   // time enough to have started, were there a slot
        Assert.Equal(TrainingJobState.Queued, (await second.Status())!.State);
        Assert.Equal(0, (await second.Status())!.Step);
        bool toldWhy = false;
        await foreach (var e in second.Events().WithCancellation(cancel))
            if (toldWhy = e.Note?.StartsWith("queued:") == true) break;
        Assert.True(toldWhy, "the queued job's events say why it waits");

        await first.Cancel();
        var done = await second.WaitForAsync(s => s.IsEnded(), cancel);
        Assert.Equal(TrainingJobState.Completed, done.State);
        Assert.Equal(TrainingJobState.Cancelled, (await first.Status())!.State);
    }
}
