// Training jobs on the 2-silo cluster: a data-parallel (ZeRO-3) job over both silos runs to completion with its loss
// falling, publishing every step; the storyteller trains on generated stories; a shared-expert MoE trained under ep=2
// is published (GGUF or safetensors) and served; a cancelled job stops; a bad spec is refused.
using Cluster.Contracts;
using Cluster.Grains;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Cluster.Tests.Grains;

[Collection(nameof(ClusterCollection))]
public sealed class TrainingJobTests(ClusterFixture fixture)
{
    private IGrainFactory Grains => fixture.Cluster.Client;

    private TrainingJobSpec Spec(int steps) => new()
    {
        Source = ModelSource.Random("tiny", seed: 3), Steps = steps, BatchSize = 4, SequenceLength = 32, LearningRate = 3e-3f,
        WarmupSteps = 2, Layout = "dp=2", Silos = [.. fixture.Cluster.Silos.Select(s => s.Name)],
    };

    [Fact]
    public async Task ADataParallelJobRunsToCompletionAndItsLossFalls()
    {
        var job = Grains.GetGrain<ITrainingJobGrain>("job-complete");
        var submitted = await job.Submit(Spec(30) with { ZeroStage = 3, CheckpointEvery = 10 });   // ZeRO-3 across the silos, checkpoints gathered
        Assert.Equal(30, submitted.Steps);
        Assert.Equal(submitted.Id, (await job.Submit(Spec(30) with { ZeroStage = 3, CheckpointEvery = 10 })).Id);   // the same spec again (new lists) is the same job

        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(TestContext.Current.CancellationToken)) events.Add(e);

