// A trainer: one shard of a model being trained (a pipeline stage's layers at one tensor-parallel rank, in one
// data-parallel replica), on one silo. Every step each trainer runs its stage's part of the pipeline schedule over its
// replica's micro-batches (activations to the next stage's trainer, gradients back), then the replicas sum their
// gradients with a ring all-reduce (or ZeRO-1) and each applies the same AdamW update.
// Key: "{jobId}/{replica}.{stage}.{rank}", optionally "@{siloName}" to pin it.
namespace Cluster.Contracts;

/// <summary>One training sequence as the trainers receive it (see Cluster.Training.TrainingSequence).</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingSequenceMessage([property: Id(0)] int[] Tokens, [property: Id(1)] int[] Targets, [property: Id(2)] int[]? Documents);

/// <summary>
/// LoRA: train rank-<paramref name="Rank"/> adapters on <paramref name="Targets"/> (wq, wk, wv, wo, w1, w2, w3) of a
/// frozen base; <paramref name="QuantizeBase"/> holds the base in NF4 (QLoRA).
/// </summary>
[GenerateSerializer, Immutable]
public sealed record LoraSettings(
    [property: Id(0)] int Rank, [property: Id(1)] float Alpha, [property: Id(2)] string[] Targets, [property: Id(3)] float Dropout = 0,
    [property: Id(4)] bool QuantizeBase = false)
{
    public bool Equals(LoraSettings? other) =>
        other is not null && Rank == other.Rank && Alpha.Equals(other.Alpha) && Targets.SequenceEqual(other.Targets) && Dropout.Equals(other.Dropout) &&
        QuantizeBase == other.QuantizeBase;

    public override int GetHashCode() => HashCode.Combine(Rank, Alpha, Targets.Length, Dropout);
}

/// <summary>
/// Where a trainer sits and how it trains: the model, the layout and every shard's key in ShardingPlan order (replica,
/// stage, rank), this trainer's index there, the optimizer's settings, and the checkpoint to start from (null: the source's weights).
/// </summary>
[GenerateSerializer, Immutable]
public sealed record TrainerAssignment(
    [property: Id(0)] ModelSource Source,
    [property: Id(1)] string Layout,
    [property: Id(2)] string[] Shards,
    [property: Id(3)] int Index,
    [property: Id(4)] long Epoch,
    [property: Id(5)] float LearningRate,
    [property: Id(6)] float MinLearningRate,
    [property: Id(7)] int WarmupSteps,
    [property: Id(8)] int TotalSteps,
    [property: Id(9)] float WeightDecay,
    [property: Id(10)] float ClipNorm,
    /// <summary>0: every replica keeps the whole optimizer state; 1: ZeRO-1, each keeps its slice's; 2: ZeRO-2, and its slice of the gradients; 3: ZeRO-3, and of the layers' parameters.</summary>
    [property: Id(11)] int ZeroStage = 0,
    [property: Id(12)] string? RestoreFrom = null,
    /// <summary>Null: every weight trains; else LoRA adapters on the frozen weights.</summary>
    [property: Id(13)] LoraSettings? Lora = null,
    /// <summary>Keep only each layer's input in the forward; the backward recomputes the rest.</summary>
    [property: Id(14)] bool ActivationCheckpointing = false,
    /// <summary>"fp32" or "bf16" (bf16 products, fp32 master weights and optimizer state).</summary>
    [property: Id(15)] string Precision = "fp32");

/// <summary>This trainer's replica's micro-batches of one step; GlobalTargets counts the targets of every replica's together.</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingStepMessage(
    [property: Id(0)] long Epoch, [property: Id(1)] TrainingSequenceMessage[][] MicroBatches, [property: Id(2)] int GlobalTargets,
    /// <summary>"1f1b" or "gpipe".</summary>
    [property: Id(3)] string Schedule = "1f1b",
    /// <summary>Copy the trainer's state right after this step, for a SaveCheckpoint of this step to write (in the step's own work, so every replica copies between the same steps).</summary>
    [property: Id(4)] bool CaptureAfter = false);

/// <summary>The step's number, this trainer's share of its mean loss (last stages, rank 0; 0 elsewhere), its learning rate and gradient norm.</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingStepReport([property: Id(0)] int Step, [property: Id(1)] float LossShare, [property: Id(2)] float LearningRate, [property: Id(3)] float GradientNorm,
    /// <summary>MoE (reported by rank 0 of each stage's group): the choices of each expert over the stage's layers, those dropped, the router losses' share.</summary>
    [property: Id(4)] long[]? ExpertLoad = null, [property: Id(5)] long DroppedTokens = 0, [property: Id(6)] float RouterLoss = 0);

/// <summary>
/// Where a started trainer runs and the compute it draws on: its silo, its CPU threads, the silo's cores and one core's
/// measured FP32 FLOP/s (0 when its kernels run on an ILGPU device, whose peak is not known): the peak MFU is taken against.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record TrainerStarted([property: Id(0)] SiloAddress Silo, [property: Id(1)] int Threads, [property: Id(2)] int SiloCores, [property: Id(3)] double FlopsPerCore);

public interface ITrainerGrain : ICollectiveMember
{
    /// <summary>
    /// Loads its shard (from the checkpoint when one is given, else the source's weights) and starts a run in the
    /// assignment's epoch; an earlier epoch's run ends. Answers the silo it runs on and the compute it uses there.
    /// </summary>
    Task<TrainerStarted> Start(TrainerAssignment assignment);

    Task<TrainingStepReport> Step(TrainingStepMessage step);

    /// <summary>
    /// Writes the state copied after step <paramref name="step"/> (whose message asked for it with CaptureAfter) into
    /// <paramref name="directory"/> (the job's staging directory of that checkpoint), while training goes on. Completes when written.
    /// </summary>
    Task SaveCheckpoint(long epoch, string directory, int step);

    /// <summary>Ends the run (a step blocked on a lost peer fails) and frees the shard.</summary>
    Task Stop();

    /// <summary>Every parameter of its shard as float32 bytes, in the shard's fixed parameter order (with ZeRO-3, ask every replica together: they gather the layers).</summary>
    Task<byte[]> ParameterBytes();
}
