// One shard's side of a training step in a data × pipeline × tensor-parallel run (Megatron's schedules.py and
// DDP/ZeRO in one place): the pipeline schedule over micro-batches (activations sent to the next stage, gradients
// back), the tied-embedding gradient summed between the first and last stage, the data-parallel gradient all-reduce
// (or ZeRO's reduce-scatter / sharded update / all-gather), the global gradient norm over every shard, and AdamW.
// ZeRO works by buckets: ZeRO-1 has one (every tensor of the shard, reduced after the backward); ZeRO-2 has one per
// decoder layer, each reduce-scattered as soon as that layer's backward of a micro-batch ends (the collective runs
// while the layers below are differentiated, and the layer's full gradient is dropped: a replica keeps only its
// slices between micro-batches), plus one for the tensors outside the layers (embedding, final norm, head), reduced
// after the tied-embedding sum. ZeRO-3 also partitions the layers' parameters: a replica keeps only its slice of each
// layer bucket (its master copy, which its optimizer slice updates), all-gathers a layer just before the forward or
// backward uses it and drops it right after; the embedding and head (the bucket outside the layers) stay whole.
// Every shard of the run calls TrainStep with the same micro-batches (each replica its own), so every collective and
// message pairs up. The calls block the calling thread on the groups' messages: run each shard on its own thread.
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class Cluster.Tests.Training.ParallelTrainingTests
using System.Runtime.InteropServices;
using Cluster.Compute.Collectives;
using Cluster.Model;

namespace Cluster.Training;

/// <summary>The groups a shard trains in; null where its degree is 1.</summary>
/// <param name="Tensor">The stage's tensor-parallel ranks (rank = ShardSpec.Rank).</param>
/// <param name="Pipeline">Point-to-point messages between the stages of this replica at this rank (rank = stage).</param>
/// <param name="Data">The replicas of this shard (rank = replica).</param>
public sealed record TrainingGroups(CollectiveGroup? Tensor = null, ICollectiveTransport? Pipeline = null, CollectiveGroup? Data = null);

public enum PipelineSchedule
{
    /// <summary>All forwards, then all backwards (GPipe): activations of every micro-batch are alive at once.</summary>
    GPipe,
    /// <summary>One forward, one backward (PipeDream-Flush): a stage keeps at most (stages − stage) micro-batches' activations.</summary>
    OneFOneB,
}

/// <summary>
/// After a step: its number, the loss's share of the global mean this shard computed (last stages; 0 elsewhere), the
/// learning rate, the gradient norm, and an MoE shard's expert loads, drops and router losses (null when dense).
/// </summary>
public sealed record StepResult(int Step, float LossShare, float LearningRate, float GradientNorm, MoeStepStats? Experts = null);

public sealed class ShardTrainer : IDisposable
{
    private const int ActivationMessage = 0, GradientMessage = 1, TiedEmbeddingMessage = 2, NormMessage = 3;
    private const int RestOfTheModel = -1;                                    // FlattenReused's key for the tensors outside the layers
    private readonly Dictionary<int, float[]> _flatGradients = [];           // plain data parallelism's flattened gradients, by layer

    /// <summary>
    /// A ZeRO bucket: some of the shard's tensors (indices into Parameters()), this replica's optimizer slice of them,
    /// (ZeRO-2/3) the reductions of its gradient in flight, and (ZeRO-3, layer buckets) this replica's slice of its
    /// parameters.
    /// </summary>
    private sealed record Bucket(int[] Tensors, ShardedOptimizer Optimizer, List<Task<float[]>> Reductions, int Layer)
    {
        public float[]? Owned { get; set; }
    }

    private readonly TrainingGroups _groups;
    private readonly Optimizer? _optimizer;
    private readonly Bucket[] _buckets = [];
    private readonly int _zeroStage;
    private bool _finalBackward;                                                          // this stage's last backward of the step is running
    private readonly List<(int Layer, float[] Gradient, Task Sum)> _layerSums = [];      // ZeRO-0: layers' all-reduces in flight
    private long _exchanges;   // TrainStep calls so far: keeps one step's pipeline messages apart from the next's