        Assert.True(events[^1].State == TrainingJobState.Completed, $"{events[^1].State}: {events[^1].Error}");
        var steps = events.Where(e => e.IsStep).ToList();
        Assert.Equal(Enumerable.Range(1, 30), steps.Select(e => e.Step));
        Assert.True(steps[^1].Loss < 0.7f * steps[0].Loss, $"loss went from {steps[0].Loss} to {steps[^1].Loss}");
        var status = await job.Status();
        Assert.Equal(TrainingJobState.Completed, status!.State);
        Assert.Equal(30, status.Step);
    }

    [Fact]
    public async Task ALoraJobOnAPipelinePublishesItsAdapterAndTheModelServesIt()
    {
        var job = Grains.GetGrain<ITrainingJobGrain>("job-lora");
        await job.Submit(Spec(20) with
        {
            Layout = "pp=2,dp=2", MicroBatches = 2, BatchSize = 8, CheckpointEvery = 10, ServeAs = "tiny-lora",
            Lora = new LoraSettings(Rank: 4, Alpha: 8, Targets: ["wq", "wv", "w2"]),
        });
        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(TestContext.Current.CancellationToken)) events.Add(e);
        var status = await job.Status();
        Assert.True(status!.State == TrainingJobState.Completed, status.Error);
        Assert.Equal("tiny-lora", status.Model);
        var steps = events.Where(e => e.IsStep).ToList();
        Assert.True(steps[^1].Loss < steps[0].Loss, $"loss went from {steps[0].Loss} to {steps[^1].Loss}");

        // Served on the base model with the adapter merged: its greedy text (it has learnt to stop early) differs from the base model's.
        var cancel = TestContext.Current.CancellationToken;
        var request = new GenerationRequest { Prompt = "12+34=", MaxTokens = 12, Temperature = 0 };
        var tuned = await Grains.GetGrain<IInferenceSchedulerGrain>("tiny-lora").GenerateAsync(request, cancel);
        var baseScheduler = Grains.GetGrain<IInferenceSchedulerGrain>("tiny-base-for-lora");
        await baseScheduler.Serve(new ModelServing(Spec(1).Source));
        var plain = await baseScheduler.GenerateAsync(request, cancel);
        Assert.NotEqual(string.Concat(plain.Select(c => c.Text)), string.Concat(tuned.Select(c => c.Text)));
    }

    /// <summary>
    /// A Qwen2-MoE-shaped model (a gated shared expert beside the routed ones) trained with its experts over the two
    /// silos (ep=2) is published and served: as GGUF's qwen2moe, or, where its top-k weights are renormalized (which
    /// llama.cpp's qwen2moe does not do), as a safetensors checkpoint.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ASharedExpertModelTrainedUnderEpIsPublishedAndServed(bool renormalized)
    {
        var source = ModelSource.Random("qwen-moe-tiny", seed: 3);
        if (renormalized)   // a checkpoint inside the model roots: the training root's jobs folder is one
        {
            string root = fixture.Cluster.GetSiloServiceProvider(fixture.Cluster.Silos[0].SiloAddress).GetRequiredService<IOptions<TrainingOptions>>().Value.Root;
            string checkpoint = Path.Combine(root, "jobs", "sources", "qwen-moe-renormalized");
            var preset = Cluster.Model.RandomModel.Preset("qwen-moe-tiny");
            var model = Cluster.Model.RandomModel.Create(preset with { Moe = preset.Moe! with { NormalizeTopK = true } }, seed: 3);
            Cluster.Model.Formats.SafetensorsWriter.Write(model, checkpoint);
            source = ModelSource.File(checkpoint);
        }
        string id = renormalized ? "qwen-moe-renormalized" : "qwen-moe-trained";
        var job = Grains.GetGrain<ITrainingJobGrain>("job-" + id);
        await job.Submit(Spec(3) with { Source = source, Layout = "ep=2", ServeAs = id });
        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(TestContext.Current.CancellationToken)) events.Add(e);
        var status = await job.Status();
        Assert.True(status!.State == TrainingJobState.Completed, status.Error);
        Assert.Equal(id, status.Model);

        var request = new GenerationRequest { Prompt = "12+34=", MaxTokens = 8, Temperature = 0 };
        var served = await Grains.GetGrain<IInferenceSchedulerGrain>(id).GenerateAsync(request, TestContext.Current.CancellationToken);
        Assert.NotEmpty(served);
    }

    [Fact]
    public async Task AStoriesJobTrainsTheStorytellerOnGeneratedStories()
    {
        var job = Grains.GetGrain<ITrainingJobGrain>("job-stories");
        await job.Submit(Spec(6) with { Source = ModelSource.Random("storyteller", seed: 3), Dataset = "stories", SequenceLength = 128 });
        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(TestContext.Current.CancellationToken)) events.Add(e);

        Assert.True(events[^1].State == TrainingJobState.Completed, $"{events[^1].State}: {events[^1].Error}");
        var steps = events.Where(e => e.IsStep).ToList();
        Assert.Equal(6, steps.Count);
        Assert.True(steps[^1].Loss < steps[0].Loss, $"loss went from {steps[0].Loss} to {steps[^1].Loss}");
    }

    [Fact]
    public async Task ACancelledJobStops()
    {
        var job = Grains.GetGrain<ITrainingJobGrain>("job-cancel");
        await job.Submit(Spec(100_000));
        var events = new List<TrainingJobEvent>();
        await foreach (var e in job.Events().WithCancellation(TestContext.Current.CancellationToken))
        {
            events.Add(e);
            if (e.Step == 2) await job.Cancel();
        }
        Assert.Equal(TrainingJobState.Cancelled, events[^1].State);
        Assert.True(events[^1].Step < 100, $"stopped at step {events[^1].Step}");
    }

    [Fact]
    public async Task BadSpecsAreRefusedAndUnknownJobsHaveNoStatus()
    {
        var job = Grains.GetGrain<ITrainingJobGrain>("job-bad");
        await Assert.ThrowsAsync<ArgumentException>(() => job.Submit(Spec(10) with { BatchSize = 1 }));           // fewer sequences than replicas
        await Assert.ThrowsAsync<ArgumentException>(() => job.Submit(Spec(10) with { LearningRate = float.NaN }));
        await Assert.ThrowsAsync<ArgumentException>(() => job.Submit(Spec(10) with { Dataset = "jsonl" }));   // without documents
        await Assert.ThrowsAsync<ArgumentException>(() => job.Submit(Spec(10) with { Dataset = "stories", Documents = ["Once upon a time."] }));
        await Assert.ThrowsAsync<ArgumentException>(() => job.Submit(Spec(10) with { Layout = "tp=2", Lora = new LoraSettings(4, 8, ["wq"]) }));
        await Assert.ThrowsAsync<ArgumentException>(() => job.Submit(Spec(10) with { Lora = new LoraSettings(4, 8, ["attention"]) }));
        await Assert.ThrowsAsync<ArgumentException>(() => job.Submit(Spec(10) with { KeepCheckpoints = 0 }));
        Assert.Null(await job.Status());
        Assert.Null(await Grains.GetGrain<ITrainingJobGrain>("job-none").Cancel());
    }
}
