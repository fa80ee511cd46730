// A training job (key = job id): trains a model data-parallel on trainer grains across the cluster, step by step,
// and reports progress. States: Queued -> Running -> Completed | Failed | Cancelled. Its state lives in memory on
// the job grain's silo for now: durable jobs that resume from a checkpoint after a silo loss are still to come.
namespace Cluster.Contracts;

public enum TrainingJobState { Queued, Running, Completed, Failed, Cancelled }

/// <summary>What to train and how. Dataset: "additions" (generated "a+b=c" problems) or inline Documents.</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingJobSpec
{
    [Id(0)] public required ModelSource Source { get; init; }
    [Id(1)] public string Dataset { get; init; } = "additions";
    [Id(2)] public string[]? Documents { get; init; }
    [Id(3)] public int Steps { get; init; } = 100;
    [Id(4)] public int BatchSize { get; init; } = 4;
    [Id(5)] public int SequenceLength { get; init; } = 64;
    [Id(6)] public float LearningRate { get; init; } = 1e-3f;
    [Id(7)] public int WarmupSteps { get; init; } = 10;
    [Id(8)] public int DataParallel { get; init; } = 1;
    [Id(9)] public int ZeroStage { get; init; }
    /// <summary>Silos the replicas are pinned to, round-robin; null lets Orleans place them.</summary>
    [Id(10)] public string[]? Silos { get; init; }
    [Id(11)] public int Seed { get; init; } = 1;

    // Value equality, lists included: submitting the same spec again is recognised as the same job.
    public bool Equals(TrainingJobSpec? other) =>
        other is not null && Source == other.Source && Dataset == other.Dataset && Steps == other.Steps && BatchSize == other.BatchSize &&
        SequenceLength == other.SequenceLength && LearningRate.Equals(other.LearningRate) && WarmupSteps == other.WarmupSteps &&
        DataParallel == other.DataParallel && ZeroStage == other.ZeroStage && Seed == other.Seed &&
        (Documents ?? []).SequenceEqual(other.Documents ?? []) && (Silos ?? []).SequenceEqual(other.Silos ?? []);

    public override int GetHashCode() => HashCode.Combine(Source, Dataset, Steps, BatchSize, SequenceLength, DataParallel, Seed);
}

/// <summary>One step's progress, or a change of state (Step is the last step taken).</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingJobEvent(
    [property: Id(0)] int Step, [property: Id(1)] float Loss, [property: Id(2)] float LearningRate,
    [property: Id(3)] float TokensPerSecond, [property: Id(4)] TrainingJobState State, [property: Id(5)] string? Error = null);

[GenerateSerializer, Immutable]
public sealed record TrainingJobStatus(
    [property: Id(0)] string Id, [property: Id(1)] TrainingJobState State, [property: Id(2)] int Step,
    [property: Id(3)] int Steps, [property: Id(4)] float? Loss, [property: Id(5)] string? Error);

public interface ITrainingJobGrain : IGrainWithStringKey
{
    /// <summary>Validates the spec and starts the job; a job id takes one spec (submitting it again answers its status).</summary>
    Task<TrainingJobStatus> Submit(TrainingJobSpec spec);

    /// <summary>Null when nothing was submitted under this id.</summary>
    Task<TrainingJobStatus?> Status();

    /// <summary>Every event from the job's start (past ones first), until it ends.</summary>
    IAsyncEnumerable<TrainingJobEvent> Events();

    /// <summary>Stops the job after its current step; null when nothing was submitted under this id.</summary>
    Task<TrainingJobStatus?> Cancel();
}
