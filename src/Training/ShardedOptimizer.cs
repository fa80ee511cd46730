// AdamW over one replica's slice of a bucket of tensors (ZeRO, Rajbhandari et al.): each of N data-parallel replicas
// keeps AdamW's moments for its own contiguous slice of the bucket's flattened tensors only (1/N of the optimizer
// state), and updates just that slice from the reduce-scattered gradient. The update of each element is the same
// AdamW as Optimizer's, so a ZeRO run matches a plain one up to the gradient norm's summation order.
using Cluster.Compute.Collectives;
using Cluster.Compute;
using Cluster.Compute.Cpu;

namespace Cluster.Training;

public sealed class ShardedOptimizer
{
    private readonly OptimizerOptions _options;
    private readonly WorkerPool _pool;
    private readonly (int Start, int Length, bool Decay, bool Counted)[] _runs;   // parts of this slice, by the tensor they belong to
    private readonly float[] _m, _v;

    /// <param name="bucket">The tensors flattened one after another (ShardTrainer's buckets: a layer's, or all of a shard's).</param>
    /// <param name="pool">The host threads the update runs on (its model's HostPool).</param>
    public ShardedOptimizer(IEnumerable<ParameterSlice> bucket, OptimizerOptions options, int rank, int worldSize, WorkerPool pool)
    {
        _options = options;
        _pool = pool;
        var tensors = bucket.Select(p => (p.IsMatrix, p.Parameter.Length, p.Counted)).ToArray();
        TotalLength = tensors.Sum(t => t.Length);
        (Offset, Count) = CollectiveGroup.Partition(TotalLength, worldSize, rank);
        var runs = new List<(int, int, bool, bool)>();
        int start = 0;
        foreach (var (isMatrix, length, counted) in tensors)
        {
            int from = Math.Max(start, Offset), to = Math.Min(start + length, Offset + Count);
            if (from < to) runs.Add((from - Offset, to - from, isMatrix, counted));
            start += length;
        }
        _runs = [.. runs];
        _m = new float[Count];
        _v = new float[Count];
    }

    /// <summary>Length of the flattened bucket.</summary>
    public int TotalLength { get; }
    /// <summary>This replica's slice of the flattened bucket.</summary>
    public int Offset { get; }
    public int Count { get; }
    public int Step { get; private set; }

    /// <summary>AdamW's first and second moments of this slice (Count,), for checkpoints.</summary>
    internal float[] M => _m;
    internal float[] V => _v;

    /// <summary>Continues from a checkpoint taken after <paramref name="step"/> steps (the moments are restored in place).</summary>
    internal void ResumeAt(int step) => Step = step;

    /// <summary>Σ g² over the parts of this slice that count in the global norm (ParameterSlice.Counted); <paramref name="gradients"/> is the slice (Count,).</summary>
    public double CountedSquares(ReadOnlySpan<float> gradients)
    {
        double sum = 0;
        foreach (var (start, length, _, counted) in _runs)
            if (counted) sum += System.Numerics.Tensors.TensorPrimitives.SumOfSquares(gradients.Slice(start, length));
        return sum;
    }

    /// <summary>
    /// One AdamW step on this replica's slice: <paramref name="parameters"/> and <paramref name="gradients"/> are the
    /// slice (Count,), the gradient already summed over replicas; <paramref name="globalNorm"/> is the whole gradient's
    /// L2 norm, for clipping. Returns the learning rate used.
    /// </summary>
    public float Apply(Span<float> parameters, Span<float> gradients, float globalNorm)
    {
        Step++;
        float clip = _options.ClipNorm > 0 && globalNorm > _options.ClipNorm ? _options.ClipNorm / globalNorm : 1f;
        if (clip != 1f) System.Numerics.Tensors.TensorPrimitives.Multiply(gradients, clip, gradients);
        float lr = _options.LearningRateAt(Step);
        foreach (var (start, length, decay, _) in _runs)
            AdamW.Update(_pool, parameters.Slice(start, length), gradients.Slice(start, length), _m.AsSpan(start, length), _v.AsSpan(start, length),
                Step, lr, _options.Beta1, _options.Beta2, _options.Eps, decay ? _options.WeightDecay : 0f);
        return lr;
    }
}
