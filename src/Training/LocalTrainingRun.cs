// A data × pipeline × tensor-parallel training run inside one process: every shard of the layout is a ShardTrainer on
// its own thread, its groups joined by in-process transports. What the trainer grains do across silos, without them:
// the CLI's `cluster train --layout`, the parallel-training tests and the training benchmark use it.
using Cluster.Compute.Collectives;
using Cluster.Model;
using Cluster.Model.Parallel;

namespace Cluster.Training;

public sealed class LocalTrainingRun : IDisposable
{
    private readonly ShardTrainer[] _shards;   // ShardingPlan order: (replica, stage, rank)

    private LocalTrainingRun(ShardingPlan plan, ShardTrainer[] shards) => (Plan, _shards) = (plan, shards);

    public ShardingPlan Plan { get; }
    public IReadOnlyList<ShardTrainer> Shards => _shards;
    public int Step => _shards[0].Step;

    /// <param name="threads">CPU threads of each shard's products.</param>
    /// <param name="mode">LoRA, activation checkpointing, precision (default: every weight, fp32).</param>
    public static LocalTrainingRun Create(ModelConfig config, ModelWeights weights, ParallelLayout layout, OptimizerOptions options,
        int zeroStage = 0, int threads = 1, TrainingMode? mode = null)
    {
        var plan = ShardingPlan.Create(config, layout);
        int dp = layout.DataParallel, pp = layout.PipelineStages, tp = layout.StageRanks;
        var tensor = Groups(dp * pp, tp);      // [replica * pp + stage][rank]
        var pipeline = Groups(dp * tp, pp);    // [replica * tp + rank][stage]
        var data = Groups(pp * tp, dp);        // [stage * tp + rank][replica]
        var shards = plan.Shards.Select(s =>
        {
            var tensorGroup = tp > 1 ? new CollectiveGroup(tensor[s.Replica * pp + s.Stage][s.Rank]) : null;   // the model's and the trainer's: one operation count
            var own = ShardWeights.Map(ShardWeights.Slice(config, weights, s), a => (float[])a.Clone());   // whole tensors are shared with the source: copy
            var model = new TrainableModel(config, own, threads, tensorGroup, mode);
            return new ShardTrainer(model, options, new TrainingGroups(tensorGroup,
                pp > 1 ? pipeline[s.Replica * tp + s.Rank][s.Stage] : null,
                dp > 1 ? new CollectiveGroup(data[s.Stage * tp + s.Rank][s.Replica]) : null), zeroStage);
        }).ToArray();
        return new LocalTrainingRun(plan, shards);

        static ICollectiveTransport[][] Groups(int count, int size) => [.. Enumerable.Range(0, count).Select(_ => InProcessTransport.CreateGroup(size))];
    }

    /// <summary>
    /// One step over the global batch: replica r trains on its contiguous share of the sequences, cut into
    /// <paramref name="microBatches"/> micro-batches. Returns the step's global mean loss, learning rate and gradient norm.
    /// </summary>
    public StepResult TrainStep(IReadOnlyList<TrainingSequence> batch, int microBatches = 1, PipelineSchedule schedule = PipelineSchedule.OneFOneB)
    {
        int dp = Plan.Layout.DataParallel;
        if (batch.Count < dp * microBatches) throw new ArgumentException($"a batch of {batch.Count} sequences cannot feed {dp} replicas × {microBatches} micro-batches", nameof(batch));
        int globalTargets = batch.Sum(s => s.CountedTargets);
        var perReplica = Enumerable.Range(0, dp).Select(r =>
        {
            var share = Slice.Partition(batch.Count, dp, r);
            return (IReadOnlyList<IReadOnlyList<TrainingSequence>>)[.. Enumerable.Range(0, microBatches).Select(m =>
            {
                var part = Slice.Partition(share.Count, microBatches, m);
                return (IReadOnlyList<TrainingSequence>)[.. batch.Skip(share.Offset + part.Offset).Take(part.Count)];
            })];
        }).ToArray();
        var results = OnEveryShard(s => s.TrainStep(perReplica[s.Model.Spec.Replica], globalTargets, schedule));
        var last = results.Where((_, i) => _shards[i].Model.Spec is { IsLastStage: true, Rank: 0 }).ToArray();
        MoeStepStats[] moe = [.. results.Where((r, i) => Shards[i].Model.Spec.Rank == 0 && r.Experts is not null).Select(r => r.Experts!)];   // each stage's group routes alike
        return results[0] with { LossShare = last.Sum(r => r.LossShare), Experts = moe.Length == 0 ? null : MoeStepStats.Sum(moe) };
    }