    /// <param name="model">This shard (owned: disposed with the trainer).</param>
    /// <param name="zeroStage">0: every replica keeps the whole optimizer state; 1: each keeps its slice (ZeRO-1); 2: and its slice of the gradients (ZeRO-2); 3: and of the layers' parameters (ZeRO-3).</param>
    public ShardTrainer(TrainableModel model, OptimizerOptions options, TrainingGroups groups, int zeroStage = 0)
    {
        if (zeroStage is < 0 or > 3) throw new ArgumentException($"ZeRO stage {zeroStage} is not supported (0 to 3)", nameof(zeroStage));
        if (zeroStage >= 2 && model.IsLora) throw new ArgumentException("LoRA's adapters are small: train them with ZeRO 0 or 1", nameof(zeroStage));
        bool oneStage = model.Spec.IsFirstStage && model.Spec.IsLastStage;
        if (oneStage ? groups.Pipeline is { WorldSize: > 1 } : groups.Pipeline is null || groups.Pipeline.Rank != model.Spec.Stage)
            throw new ArgumentException($"shard {model.Spec} needs a pipeline transport where it is rank {model.Spec.Stage}", nameof(groups));
        Model = model;
        _groups = groups;
        _zeroStage = zeroStage;
        if (zeroStage == 0)
        {
            _optimizer = new Optimizer(model, options);
            if (groups.Data is not null) model.LayerGradientsDone = SumLayerGradients;
            return;
        }
        var tensors = model.Parameters().ToArray();
        int[][] buckets = zeroStage == 1
            ? [[.. Enumerable.Range(0, tensors.Length)]]
            : [.. Enumerable.Range(0, tensors.Length).GroupBy(i => tensors[i].Layer ?? -1).OrderBy(g => g.Key < 0 ? int.MaxValue : g.Key).Select(g => g.ToArray())];
        _buckets = [.. buckets.Select(b => new Bucket(b, new ShardedOptimizer(b.Select(i => tensors[i]), options, groups.Data?.Rank ?? 0, groups.Data?.WorldSize ?? 1, model.HostPool), [],
            tensors[b[0]].Layer ?? -1))];
        if (zeroStage >= 2)
        {
            model.LayerGradientsDone = ReduceLayerGradients;
            for (int l = 0; l < model.Weights.Layers.Length; l++) model.ReleaseLayerGradients(l);   // a layer's come and go with its backward
        }
        if (zeroStage < 3) return;
        foreach (var bucket in _buckets.Where(b => b.Layer >= 0))   // keep this replica's slice of each layer, drop the rest
        {
            bucket.Owned = Flatten(bucket.Tensors.Select(i => tensors[i].Parameter)).AsSpan(bucket.Optimizer.Offset, bucket.Optimizer.Count).ToArray();
            model.ReleaseLayerWeights(bucket.Layer);
        }
        model.LayerWeightsNeeded = GatherLayer;
        model.LayerWeightsDone = model.ReleaseLayerWeights;
    }

    /// <summary>ZeRO-3: the layer's parameters, whole again from every replica's slice, just before they are used.</summary>
    private void GatherLayer(int layer)
    {
        var bucket = _buckets.First(b => b.Layer == layer);
        float[] whole = _groups.Data?.AllGather(bucket.Owned!).GetAwaiter().GetResult() ?? bucket.Owned!;
        var tensors = Model.Parameters().ToArray();
        float[][] parts = [.. bucket.Tensors.Select(i => new float[tensors[i].Length])];
        Unflatten(whole, parts);
        Model.SetLayerWeights(layer, parts);
    }

    /// <summary>
    /// Every parameter of this shard, whole: ZeRO-3 all-gathers the layers (every replica must call it together), other
    /// stages hand out the model's own tensors.
    /// </summary>
    public ParameterSlice[] WholeParameters()
    {
        var slices = Model.Parameters().ToArray();
        if (_zeroStage < 3) return slices;
        foreach (var bucket in _buckets.Where(b => b.Owned is not null))
        {
            float[] whole = _groups.Data?.AllGather(bucket.Owned!).GetAwaiter().GetResult() ?? bucket.Owned!;
            int offset = 0;
            foreach (int i in bucket.Tensors)
            {
                slices[i] = slices[i] with { Parameter = whole.AsSpan(offset, slices[i].Length).ToArray() };
                offset += slices[i].Length;
            }
        }
        return slices;
    }

    public TrainableModel Model { get; }

