// A trainer (see ITrainerGrain): one shard of a training run. Its ShardTrainer lives on the grain's DeviceWorker
// thread; the step's collectives and pipeline messages block that thread while the peers' messages come in through
// Deliver, which interleaves. Three groups, each on its own channel of the one inbox: the stage's tensor-parallel
// ranks, the replica's pipeline stages at this rank, and this shard's data-parallel replicas.
using System.Diagnostics;
using System.Runtime.InteropServices;
using Cluster.Compute;
using Cluster.Compute.Collectives;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;
using Microsoft.Extensions.Options;
using Orleans.Concurrency;

namespace Cluster.Grains;

[PinnedShardPlacement, Reentrant]
public sealed class TrainerGrain(IGrainFactory grains, IOptions<ShardOptions> options, ILocalSiloDetails silo, DeviceSlots devices) : Grain, ITrainerGrain
{
    private const int TensorChannel = 0, PipelineChannel = 1, DataChannel = 2;

    /// <param name="Tags">job, replica, stage, rank, silo: the tags of this trainer's telemetry.</param>
    private sealed record Run(TrainerAssignment Assignment, ShardTrainer Trainer, KeyValuePair<string, object?>[] Tags);

    private readonly EpochInbox _inbox = new();
    private DeviceLease? _lease;   // this trainer's device (DeviceSlots), held while the grain is active
    // States copied after a step (CaptureAfter), by step number, until SaveCheckpoint writes them; either side may come first.
    private readonly Dictionary<int, TaskCompletionSource<ShardState>> _captures = [];
    private DeviceWorker? _worker;
    private Run? _run;

    private DeviceWorker Worker => _worker ??= new DeviceWorker($"trainer {this.GetPrimaryKeyString()}");

    public async Task<TrainerStarted> Start(TrainerAssignment a)
    {
        var layout = ParseLayout(a.Layout);
        if (a.Shards.Length != layout.DataParallel * layout.PipelineStages * layout.StageRanks || (uint)a.Index >= (uint)a.Shards.Length)
            throw new ArgumentException($"shard {a.Index} of {a.Shards.Length} keys does not fit layout {layout}");
        if (a.ZeroStage is < 0 or > 3) throw new ArgumentException($"ZeRO stage {a.ZeroStage} is not supported (0 to 3)");
        var mailbox = _inbox.Begin(a.Epoch, new InvalidOperationException($"trainer {this.GetPrimaryKeyString()}: epoch {a.Epoch} began"));
        DropCaptures(new InvalidOperationException($"trainer {this.GetPrimaryKeyString()}: epoch {a.Epoch} began"));
        var previous = _run;
        _run = null;
        int threads = options.Value.DeviceThreads;
        var (trainer, shard) = await Worker.Run(() =>
        {
            previous?.Trainer.Dispose();
            _lease ??= devices.Take(this.GetPrimaryKeyString());
            var spec = default(ShardSpec);
            var loaded = ModelSources.Load(a.Source, c => WeightFilter.Cutting(c, spec = ShardingPlan.Create(c, layout).Shards[a.Index]));   // each layer cut to this rank as it is read
            var plan = ShardingPlan.Create(loaded.Config, layout);
            spec = plan.Shards[a.Index];
            var groups = Groups(a, plan, spec, mailbox);
            var mode = new TrainingMode
            {
                Lora = a.Lora is { } l ? new LoraOptions { Rank = l.Rank, Alpha = l.Alpha, Targets = l.Targets, Dropout = l.Dropout, QuantizeBase = l.QuantizeBase } : null,
                ActivationCheckpointing = a.ActivationCheckpointing,
                Device = _lease.Accelerator,   // null on a CPU device: the host's kernels
                Precision = a.Precision switch
                {
                    "fp32" => Precision.Float32,
                    "bf16" => Precision.BFloat16,
                    _ => throw new ArgumentException($"precision must be 'fp32' or 'bf16', not '{a.Precision}'"),
                },
            };
            var model = new TrainableModel(loaded.Config, ShardWeights.FromCutLoad(loaded.Config, loaded.Weights, spec), threads, groups.Tensor, mode);
            var trainer = new ShardTrainer(model, new OptimizerOptions
            {
                LearningRate = a.LearningRate, MinLearningRate = a.MinLearningRate, WarmupSteps = a.WarmupSteps,
                TotalSteps = a.TotalSteps, WeightDecay = a.WeightDecay, ClipNorm = a.ClipNorm,
            }, groups, a.ZeroStage);
            if (a.RestoreFrom is not null) Checkpoint.Restore(a.RestoreFrom, trainer);
            return (trainer, spec);
        });
        _run = new Run(a, trainer, [new("job", ShardKey.ModelId(this.GetPrimaryKeyString())), new("replica", shard.Replica),
            new("stage", shard.Stage), new("rank", shard.Rank), new("silo", silo.Name)]);
        // An active grain has its silo. FmaCeiling measures once per process (~0.1 s, on the first trainer's start).
        double flopsPerCore = _lease!.Accelerator is null ? await Worker.Run(() => FmaCeiling.FlopsPerCore) : 0;
        return new TrainerStarted(GrainContext.Address.SiloAddress!, threads, Environment.ProcessorCount, flopsPerCore);
    }