    /// <summary>
    /// Writes a checkpoint of the current step under <paramref name="root"/> (replica 0's shards), keeping the newest
    /// <paramref name="keep"/>; returns its directory. Throws when that step's checkpoint exists (it is never written again).
    /// </summary>
    public string SaveCheckpoint(string root, DataCursor cursor, int keep = Checkpoint.DefaultKeep)
    {
        var states = OnEveryShard(s => s.CaptureState());   // every replica takes part: ZeRO-1 gathers the moments
        string staging = Checkpoint.StagingDirectory(root, Step, Guid.NewGuid().ToString("N"));
        DurableFile.CreatePrivateDirectory(staging);
        string[] files = [.. states.Where(state => state.Spec.Replica == 0).Select(state => Checkpoint.WriteShard(staging, state))];
        Checkpoint.WriteManifest(staging, Step, cursor, Plan.Layout, files);
        string directory = Checkpoint.Commit(root, Step, staging);
        Checkpoint.Prune(root, keep);
        return directory;
    }

    /// <summary>Every shard takes its state from a checkpoint saved at any layout; returns its manifest (step, data cursor).</summary>
    public CheckpointManifest Restore(string directory)
    {
        CheckpointManifest? manifest = null;
        foreach (var shard in _shards) manifest = Checkpoint.Restore(directory, shard);
        return manifest!;
    }

    /// <summary>Runs <paramref name="work"/> on every shard at once, each on its own thread (their collectives block until all take part).</summary>
    private T[] OnEveryShard<T>(Func<ShardTrainer, T> work)
    {
        var tasks = _shards.Select(s => Task.Factory.StartNew(() => work(s), TaskCreationOptions.LongRunning)).ToArray();
        var pending = tasks.ToList();
        while (pending.Count > 0)
        {
            var done = Task.WhenAny(pending).GetAwaiter().GetResult();
            if (done.IsFaulted) throw done.Exception!.InnerException!;   // its peers wait for its messages for ever: fail now
            pending.Remove(done);
        }
        return [.. tasks.Select(t => t.Result)];
    }

    /// <summary>Replica 0's shards put back together as whole-model weights (full fine-tunes; see Adapters for LoRA).</summary>
    public ModelWeights Assemble() => _shards[0].Model.IsLora
        ? throw new InvalidOperationException("a LoRA run trains adapters, not the weights: save them with Adapters()")
        : WeightAssembly.Assemble(Plan.Config, WholeParameters().Where((_, i) => _shards[i].Model.Spec.Replica == 0).SelectMany(p => p));

    /// <summary>Every shard's parameters, whole (ZeRO-3 gathers its layers), in shard order.</summary>
    public ParameterSlice[][] WholeParameters() => OnEveryShard(s => s.WholeParameters());

    /// <summary>Replica 0's LoRA adapters, every layer (PEFT saves them).</summary>
    public Cluster.Model.Formats.LoraTensors[] Adapters() => [.. _shards.Where(s => s.Model.Spec.Replica == 0).SelectMany(s => s.Model.Adapters()).OrderBy(a => a.Layer)];

    public void Dispose()
    {
        foreach (var shard in _shards) shard.Dispose();
    }
}