    /// <summary>
    /// This shard's training state in memory: parameters and gradients (ZeRO-3 counts the slice it keeps, not the layer
    /// gathered for a moment) and AdamW's moments (ZeRO-1 and up: this replica's slice).
    /// </summary>
    public long StateBytes() =>
        Model.ParameterAndGradientBytes() + _buckets.Sum(b => (long)(b.Owned?.Length ?? 0) * sizeof(float))
        + (_optimizer?.Moments.Sum(m => (long)(m.M.Length + m.V.Length)) ?? _buckets.Sum(b => (long)(b.Optimizer.M.Length + b.Optimizer.V.Length))) * sizeof(float);
    public int Step => _optimizer?.Step ?? _buckets[0].Optimizer.Step;

    public void Dispose() => Model.Dispose();

    /// <summary>
    /// One optimizer step over this replica's <paramref name="microBatches"/>; <paramref name="globalTargets"/> counts the
    /// targets of every replica's micro-batches together, so the summed gradient is that of the global batch's mean loss.
    /// </summary>
    public StepResult TrainStep(IReadOnlyList<IReadOnlyList<TrainingSequence>> microBatches, int globalTargets, PipelineSchedule schedule)
    {
        if (microBatches.Count == 0) throw new ArgumentException("a step needs at least one micro-batch", nameof(microBatches));
        if (globalTargets <= 0) throw new ArgumentException("the global batch has no counted targets", nameof(globalTargets));
        _exchanges++;
        Model.ZeroGradients();
        float lossShare = RunPipeline(microBatches, globalTargets, schedule);
        SumTiedEmbeddingGradient();
        return _zeroStage == 0 ? PlainStep(lossShare) : ZeroStep(lossShare);
    }

    /// <summary>The forwards and backwards of this stage in the schedule's order; returns Σ loss × share over the micro-batches (last stage).</summary>
    private float RunPipeline(IReadOnlyList<IReadOnlyList<TrainingSequence>> microBatches, int globalTargets, PipelineSchedule schedule)
    {
        var spec = Model.Spec;
        var saved = new StageActivations?[microBatches.Count];
        float lossShare = 0;
        var operations = Operations(schedule, spec.Stage, _groups.Pipeline?.WorldSize ?? 1, microBatches.Count).ToArray();
        int lastBackward = Array.FindLastIndex(operations, o => !o.Forward);
        for (int op = 0; op < operations.Length; op++)
        {
            var (forward, m) = operations[op];
            _finalBackward = op == lastBackward;   // the layers' gradients are whole once it has passed them
            if (forward)
            {
                var input = spec.IsFirstStage ? null : Receive(spec.Stage - 1, ActivationMessage, m);   // (T, C)
                var a = saved[m] = Model.Forward(microBatches[m], input, dropoutSeed: unchecked(Step * 4096 + m));   // Step: steps done, so a resumed run draws the same masks
                if (!spec.IsLastStage) Send(spec.Stage + 1, ActivationMessage, m, a.Output);
            }
            else
            {
                var outputGradient = spec.IsLastStage ? null : Receive(spec.Stage + 1, GradientMessage, m);   // (T, C)
                float share = microBatches[m].Sum(s => s.CountedTargets) / (float)globalTargets;
                var (loss, inputGradient) = Model.Backward(saved[m]!, outputGradient, share);
                saved[m] = null;   // 1F1B's point: activations live only between a micro-batch's forward and backward
                lossShare += loss * share;
                if (!spec.IsFirstStage) Send(spec.Stage - 1, GradientMessage, m, inputGradient!);
            }
        }
        return lossShare;
    }

    /// <summary>
    /// A copy of this shard's parameters and AdamW moments, per tensor, to checkpoint while training goes on. With
    /// ZeRO-1 the replicas' moment slices are all-gathered first, so every replica must call it together.
    /// </summary>
    public ShardState CaptureState()
    {
        var slices = WholeParameters().Select(p => p with { Parameter = (float[])p.Parameter.Clone(), Gradient = [] }).ToArray();
        if (_zeroStage == 0)
            return new ShardState(Model.Spec, slices, [.. _optimizer!.Moments.Select(x => (float[])x.M.Clone())],
                [.. _optimizer.Moments.Select(x => (float[])x.V.Clone())], Step);
        var m = new float[slices.Length][];
        var v = new float[slices.Length][];
        foreach (var bucket in _buckets)   // every replica's slices of the bucket's moments, whole again
        {
            Split(_groups.Data?.AllGather(bucket.Optimizer.M).GetAwaiter().GetResult() ?? bucket.Optimizer.M, bucket.Tensors, m);
            Split(_groups.Data?.AllGather(bucket.Optimizer.V).GetAwaiter().GetResult() ?? bucket.Optimizer.V, bucket.Tensors, v);
        }
        return new ShardState(Model.Spec, slices, m, v, Step);

        void Split(float[] flat, int[] tensors, float[][] into)
        {
            int offset = 0;
            foreach (int i in tensors)
            {
                into[i] = flat.AsSpan(offset, slices[i].Length).ToArray();
                offset += slices[i].Length;
            }
        }
    }

