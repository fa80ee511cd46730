// The engine's telemetry (ClusterTelemetry) carries the right values, seen in-process by a MeterListener and an
// ActivityListener: tokens counted equal tokens generated, the request counted once as completed, a time to first
// token and an inter-token latency per later token, running sequences and used KV blocks back to 0 afterwards, the
// tensor-parallel all-reduce's bytes counted, and the request's steps spanning every shard of its layout; a training job's
// steps counted with their loss, gradient norm and checkpoints, each step's span holding every trainer's.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Cluster.Compute;
using Cluster.Contracts;

namespace Cluster.Tests.Grains;

[Collection(nameof(ClusterCollection))]
public sealed class TelemetryTests(ClusterFixture fixture)
{
    private const string Model = "telemetry";

    [Fact]
    public async Task ServingTelemetryCountsWhatWasServed()
    {
        var cancel = TestContext.Current.CancellationToken;
        var sums = new ConcurrentDictionary<string, double>();   // instrument (+ outcome/state) for this model -> sum
        var recordings = new ConcurrentDictionary<string, int>();
        var gauges = new ConcurrentDictionary<string, int>();       // "used@{stage}.{rank}" -> last value
        using var meters = new MeterListener();
        meters.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == ClusterTelemetry.Name) listener.EnableMeasurementEvents(instrument);
        };
        void Measured(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var tagged = new Dictionary<string, object?>(tags.ToArray());
            if (instrument.Name.StartsWith("cluster.collective")) sums.AddOrUpdate(instrument.Name + ":" + tagged["op"], value, (_, v) => v + value);
            if (!Equals(tagged.GetValueOrDefault("model"), Model)) return;
            if (instrument.Name == "cluster.kv.blocks")
            {
                gauges[$"{tagged["state"]}@{tagged["stage"]}.{tagged["rank"]}"] = (int)value;
                return;
            }
            string key = instrument.Name + (tagged.GetValueOrDefault("outcome") is { } outcome ? ":" + outcome : "");
            sums.AddOrUpdate(key, value, (_, v) => v + value);
            recordings.AddOrUpdate(key, 1, (_, n) => n + 1);
        }
        meters.SetMeasurementEventCallback<long>((i, v, t, _) => Measured(i, v, t));
        meters.SetMeasurementEventCallback<int>((i, v, t, _) => Measured(i, v, t));
        meters.SetMeasurementEventCallback<double>((i, v, t, _) => Measured(i, v, t));
        meters.Start();
        var spans = new ConcurrentBag<Activity>();
        using var activities = new ActivityListener
        {
            ShouldListenTo = source => source.Name == ClusterTelemetry.Name,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = activity =>
            {
                if (Equals(activity.GetTagItem("model"), Model)) spans.Add(activity);
            },
        };
        ActivitySource.AddActivityListener(activities);

        var scheduler = fixture.Cluster.Client.GetGrain<IInferenceSchedulerGrain>(Model);
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "tp=2,pp=2"));
        int[] prompt = await scheduler.Tokenize("Once upon a time", cancel);
        var chunks = await scheduler.GenerateAsync(new GenerationRequest { PromptTokens = prompt, MaxTokens = 8, Temperature = 0, StopAtEos = false }, cancel);
        Assert.Equal(8, chunks.Count);

        Assert.Equal(8, sums["cluster.serving.generated_tokens"]);
        Assert.Equal(prompt.Length, sums["cluster.serving.prompt_tokens"]);
        Assert.Equal(1, sums["cluster.serving.requests:completed"]);
        Assert.Equal(1, recordings["cluster.serving.time_to_first_token"]);
        Assert.Equal(7, recordings["cluster.serving.inter_token_latency"]);
        Assert.Equal(0, sums["cluster.serving.running"]);
        Assert.Equal(0, sums["cluster.serving.waiting"]);
        Assert.True(sums["cluster.serving.step_tokens"] >= prompt.Length + 7);
        Assert.True(sums.GetValueOrDefault("cluster.collective.bytes:AllReduce") > 0, "tensor-parallel all-reduces are counted");

        // Every shard of the layout ran in the request's steps, and its KV blocks are all free once the request is done.
        var shardSpans = spans.Where(s => s.OperationName == "shard.forward").Select(s => $"{s.GetTagItem("stage")}.{s.GetTagItem("rank")}").ToHashSet();
        Assert.Equal(["0.0", "0.1", "1.0", "1.1"], shardSpans.Order());
        Assert.Contains(spans, s => s.OperationName == "serving.step" && (int)s.GetTagItem("sequences")! == 1);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            meters.RecordObservableInstruments();   // the step after the request's last carries its release to every shard
            // A shard times its part after its device work; the stream may end first (the last stage's first rank sends the
            // tokens while its peer records), so the count is awaited too.
            bool everyStepTimed = recordings.GetValueOrDefault("cluster.shard.step_time") >= 4 * 8;
            if (everyStepTimed && gauges.Count == 8 && gauges.Where(g => g.Key.StartsWith("used@")).All(g => g.Value == 0)) break;
            Assert.True(DateTime.UtcNow < deadline, $"KV blocks still used: {string.Join(", ", gauges.Select(g => $"{g.Key}={g.Value}"))}; " +
                $"shard steps timed: {recordings.GetValueOrDefault("cluster.shard.step_time")} of {4 * 8}");
            await Task.Delay(100, cancel);
        }
        Assert.All(gauges.Where(g => g.Key.StartsWith("free@")), g => Assert.True(g.Value > 0));
    }

    [Fact]
    public async Task TrainingTelemetryReportsEveryStepAndCheckpoint()
    {
        var cancel = TestContext.Current.CancellationToken;
        const string job = "job-telemetry";
        var values = new ConcurrentDictionary<string, ConcurrentBag<double>>();
        using var meters = new MeterListener();
        meters.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == ClusterTelemetry.Name && instrument.Name.StartsWith("cluster.training")) listener.EnableMeasurementEvents(instrument);
        };
        var trainerTags = new ConcurrentBag<Dictionary<string, object?>>();   // of each trainer step time measured
        void Measured(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var tagged = tags.ToArray().ToDictionary(t => t.Key, t => t.Value);
            if (!Equals(tagged.GetValueOrDefault("job"), job)) return;
            values.GetOrAdd(instrument.Name, _ => []).Add(value);
            if (instrument.Name == "cluster.training.trainer_step_time") trainerTags.Add(tagged);
        }
        meters.SetMeasurementEventCallback<long>((i, v, t, _) => Measured(i, v, t));
        meters.SetMeasurementEventCallback<double>((i, v, t, _) => Measured(i, v, t));
        meters.Start();
        // Every span on the way (the engine's and Orleans' call spans), to walk from a trainer's span up to its job step.
        var spans = new ConcurrentDictionary<ActivitySpanId, Activity>();
        using var activities = new ActivityListener
        {
            ShouldListenTo = source => source.Name == ClusterTelemetry.Name || source.Name.StartsWith("Microsoft.Orleans", StringComparison.Ordinal),
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = activity => spans[activity.SpanId] = activity,
        };
        ActivitySource.AddActivityListener(activities);

        var grain = fixture.Cluster.Client.GetGrain<ITrainingJobGrain>(job);
        await grain.Submit(new TrainingJobSpec
        {
            Source = ModelSource.Random("tiny", seed: 5), Steps = 4, BatchSize = 4, SequenceLength = 32, LearningRate = 3e-3f, WarmupSteps = 1,
            Layout = "dp=2", CheckpointEvery = 2,
        });
        var status = await grain.WaitForAsync(s => s.IsEnded(), cancel);
        Assert.Equal(TrainingJobState.Completed, status.State);

        Assert.Equal(4, values["cluster.training.steps"].Sum());
        Assert.Equal(4, values["cluster.training.loss"].Count);
        Assert.All(values["cluster.training.loss"], loss => Assert.True(double.IsFinite(loss) && loss > 0));
        Assert.Contains(values["cluster.training.loss"], loss => Math.Abs(loss - status.Loss!.Value) < 1e-6);   // the last step's loss is the job's
        Assert.Equal(4, values["cluster.training.step_time"].Count);
        Assert.Equal(2, values["cluster.training.checkpoint_bytes"].Count);   // steps 2 and 4
        Assert.All(values["cluster.training.checkpoint_bytes"], bytes => Assert.True(bytes > 0));
        Assert.Equal(4, values["cluster.training.gradient_norm"].Count);
        Assert.All(values["cluster.training.gradient_norm"], norm => Assert.True(double.IsFinite(norm) && norm > 0));
        // MFU against the measured FMA ceiling of the cores the trainers use: a fraction, never above one.
        Assert.Equal(4, values["cluster.training.mfu"].Count);
        Assert.All(values["cluster.training.mfu"], mfu => Assert.True(mfu > 0 && mfu <= 1, $"MFU {mfu}"));
        // Each trainer's step time, tagged with where it ran: both replicas (dp=2), stage 0, rank 0, on a named silo.
        Assert.Equal(8, values["cluster.training.trainer_step_time"].Count);
        Assert.Equal([0, 0, 0, 0, 1, 1, 1, 1], trainerTags.Select(t => (int)t["replica"]!).Order());
        Assert.All(trainerTags, t => Assert.True(Equals(t["stage"], 0) && Equals(t["rank"], 0) && t["silo"] is string { Length: > 0 }, string.Join(", ", t)));

        // One span per job step, and under each the step of both trainers (dp=2), through Orleans' call spans.
        var steps = spans.Values.Where(s => s.OperationName == "training.step" && Equals(s.GetTagItem("job"), job)).ToDictionary(s => s.SpanId);
        Assert.Equal(4, steps.Count);
        Activity? JobStepOf(Activity span)
        {
            for (var at = span; at is not null; at = spans.GetValueOrDefault(at.ParentSpanId))
                if (steps.TryGetValue(at.SpanId, out var step)) return step;
            return null;
        }
        var trainerSteps = spans.Values.Where(s => s.OperationName == "trainer.step").Select(s => (Trainer: s, Step: JobStepOf(s)))
            .Where(t => t.Step is not null).ToList();
        Assert.Equal(8, trainerSteps.Count);
        Assert.All(steps.Values, step => Assert.Equal([0, 1], trainerSteps.Where(t => t.Step == step).Select(t => (int)t.Trainer.GetTagItem("index")!).Order()));
    }
}
