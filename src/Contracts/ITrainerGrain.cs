// A data-parallel trainer: one replica of a model being trained, on one silo. Every step each trainer of the group
// runs forward and backward on its part of the global batch, the gradients are summed with a ring all-reduce among
// the trainers (so every replica holds the same bits), and each applies the same AdamW update.
// Key: "{jobId}/{rank}", optionally "@{siloName}" to pin it.
namespace Cluster.Contracts;

/// <summary>One training sequence as the trainers receive it (see Cluster.Training.TrainingSequence).</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingSequenceMessage([property: Id(0)] int[] Tokens, [property: Id(1)] int[] Targets, [property: Id(2)] int[]? Documents);

/// <summary>Where a trainer sits and how it trains: the model, its data-parallel group, the optimizer's settings.</summary>
[GenerateSerializer, Immutable]
public sealed record TrainerAssignment(
    [property: Id(0)] ModelSource Source,
    [property: Id(1)] string[] Group,
    [property: Id(2)] int Rank,
    [property: Id(3)] long Epoch,
    [property: Id(4)] float LearningRate,
    [property: Id(5)] float MinLearningRate,
    [property: Id(6)] int WarmupSteps,
    [property: Id(7)] int TotalSteps,
    [property: Id(8)] float WeightDecay,
    [property: Id(9)] float ClipNorm,
    /// <summary>0: every replica keeps the whole optimizer state; 1: ZeRO-1, each keeps its slice's.</summary>
    [property: Id(10)] int ZeroStage = 0);

/// <summary>This trainer's part of one step's global batch; GlobalTargets counts the targets of the whole batch.</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingStepMessage([property: Id(0)] long Epoch, [property: Id(1)] TrainingSequenceMessage[] Sequences, [property: Id(2)] int GlobalTargets);

/// <summary>This trainer's share of the step's mean loss (the shares add up to it), and the step's learning rate and gradient norm.</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingStepReport([property: Id(0)] int Step, [property: Id(1)] float LossShare, [property: Id(2)] float LearningRate, [property: Id(3)] float GradientNorm);

public interface ITrainerGrain : ICollectiveMember
{
    /// <summary>Loads the model (fresh weights from the source) and starts a run in the assignment's epoch.</summary>
    Task Start(TrainerAssignment assignment);

    Task<TrainingStepReport> Step(TrainingStepMessage step);

    /// <summary>Every parameter as float32 bytes, in the model's fixed parameter order.</summary>
    Task<byte[]> ParameterBytes();
}