    /// <summary>Puts parameters and moments (per tensor, in Parameters order) back, as after <paramref name="step"/> steps.</summary>
    public void RestoreState(float[][] parameters, float[][] m, float[][] v, int step)
    {
        var slices = Model.Parameters().ToArray();
        for (int i = 0; i < slices.Length; i++)
            if (slices[i].Parameter.Length == slices[i].Length) parameters[i].CopyTo(slices[i].Parameter, 0);   // ZeRO-3's dropped layers: below
        foreach (var bucket in _buckets)
        {
            var optimizer = bucket.Optimizer;
            if (bucket.Owned is not null) bucket.Owned = Flatten(bucket.Tensors.Select(i => parameters[i])).AsSpan(optimizer.Offset, optimizer.Count).ToArray();
            Flatten(bucket.Tensors.Select(i => m[i])).AsSpan(optimizer.Offset, optimizer.Count).CopyTo(optimizer.M);
            Flatten(bucket.Tensors.Select(i => v[i])).AsSpan(optimizer.Offset, optimizer.Count).CopyTo(optimizer.V);
            optimizer.ResumeAt(step);
        }
        if (_optimizer is not null)
        {
            for (int i = 0; i < slices.Length; i++)
            {
                m[i].CopyTo(_optimizer.Moments[i].M, 0);
                v[i].CopyTo(_optimizer.Moments[i].V, 0);
            }
            _optimizer.ResumeAt(step);
        }
        Model.HostStateChanged();   // the device reads the restored parameters and moments again
    }

    /// <summary>A stage's (forward?, micro-batch) operations in schedule order.</summary>
    public static IEnumerable<(bool Forward, int MicroBatch)> Operations(PipelineSchedule schedule, int stage, int stages, int microBatches)
    {
        if (schedule == PipelineSchedule.GPipe)
        {
            for (int m = 0; m < microBatches; m++) yield return (true, m);
            for (int m = microBatches - 1; m >= 0; m--) yield return (false, m);
            yield break;
        }
        int warmup = Math.Min(stages - stage - 1, microBatches);   // forwards in flight before the first backward
        for (int m = 0; m < warmup; m++) yield return (true, m);
        for (int m = warmup; m < microBatches; m++)
        {
            yield return (true, m);
            yield return (false, m - warmup);
        }
        for (int m = microBatches - warmup; m < microBatches; m++) yield return (false, m);
    }

    /// <summary>A tied LM head on the last stage and the embedding on the first are one parameter: both copies get the sum.</summary>
    private void SumTiedEmbeddingGradient()
    {
        int last = (_groups.Pipeline?.WorldSize ?? 1) - 1;
        if (Model.TiedGradientOnHost() is { } gradient) AddPeerCopy(gradient, Model.HoldsTiedEmbedding ? last : 0);

        void AddPeerCopy(float[] gradient, int peer)
        {
            Send(peer, TiedEmbeddingMessage, 0, gradient);
            // a + b = b + a: both copies stay equal. The peer's copy (tens of MB for a 32000-token head) is added where it arrived.
            System.Numerics.Tensors.TensorPrimitives.Add(gradient, MemoryMarshal.Cast<byte, float>(ReceiveBytes(peer, TiedEmbeddingMessage, 0)), gradient);
        }
    }

    /// <summary>
    /// Data parallelism without ZeRO: a layer's gradient is whole once the step's last backward has passed it, so its
    /// all-reduce starts then (not awaited) and runs while the layers below are differentiated.
    /// </summary>
    private void SumLayerGradients(int layer)
    {
        if (!_finalBackward) return;
        var gradient = FlattenReused(layer, [.. LayerTensors(layer).Select(p => p.Gradient)]);
        _layerSums.Add((layer, gradient, _groups.Data!.AllReduce(gradient)));
    }

