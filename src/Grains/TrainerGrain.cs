// A data-parallel trainer (see ITrainerGrain). The model and optimizer live on the grain's DeviceWorker thread; the
// gradient all-reduce blocks that thread while the peers' chunks come in through Deliver, which interleaves.
using System.Runtime.InteropServices;
using Cluster.Compute.Collectives;
using Cluster.Contracts;
using Cluster.Training;
using Microsoft.Extensions.Options;
using Orleans.Concurrency;

namespace Cluster.Grains;

[PinnedShardPlacement, Reentrant]
public sealed class TrainerGrain(IGrainFactory grains, IOptions<ShardOptions> options) : Grain, ITrainerGrain
{
    /// <summary>A started run: with ZeRO-1 the optimizer is a ShardedOptimizer over this replica's slice, else a whole Optimizer.</summary>
    private sealed record Run(TrainerAssignment Assignment, TrainableModel Model, Optimizer? Optimizer, ShardedOptimizer? Sharded, CollectiveGroup? Group);

    private readonly EpochInbox _inbox = new();
    private DeviceWorker? _worker;
    private Run? _run;

    private DeviceWorker Worker => _worker ??= new DeviceWorker($"trainer {this.GetPrimaryKeyString()}");

    public async Task Start(TrainerAssignment a)
    {
        if (a.Group.Length == 0 || (uint)a.Rank >= (uint)a.Group.Length)
            throw new ArgumentException($"rank {a.Rank} is not in a group of {a.Group.Length}");
        if (a.ZeroStage is not (0 or 1)) throw new ArgumentException($"ZeRO stage {a.ZeroStage} is not supported (0 or 1)");
        var mailbox = _inbox.Begin(a.Epoch, new InvalidOperationException($"trainer {this.GetPrimaryKeyString()}: epoch {a.Epoch} began"));
        var previous = _run;
        _run = null;
        int threads = options.Value.DeviceThreads;
        var (model, optimizer, sharded) = await Worker.Run(() =>
        {
            previous?.Model.Dispose();
            var loaded = ModelSources.Load(a.Source);
            var model = new TrainableModel(loaded.Config, loaded.Weights, threads);
            var options = new OptimizerOptions
            {
                LearningRate = a.LearningRate, MinLearningRate = a.MinLearningRate, WarmupSteps = a.WarmupSteps,
                TotalSteps = a.TotalSteps, WeightDecay = a.WeightDecay, ClipNorm = a.ClipNorm,
            };
            return a.ZeroStage == 1
                ? (model, (Optimizer?)null, new ShardedOptimizer(model, options, a.Rank, a.Group.Length))
                : (model, new Optimizer(model, options), (ShardedOptimizer?)null);
        });
        var group = a.Group.Length > 1
            ? new CollectiveGroup(new GrainGroupTransport(key => grains.GetGrain<ITrainerGrain>(key), a.Group, a.Rank, a.Epoch, mailbox))
            : null;
        _run = new Run(a, model, optimizer, sharded, group);
    }

    public Task<TrainingStepReport> Step(TrainingStepMessage step)
    {
        var run = _run is { } r && r.Assignment.Epoch == step.Epoch
            ? r : throw new InvalidOperationException($"trainer {this.GetPrimaryKeyString()} is not started for epoch {step.Epoch}");
        if (step.GlobalTargets <= 0) throw new ArgumentException("the global batch has no counted targets");
        return Worker.Run(() =>
        {
            var model = run.Model;
            model.ZeroGradients();
            TrainingSequence[] batch = [.. step.Sequences.Select(s => new TrainingSequence(s.Tokens, s.Targets, s.Documents))];
            int counted = batch.Sum(s => s.Targets.Count(t => t != Compute.Cpu.CrossEntropy.Ignore));
            float loss = counted > 0 ? model.ForwardBackward(batch) : 0f;
            float share = counted / (float)step.GlobalTargets;   // this replica's part of the global mean
            if (run.Sharded is { } sharded) return ZeroStep(model, share, run.Group, sharded, loss * share);
            SumGradientsOverGroup(model, share, run.Group);
            var (lr, norm) = run.Optimizer!.Apply();
            return new TrainingStepReport(run.Optimizer.Step, loss * share, lr, norm);
        });
    }

    /// <summary>Every replica's gradient, each weighted by its share of the global batch, summed in one ring all-reduce.</summary>
    private static void SumGradientsOverGroup(TrainableModel model, float share, CollectiveGroup? group)
    {
        var gradients = model.Parameters().Select(p => p.Gradient).ToArray();
        var flat = Flatten(gradients, share);
        group?.AllReduce(flat).GetAwaiter().GetResult();
        Unflatten(flat, gradients);
    }

    /// <summary>
    /// ZeRO-1: the weighted gradients are reduce-scattered (each replica gets the sum of its slice), the global norm
    /// comes from an all-reduce of the slices' sums of squares, each replica updates its slice, and an all-gather
    /// hands every replica the whole updated parameters.
    /// </summary>
    private static TrainingStepReport ZeroStep(TrainableModel model, float share, CollectiveGroup? group, ShardedOptimizer optimizer, float lossShare)
    {
        var parameters = model.Parameters().Select(p => p.Parameter).ToArray();
        var gradients = Flatten(model.Parameters().Select(p => p.Gradient), share);
        float[] mine = group is null ? gradients : group.ReduceScatter(gradients).GetAwaiter().GetResult();   // (Count,)
        float[] squares = [System.Numerics.Tensors.TensorPrimitives.SumOfSquares(mine)];
        group?.AllReduce(squares).GetAwaiter().GetResult();
        float norm = MathF.Sqrt(squares[0]);
        float[] slice = Flatten(parameters, 1f).AsSpan(optimizer.Offset, optimizer.Count).ToArray();
        float lr = optimizer.Apply(slice, mine, norm);
        Unflatten(group is null ? slice : group.AllGather(slice).GetAwaiter().GetResult(), parameters);   // (TotalLength,)
        return new TrainingStepReport(optimizer.Step, lossShare, lr, norm);
    }

    /// <summary>The tensors one after another in one array, each times <paramref name="scale"/>.</summary>
    private static float[] Flatten(IEnumerable<float[]> tensors, float scale)
    {
        var all = tensors.ToArray();
        var flat = new float[all.Sum(t => t.Length)];
        int offset = 0;
        foreach (var t in all)
        {
            System.Numerics.Tensors.TensorPrimitives.Multiply(t, scale, flat.AsSpan(offset, t.Length));
            offset += t.Length;
        }
        return flat;
    }

    private static void Unflatten(float[] flat, float[][] tensors)
    {
        int offset = 0;
        foreach (var t in tensors)
        {
            flat.AsSpan(offset, t.Length).CopyTo(t);
            offset += t.Length;
        }
    }

    public Task<byte[]> ParameterBytes()
    {
        var run = _run ?? throw new InvalidOperationException($"trainer {this.GetPrimaryKeyString()} is not started");
        return Worker.Run(() => run.Model.Parameters().SelectMany(p => MemoryMarshal.AsBytes(p.Parameter.AsSpan()).ToArray()).ToArray());
    }

    public Task Deliver(long epoch, int fromRank, long tag, Immutable<byte[]> data)
    {
        _inbox.Deliver(epoch, fromRank, tag, data.Value);
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _worker?.Dispose();
        _run?.Model.Dispose();
        return base.OnDeactivateAsync(reason, cancellationToken);
    }
}
