// The admission estimate of a trainer's memory against the shards a layout really makes: with one token in flight the
// estimate is the largest shard's parameters, gradients and AdamW moments (16 bytes per parameter) and little more, for
// dense and MoE models (an MoE shard holds its share of the experts and the router) under tp, pp and ep.
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class TrainingMemoryTests
{
    [Theory]
    [InlineData("tiny", "tp=1")]
    [InlineData("tiny", "tp=2")]
    [InlineData("tiny", "pp=2,dp=2")]
    [InlineData("moe-tiny", "tp=1")]
    [InlineData("moe-tiny", "ep=2")]
    [InlineData("moe-tiny", "ep=4")]
    [InlineData("moe-tiny", "ep=2,pp=2")]
    [InlineData("moe-tiny", "tp=2,ep=2")]
    public void TheEstimateCoversTheLargestShardsState(string preset, string layoutText)
    {
        var model = RandomModel.Create(preset, seed: 1);
        var layout = ParallelLayout.Parse(layoutText);
        var plan = ShardingPlan.Create(model.Config, layout);
        long largestShard = plan.Shards.Max(s => Parameters(model.Config, ShardWeights.Slice(model.Config, model.Weights, s))) * sizeof(float);
        long estimate = TrainingMemory.LargestShardBytes(model.Config, new TrainingMemoryPlan(layout, BatchSize: layout.DataParallel,
            SequenceLength: 1, MicroBatches: 1, Schedule: "1f1b", ZeroStage: 0, Lora: false, Recompute: false));

        Assert.True(estimate >= 4 * largestShard, $"{preset} {layout}: estimate {estimate} below the largest shard's state {4 * largestShard}");
        Assert.True(estimate <= 4 * largestShard * 1.1, $"{preset} {layout}: estimate {estimate} far above the largest shard's state {4 * largestShard}");
    }

    /// <summary>The parameters a shard trains: a head tied on the embedding's own stage is the embedding itself.</summary>
    private static long Parameters(ModelConfig c, ShardWeights w)
    {
        bool headIsEmbedding = c.TiedEmbeddings && w.Spec.IsFirstStage && w.Spec.IsLastStage;
        return (w.TokenEmbedding?.Length ?? 0) + (w.PositionEmbedding?.Length ?? 0) + w.Layers.Sum(l => l.Bytes) / sizeof(float)
            + (w.FinalNorm?.Length ?? 0) + (w.FinalNormBias?.Length ?? 0) + (headIsEmbedding ? 0 : w.Output?.Length ?? 0);
    }
}