    /// <summary>A layer's parameters (its index in this shard), in Parameters order; the gradients as flushed to the host.</summary>
    private IEnumerable<ParameterSlice> LayerTensors(int layer) => Model.TrainedTensors().Where(p => p.Layer == layer);

    private StepResult PlainStep(float lossShare)
    {
        if (_groups.Data is { } data)
        {
            foreach (var (layer, gradient, sum) in _layerSums)   // the layers' sums, started during the backward
            {
                sum.GetAwaiter().GetResult();
                Unflatten(gradient, [.. LayerTensors(layer).Select(p => p.Gradient)]);
            }
            var summed = _layerSums.Select(s => s.Layer).ToHashSet();
            _layerSums.Clear();
            Model.FlushGradients();
            float[][] rest = [.. Model.TrainedTensors().Where(p => p.Layer is not { } l || !summed.Contains(l)).Select(p => p.Gradient)];
            var flat = FlattenReused(RestOfTheModel, rest);                                  // embedding, final norm, head (after the tie sum)
            data.AllReduce(flat).GetAwaiter().GetResult();
            Unflatten(flat, rest);
        }
        float norm = MathF.Sqrt(SumOverModel((float)Model.CountedGradientSquares()));
        var (lr, _) = _optimizer!.Apply(norm);
        Model.UpdateRouterBiases(SumOverReplicas);
        return new StepResult(_optimizer.Step, lossShare, lr, norm, Model.ExpertStats);
    }

    /// <summary>ZeRO-2: a layer's backward of a micro-batch is done: reduce-scatter its gradient (not awaited) and drop the full one.</summary>
    private void ReduceLayerGradients(int layer)
    {
        var tensors = Model.TrainedTensors().ToArray();   // the layer's gradients were flushed for this call
        var bucket = _buckets.First(b => b.Layer == layer);
        var gradient = Flatten(bucket.Tensors.Select(i => tensors[i].Gradient));
        bucket.Reductions.Add(_groups.Data?.ReduceScatter(gradient) ?? Task.FromResult(gradient));
        Model.ReleaseLayerGradients(layer);
    }

    /// <summary>
    /// ZeRO: each bucket's gradient is reduce-scattered (each replica gets the sum of its slice; ZeRO-2's layer buckets
    /// were sent during the backward, one reduction per micro-batch, summed here in micro-batch order), the global norm
    /// comes from the slices' sums of squares, each replica updates its slices, and all-gathers hand every replica the
    /// whole updated parameters.
    /// </summary>
    private StepResult ZeroStep(float lossShare)
    {
        var tensors = Model.Parameters().ToArray();
        var data = _groups.Data;
        var mine = new float[_buckets.Length][];                                             // per bucket (Count,)
        double squares = 0;
        for (int b = 0; b < _buckets.Length; b++)
        {
            var bucket = _buckets[b];
            if (bucket.Reductions.Count == 0)
            {
                var gradient = Flatten(bucket.Tensors.Select(i => tensors[i].Gradient));
                mine[b] = data is null ? gradient : data.ReduceScatter(gradient).GetAwaiter().GetResult();
            }
            else
            {
                mine[b] = new float[bucket.Optimizer.Count];
                foreach (var reduction in bucket.Reductions)
                    System.Numerics.Tensors.TensorPrimitives.Add(mine[b], reduction.GetAwaiter().GetResult(), mine[b]);
                bucket.Reductions.Clear();
            }
            squares += bucket.Optimizer.CountedSquares(mine[b]);
        }
        float[] sum = [(float)squares];
        data?.AllReduce(sum).GetAwaiter().GetResult();
        float norm = MathF.Sqrt(SumOverModel(sum[0]));
        float lr = 0;
        for (int b = 0; b < _buckets.Length; b++)
        {
            var (indices, optimizer, _, _) = _buckets[b];
            if (_buckets[b].Owned is { } owned)   // ZeRO-3: the slice is the master copy; the next use gathers it
            {
                lr = optimizer.Apply(owned, mine[b], norm);
                continue;
            }
            float[][] parameters = [.. indices.Select(i => tensors[i].Parameter)];
            float[] slice = Flatten(parameters).AsSpan(optimizer.Offset, optimizer.Count).ToArray();
            lr = optimizer.Apply(slice, mine[b], norm);
            Unflatten(data is null ? slice : data.AllGather(slice).GetAwaiter().GetResult(), parameters);   // (TotalLength,)
        }
        if (_zeroStage == 3) MoveOwnedRouterBiases();
        else Model.UpdateRouterBiases(SumOverReplicas);
        return new StepResult(Step, lossShare, lr, norm, Model.ExpertStats);
    }

