// How much memory one trainer (a shard of a training layout) needs, estimated before a job is accepted: its slice of
// the parameters, their gradients and AdamW moments (fp32; ZeRO stages divide what they shard by the data-parallel
// degree; LoRA keeps gradients and moments for the adapters only), and the activations its micro-batches keep for the
// backward (all of a layer's intermediates, or only each layer's input with activation checkpointing), with as many
// micro-batches in flight as the schedule allows, plus the logits and their gradient on the last stage. It is an
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
        int tp = layout.TensorParallel, pp = layout.PipelineStages, dp = layout.DataParallel;
        double layerParameters = 2.0 * c.Dim * c.Dim + 2.0 * c.Dim * c.KvDim
            + (c.Architecture == Architecture.Llama ? 3.0 : 2.0) * c.Dim * c.HiddenDim + 4.0 * c.Dim;
        double embedding = (double)c.VocabSize * c.Dim * (c.TiedEmbeddings ? 1 : 2) + (c.Architecture == Architecture.Gpt2 ? (double)c.MaxSeqLen * c.Dim : 0);
        int stageLayers = layout.StageLayers?.Max() ?? (c.Layers + pp - 1) / pp;
        double parameters = (stageLayers * layerParameters + embedding) / tp;   // the embedding or head is on the first or last stage

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
        double layerActivations = tokens * (8.0 * c.Dim + 3.0 * c.HiddenDim) / tp + attentionScores;
        double perMicroBatch = plan.Recompute
            ? stageLayers * tokens * c.Dim + layerActivations   // each layer's input, and one layer recomputed at a time
            : stageLayers * layerActivations;
        int inFlight = plan.Schedule == "gpipe" ? plan.MicroBatches : Math.Min(plan.MicroBatches, pp);
        double logits = 2 * tokens * c.VocabSize / tp;   // the last stage's logits and their gradient
        return (long)Math.Min(state + 4 * (perMicroBatch * inFlight + logits), long.MaxValue / 2);
    }

    public static string Describe(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):0.0} GiB" : $"{bytes / (double)(1L << 20):0.0} MiB";
}