    /// <summary>The shard's groups: peers by key, in rank order, each group on its own channel.</summary>
    private TrainingGroups Groups(TrainerAssignment a, ShardingPlan plan, ShardSpec spec, CollectiveMailbox mailbox)
    {
        var layout = plan.Layout;
        string Key(int replica, int stage, int rank) => a.Shards[(replica * layout.PipelineStages + stage) * layout.StageRanks + rank];
        ICollectiveTransport Transport(string[] peers, int rank, int channel) =>
            new GrainGroupTransport(key => grains.GetGrain<ITrainerGrain>(key), peers, rank, a.Epoch, mailbox, channel);
        var tensor = layout.StageRanks > 1
            ? new CollectiveGroup(Transport([.. Enumerable.Range(0, layout.StageRanks).Select(r => Key(spec.Replica, spec.Stage, r))], spec.Rank, TensorChannel)) : null;
        var pipeline = layout.PipelineStages > 1
            ? Transport([.. Enumerable.Range(0, layout.PipelineStages).Select(s => Key(spec.Replica, s, spec.Rank))], spec.Stage, PipelineChannel) : null;
        var data = layout.DataParallel > 1
            ? new CollectiveGroup(Transport([.. Enumerable.Range(0, layout.DataParallel).Select(r => Key(r, spec.Stage, spec.Rank))], spec.Replica, DataChannel)) : null;
        return new TrainingGroups(tensor, pipeline, data);
    }

    private static ParallelLayout ParseLayout(string text)
    {
        try { return ParallelLayout.Parse(text); }
        catch (FormatException e) { throw new ArgumentException(e.Message, nameof(text), e); }
    }

    private Run Current(long epoch) => _run is { } r && r.Assignment.Epoch == epoch
        ? r : throw new InvalidOperationException($"trainer {this.GetPrimaryKeyString()} is not started for epoch {epoch}");

    public async Task<TrainingStepReport> Step(TrainingStepMessage step)
    {
        var run = Current(step.Epoch);
        // A child of the job's "training.step" span (through the Orleans call that brought the step here).
        using var span = ClusterTelemetry.Source.StartActivity("trainer.step", ActivityKind.Internal, parentContext: default,
            tags: [new("trainer", this.GetPrimaryKeyString()), new("index", run.Assignment.Index), new("micro_batches", step.MicroBatches.Length)]);
        var schedule = step.Schedule switch
        {
            "1f1b" => PipelineSchedule.OneFOneB,
            "gpipe" => PipelineSchedule.GPipe,
            _ => throw new ArgumentException($"schedule must be '1f1b' or 'gpipe', not '{step.Schedule}'"),
        };
        IReadOnlyList<TrainingSequence>[] microBatches = [.. step.MicroBatches.Select(m => (IReadOnlyList<TrainingSequence>)
            [.. m.Select(s => new TrainingSequence(s.Tokens, s.Targets, s.Documents))])];
        long started = Stopwatch.GetTimestamp();
        var report = await Worker.Run(() =>
        {
            var result = run.Trainer.TrainStep(microBatches, step.GlobalTargets, schedule);
            // Copied in the step's own work item: every replica copies between the same two steps, and ZeRO's gathers pair up.
            if (step.CaptureAfter) Capture(result.Step).TrySetResult(run.Trainer.CaptureState());
            // The ranks of an expert-parallel group route alike: the first reports the stage's experts.
            var experts = run.Trainer.Model.Spec.Rank == 0 ? result.Experts : null;
            return new TrainingStepReport(result.Step, result.LossShare, result.LearningRate, result.GradientNorm,
                experts?.Load, experts?.Dropped ?? 0, (float)(experts?.RouterLoss ?? 0));
        });
        ClusterTelemetry.TrainerStepTime.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, run.Tags);
        _lease!.ReportMemory(run.Trainer.StateBytes(), 0, run.Trainer.Model.WorkspaceBytes);
        return report;
    }

    private TaskCompletionSource<ShardState> Capture(int step)
    {
        lock (_captures)
        {
            if (!_captures.TryGetValue(step, out var capture))
                _captures[step] = capture = new TaskCompletionSource<ShardState>(TaskCreationOptions.RunContinuationsAsynchronously);
            return capture;
        }
    }

    /// <summary>An earlier run's copies are void: a save still waiting for one fails.</summary>
    private void DropCaptures(Exception reason)
    {
        lock (_captures)
        {
            foreach (var capture in _captures.Values) capture.TrySetException(reason);
            _captures.Clear();
        }
    }

    public async Task SaveCheckpoint(long epoch, string directory, int step)
    {
        Current(epoch);
        var state = await Capture(step).Task;
        lock (_captures) _captures.Remove(step);
        if (state.Spec.Replica != 0) return;                             // every replica holds the same state: replica 0 writes
        await Task.Run(() => Checkpoint.WriteShard(directory, state));   // off the device thread: the next steps go on
    }

    public async Task Stop()
    {
        _inbox.Begin(long.MaxValue, new OperationCanceledException($"trainer {this.GetPrimaryKeyString()} stopped"));   // unblocks a step waiting on peers
        DropCaptures(new OperationCanceledException($"trainer {this.GetPrimaryKeyString()} stopped"));
        var run = _run;
        _run = null;
        if (run is not null) await Worker.Run(() => { run.Trainer.Dispose(); return 0; });
        DeactivateOnIdle();
    }

    public Task<byte[]> ParameterBytes()
    {
        var run = _run ?? throw new InvalidOperationException($"trainer {this.GetPrimaryKeyString()} is not started");
        return Worker.Run(() => run.Trainer.WholeParameters().SelectMany(p => MemoryMarshal.AsBytes(p.Parameter.AsSpan()).ToArray()).ToArray());
    }

    public Task Deliver(long epoch, int fromRank, long tag, Immutable<byte[]> data)
    {
        _inbox.Deliver(epoch, fromRank, tag, data.Value);
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _inbox.Begin(long.MaxValue, new OperationCanceledException($"trainer {this.GetPrimaryKeyString()} deactivated"));
        _worker?.Dispose();
        _run?.Trainer.Dispose();
        _lease?.Dispose();
        return base.OnDeactivateAsync(reason, cancellationToken);
    }
}