    /// <summary>
    /// ZeRO-3's aux-loss-free balancing: the layers' own tensors are dropped between uses, so each router bias's step
    /// goes into the part of it this replica's master slice holds; the next gather hands every replica the moved bias.
    /// </summary>
    private void MoveOwnedRouterBiases()
    {
        if (Model.RouterBiasSteps(SumOverReplicas) is not { } steps) return;
        var tensors = Model.Parameters().ToArray();
        foreach (var bucket in _buckets.Where(b => b.Owned is not null))
        {
            int start = 0;   // the tensor's place in the flattened bucket
            foreach (int i in bucket.Tensors)
            {
                if (TrainableModel.IsRouterBias(tensors[i]))
                {
                    int offset = bucket.Optimizer.Offset, end = offset + bucket.Optimizer.Count;
                    for (int j = Math.Max(start, offset); j < Math.Min(start + tensors[i].Length, end); j++)
                        bucket.Owned![j - offset] += steps[bucket.Layer][j - start];
                }
                start += tensors[i].Length;
            }
        }
    }

    /// <summary>Sums <paramref name="values"/> over the data-parallel replicas, in place (each replica's counts of the same thing).</summary>
    private void SumOverReplicas(float[] values) => _groups.Data?.AllReduce(values).GetAwaiter().GetResult();

    /// <summary>A per-shard value summed over the replica's whole model: its tensor-parallel ranks, then its stages (in stage order, so every shard gets the same bits).</summary>
    private float SumOverModel(float value)
    {
        float[] sum = [value];
        _groups.Tensor?.AllReduce(sum).GetAwaiter().GetResult();
        if (_groups.Pipeline is not { WorldSize: > 1 } pipeline) return sum[0];
        for (int stage = 0; stage < pipeline.WorldSize; stage++)
            if (stage != pipeline.Rank) Send(stage, NormMessage, 0, sum);
        float total = 0;
        for (int stage = 0; stage < pipeline.WorldSize; stage++)
            total += stage == pipeline.Rank ? sum[0] : Receive(stage, NormMessage, 0)[0];
        return total;
    }

    private long Tag(int kind, int microBatch) => (_exchanges << 24) | ((long)kind << 20) | (uint)microBatch;

    private void Send(int stage, int kind, int microBatch, float[] data) =>
        _groups.Pipeline!.SendAsync(stage, Tag(kind, microBatch), MemoryMarshal.AsBytes(data.AsSpan()).ToArray()).GetAwaiter().GetResult();

    private float[] Receive(int stage, int kind, int microBatch) => MemoryMarshal.Cast<byte, float>(ReceiveBytes(stage, kind, microBatch)).ToArray();

    private byte[] ReceiveBytes(int stage, int kind, int microBatch) => _groups.Pipeline!.ReceiveAsync(stage, Tag(kind, microBatch)).GetAwaiter().GetResult();

    /// <summary>The tensors one after another in one array.</summary>
    private static float[] Flatten(IEnumerable<float[]> tensors)
    {
        var all = tensors.ToArray();
        return CopyOneAfterAnother(all, new float[all.Sum(t => t.Length)]);
    }

    /// <summary>The tensors one after another into <paramref name="flat"/> (their total length); returns it.</summary>
    private static float[] CopyOneAfterAnother(float[][] tensors, float[] flat)
    {
        int offset = 0;
        foreach (var t in tensors)
        {
            t.CopyTo(flat, offset);
            offset += t.Length;
        }
        return flat;
    }

    /// <summary>
    /// <see cref="Flatten"/> into the buffer kept for <paramref name="key"/> (a layer, or RestOfTheModel): plain data
    /// parallelism sums the same gradients every step, and each reduction is done before the next step flattens again.
    /// </summary>
    private float[] FlattenReused(int key, float[][] tensors)
    {
        int length = tensors.Sum(t => t.Length);
        if (!_flatGradients.TryGetValue(key, out var flat) || flat.Length != length) _flatGradients[key] = flat = new float[length];
        return CopyOneAfterAnother(tensors, flat);
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
}
