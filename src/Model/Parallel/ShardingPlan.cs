// The one owner of the rank grid (Megatron's parallel_state): which replica, pipeline stage and tensor-parallel
// rank each shard is, and which slice of which weight it holds. Megatron's pattern: Q/K/V and the MLP gate/up are
// column-parallel (by KV-head groups and hidden units), the attention output and MLP down projections row-parallel,
// the embedding and LM head vocab-parallel on the first and last stage.
using Cluster.Compute.Collectives;

namespace Cluster.Model.Parallel;

/// <summary>A contiguous range [Offset, Offset + Count).</summary>
public readonly record struct Slice(int Offset, int Count)
{
    public int End => Offset + Count;

    /// <summary>Piece <paramref name="index"/> of <paramref name="length"/> split into <paramref name="parts"/> near-equal pieces (the first length % parts get one more).</summary>
    public static Slice Partition(int length, int parts, int index)
    {
        var (offset, count) = CollectiveGroup.Partition(length, parts, index);   // the same split the collectives use
        return new Slice(offset, count);
    }
}

/// <summary>
/// One shard's place in the grid and the slices it owns. <see cref="TensorParallel"/> counts the ranks of its stage's
/// group (the layout's StageRanks: tp, or ep for an MoE model whose experts are spread wider than its heads).
/// </summary>
public sealed record ShardSpec(
    int Replica, int Stage, int Rank, int TensorParallel,
    Slice Layers,          // the decoder layers of this stage
    Slice QueryHeads,      // this rank's attention heads
    Slice KvHeads,         // the KV heads those query heads read
    Slice Hidden,          // this rank's MLP hidden units
    Slice Vocab,           // this rank's rows of the embedding and the LM head
    bool IsFirstStage,
    bool IsLastStage,
    Slice Experts,             // this rank's experts of each layer (a dense model: its one MLP)
    Slice SharedHidden)        // this rank's hidden units of an MoE layer's shared expert (none: empty)
{
    /// <summary>The shard that holds the whole model.</summary>
    public static ShardSpec Whole(ModelConfig c) => ShardingPlan.Create(c, ParallelLayout.Single).Get(0, 0, 0);

    public override string ToString() =>
        $"replica {Replica} stage {Stage} rank {Rank}/{TensorParallel}: layers {Layers.Offset}..{Layers.End - 1}, " +
        $"heads {QueryHeads.Offset}..{QueryHeads.End - 1}, hidden {Hidden.Offset}..{Hidden.End - 1}";
}

public sealed class ShardingPlan
{
    private readonly ShardSpec[] _shards;   // (replica, stage, rank) row-major

    private ShardingPlan(ModelConfig config, ParallelLayout layout, ShardSpec[] shards)
    {
        Config = config;
        Layout = layout;
        _shards = shards;
    }

    public ModelConfig Config { get; }
    public ParallelLayout Layout { get; }
    public IReadOnlyList<ShardSpec> Shards => _shards;

    public ShardSpec Get(int replica, int stage, int rank) => _shards[(replica * Layout.PipelineStages + stage) * Layout.StageRanks + rank];

    /// <summary>The group of a stage (its tensor- or expert-parallel ranks), in rank order.</summary>
    public ShardSpec[] TensorGroup(int replica, int stage) => [.. Enumerable.Range(0, Layout.StageRanks).Select(r => Get(replica, stage, r))];

    public static ShardingPlan Create(ModelConfig c, ParallelLayout layout)
    {
        int tp = layout.TensorParallel, ep = layout.ExpertParallel, pp = layout.PipelineStages, ranks = layout.StageRanks;
        void Require(bool ok, string what)
        {
            if (!ok) throw new ArgumentException($"layout {layout} does not fit {c.Layers} layers, {c.KvHeads} KV heads: {what}", nameof(layout));
        }
        Require(tp >= 1 && pp >= 1 && layout.DataParallel >= 1, "degrees must be at least 1");
        Require(tp <= c.KvHeads, $"tensor parallelism splits KV heads, so tp may be at most {c.KvHeads}");
        Require(tp <= c.HiddenDim && tp <= c.VocabSize, "tp is larger than the hidden size or the vocabulary");
        Require(pp <= c.Layers, "every pipeline stage needs at least one layer");
        Require(ep == 1 || c.Moe is not null, "expert parallelism (ep) needs a mixture-of-experts model");
        Require(c.Moe is null || tp == 1 || ep == tp, "an MoE model's tensor-parallel ranks split its experts (ep = tp): an expert is not cut");
        Require(ep <= (c.Moe?.Experts ?? 1), $"ep = {ep} is more ranks than the {c.Moe?.Experts} experts of a layer");
        Require(ranks <= c.VocabSize, "the stage's ranks outnumber the vocabulary");
        int sharedHidden = c.Moe?.SharedExpertHidden ?? 0;
        Require(sharedHidden == 0 || ranks <= sharedHidden, "the stage's ranks outnumber the shared expert's hidden units");
        int[] stageLayers = layout.StageLayers?.ToArray() ?? [.. Enumerable.Range(0, pp).Select(s => Slice.Partition(c.Layers, pp, s).Count)];
        Require(stageLayers.Length == pp && stageLayers.All(n => n > 0) && stageLayers.Sum() == c.Layers,
            $"stage layers {string.Join('+', stageLayers)} must be {pp} positive counts adding up to {c.Layers}");

        int groupSize = c.Heads / c.KvHeads;
        var shards = new List<ShardSpec>();
        for (int replica = 0; replica < layout.DataParallel; replica++)
        {
            int firstLayer = 0;
            for (int stage = 0; stage < pp; stage++)
            {
                for (int rank = 0; rank < ranks; rank++)
                {
                    var kv = Slice.Partition(c.KvHeads, tp, tp == 1 ? 0 : rank);   // tp = 1 under ep: every rank has every head
                    shards.Add(new ShardSpec(replica, stage, rank, ranks,
                        new Slice(firstLayer, stageLayers[stage]),
                        new Slice(kv.Offset * groupSize, kv.Count * groupSize), kv,
                        c.Moe is null ? Slice.Partition(c.HiddenDim, tp, rank) : new Slice(0, c.HiddenDim),   // an expert is never cut
                        Slice.Partition(c.VocabSize, ranks, rank),
                        stage == 0, stage == pp - 1,
                        Slice.Partition(c.FfnBlocks, c.Moe is null ? 1 : ranks, c.Moe is null ? 0 : rank),
                        Slice.Partition(sharedHidden, ranks, rank)));   // the shared expert is cut by hidden units, as a dense MLP by tp
                }
                firstLayer += stageLayers[stage];
            }
        }
        return new ShardingPlan(c, layout, [.. shards]);
    }
}
