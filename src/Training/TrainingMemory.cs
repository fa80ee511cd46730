// How much memory one trainer (a shard of a training layout) needs, estimated before a job is accepted: its slice of
// the parameters, their gradients and AdamW moments (fp32; ZeRO stages divide what they shard by the data-parallel
// degree; LoRA keeps gradients and moments for the adapters only), and the activations its micro-batches keep for the
// backward (all of a layer's intermediates, or only each layer's input with activation checkpointing), with as many
// micro-batches in flight as the schedule allows, plus the logits and their gradient on the last stage. An MoE shard
// holds its share of each layer's experts (E/ranks, whole), of its shared expert's hidden units, and the router. It is an
// estimate to refuse jobs that cannot fit, not an allocator: real use also has packing buffers and the runtime's own.
using Cluster.Model;
using Cluster.Model.Parallel;

namespace Cluster.Training;

public sealed record TrainingMemoryPlan(
    ParallelLayout Layout, int BatchSize, int SequenceLength, int MicroBatches, string Schedule, int ZeroStage, bool Lora, bool Recompute);

public static class TrainingMemory
{
    /// <summary>Bytes the largest shard of the layout needs (first or last stage, where the embedding or head sits).</summary>
    public static long LargestShardBytes(ModelConfig c, TrainingMemoryPlan plan)
    {
        // In doubles: absurd specs (batch 4096 × sequence 65536 on a large model) must give a huge number, not an overflow.
        var layout = plan.Layout;
        int tp = layout.TensorParallel, pp = layout.PipelineStages, dp = layout.DataParallel, ranks = layout.StageRanks;
        // Attention is split by tp (replicated over an MoE stage's ep ranks when tp = 1); a dense MLP by tp; an MoE layer's
        // experts by the stage's ranks, whole (the busiest rank holds ⌈E/ranks⌉ of them), beside the router every rank holds.
        double attention = (2.0 * c.Dim * c.Dim + 2.0 * c.Dim * c.KvDim) / tp;
        int mlpMatrices = c.Architecture == Architecture.Llama ? 3 : 2;
        int localExperts = c.Moe is { } moe ? (moe.Experts + ranks - 1) / ranks : 0;
        double mlp = c.Moe is { } m
            ? localExperts * (double)mlpMatrices * c.Dim * c.HiddenDim + (double)m.Experts * c.Dim
              + 3.0 * c.Dim * Math.Ceiling((double)m.SharedExpertHidden / ranks) + (m.SharedExpertGate ? c.Dim : 0)   // the shared expert, cut by hidden units
            : (double)mlpMatrices * c.Dim * c.HiddenDim / tp;
        double layerParameters = attention + mlp + 4.0 * c.Dim;
        double embedding = (double)c.VocabSize * c.Dim * (c.TiedEmbeddings ? 1 : 2) / ranks + (c.Architecture == Architecture.Gpt2 ? (double)c.MaxSeqLen * c.Dim : 0);
        int stageLayers = layout.StageLayers?.Max() ?? (c.Layers + pp - 1) / pp;
        double parameters = stageLayers * layerParameters + embedding;   // the embedding or head is on the first or last stage

        // fp32 parameters, gradients and two AdamW moments: 4 + 4 + 8 bytes each, divided as the ZeRO stage shards them.
        double bytesPerParameter = plan.Lora ? 4 : plan.ZeroStage switch
        {
            0 => 16,
            1 => 8 + 8.0 / dp,
            2 => 4 + 12.0 / dp,
            _ => 16.0 / dp,
        };
        double state = parameters * bytesPerParameter;

        double sequencesPerMicroBatch = Math.Max(1, Math.Ceiling((double)plan.BatchSize / (dp * plan.MicroBatches)));
        double tokens = sequencesPerMicroBatch * plan.SequenceLength;
        double attentionScores = tokens * plan.SequenceLength * c.Heads / tp;    // (B, heads, T, T) probabilities kept for the backward
        // An MoE rank keeps, for each token, the rows of its experts that the token chose (at most k of them, dropless):
        // the expert's input, gate, up, hidden, output and weighted output, and the router's logits.
        double mlpActivations = c.Moe is { } routed
            ? tokens * (Math.Min(routed.ExpertsPerToken, localExperts) * (3.0 * c.Dim + 3.0 * c.HiddenDim) + routed.Experts
                + (routed.SharedExpertHidden > 0 ? 3.0 * Math.Ceiling((double)routed.SharedExpertHidden / ranks) + 2.0 * c.Dim + 1 : 0))
            : tokens * 3.0 * c.HiddenDim / tp;
        double layerActivations = tokens * 8.0 * c.Dim / tp + mlpActivations + attentionScores;
        double perMicroBatch = plan.Recompute
            ? stageLayers * tokens * c.Dim + layerActivations   // each layer's input, and one layer recomputed at a time
            : stageLayers * layerActivations;
        int inFlight = plan.Schedule == "gpipe" ? plan.MicroBatches : Math.Min(plan.MicroBatches, pp);
        double logits = 2 * tokens * c.VocabSize / ranks;   // the last stage's logits and their gradient
        return (long)Math.Min(state + 4 * (perMicroBatch * inFlight + logits), long.MaxValue / 2);
    }

    public static string Describe(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):0.0} GiB" : $"{bytes / (double)(1L << 20):0.0} MiB";
}
