// A training job (key = job id): trains a model on trainer grains across the cluster in any data × pipeline × tensor
// layout, step by step, checkpoints it, and reports progress. States: Queued -> Running (<-> Checkpointing) ->
// Completed | Failed | Cancelled. The job's record is durable (grain storage): when a silo holding a trainer dies the
// job re-places the lost shards and resumes from its last checkpoint by itself; when its own silo dies, its next
// activation does, unless it was cancelled, its silos died too often or it was submitted to another cluster. A
// completed job publishes the trained model to the serving registry.
namespace Cluster.Contracts;

public enum TrainingJobState { Queued, Running, Checkpointing, Completed, Failed, Cancelled }

/// <summary>
/// What to train and how. Dataset: "additions" (generated "a+b=" → "c" prompt/completion pairs), "stories" (generated
/// children's stories), "text" (Documents are lines of text) or "jsonl" (Documents are JSONL records: prompt/completion
/// or chat messages).
/// </summary>
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
    /// <summary>"tp=2,pp=2,dp=2" (empty: one shard).</summary>
    [Id(8)] public string Layout { get; init; } = "";
    [Id(9)] public int ZeroStage { get; init; }
    /// <summary>Silos the shards are pinned to, round-robin in (replica, stage, rank) order; null lets Orleans place them.</summary>
    [Id(10)] public string[]? Silos { get; init; }
    [Id(11)] public int Seed { get; init; } = 1;
    /// <summary>Micro-batches per replica and step (the pipeline's); each replica's share of the batch is cut into this many.</summary>
    [Id(12)] public int MicroBatches { get; init; } = 1;
    /// <summary>"1f1b" or "gpipe".</summary>
    [Id(13)] public string Schedule { get; init; } = "1f1b";
    /// <summary>Steps between checkpoints (and one at the end).</summary>
    [Id(14)] public int CheckpointEvery { get; init; } = 25;
    /// <summary>Where the trained model is served once the job completes: a model id (null: not published).</summary>
    [Id(15)] public string? ServeAs { get; init; }
    /// <summary>The layout it is served in (empty: one shard).</summary>
    [Id(16)] public string ServeLayout { get; init; } = "";
    /// <summary>Null: a full fine-tune; else LoRA adapters (published as a PEFT adapter served on the base model).</summary>
    [Id(17)] public LoraSettings? Lora { get; init; }
    /// <summary>Recompute each layer's activations in the backward instead of keeping them.</summary>
    [Id(18)] public bool ActivationCheckpointing { get; init; }
    /// <summary>"fp32" or "bf16".</summary>
    [Id(19)] public string Precision { get; init; } = "fp32";
    /// <summary>Checkpoints kept on disk (the newest, and older ones to fall back on when it fails verification).</summary>
    [Id(20)] public int KeepCheckpoints { get; init; } = 3;
    /// <summary>Publishing under a model id already served replaces it (the gateway asks the 'admin' role for it); configured models are never replaced.</summary>
    [Id(21)] public bool ReplaceServed { get; init; }

    // Value equality, lists included: submitting the same spec again is recognised as the same job.
    public bool Equals(TrainingJobSpec? other) =>
        other is not null && Source == other.Source && Dataset == other.Dataset && Steps == other.Steps && BatchSize == other.BatchSize &&
        SequenceLength == other.SequenceLength && LearningRate.Equals(other.LearningRate) && WarmupSteps == other.WarmupSteps &&
        Layout == other.Layout && ZeroStage == other.ZeroStage && Seed == other.Seed && MicroBatches == other.MicroBatches &&
        Schedule == other.Schedule && CheckpointEvery == other.CheckpointEvery && ServeAs == other.ServeAs && ServeLayout == other.ServeLayout &&
        ReplaceServed == other.ReplaceServed && Lora == other.Lora && ActivationCheckpointing == other.ActivationCheckpointing && Precision == other.Precision && KeepCheckpoints == other.KeepCheckpoints &&
        (Documents ?? []).SequenceEqual(other.Documents ?? []) && (Silos ?? []).SequenceEqual(other.Silos ?? []);

    public override int GetHashCode() => HashCode.Combine(Source, Dataset, Steps, BatchSize, SequenceLength, Layout, Seed);
}

/// <summary>One step's progress, or a change of state (Step is the last step taken); Note tells of checkpoints, resumes and publishing.</summary>
[GenerateSerializer, Immutable]
public sealed record TrainingJobEvent(
    [property: Id(0)] int Step, [property: Id(1)] float Loss, [property: Id(2)] float LearningRate,
    [property: Id(3)] float TokensPerSecond, [property: Id(4)] TrainingJobState State, [property: Id(5)] string? Error = null,
    [property: Id(6)] string? Note = null,
    /// <summary>Model FLOP utilisation since the job (re)started (Cluster.Training.ModelFlops); null when the trainers' peak is unknown.</summary>
    [property: Id(7)] float? Mfu = null,
    /// <summary>MoE models: each expert's choices in the step (summed over layers and replicas), choices dropped over capacity, the balancing and z-losses.</summary>
    [property: Id(8)] long[]? ExpertLoad = null, [property: Id(9)] long? DroppedTokens = null, [property: Id(10)] float? RouterLoss = null)
{
    /// <summary>Whether this event reports a step taken (rather than a change of state, a checkpoint or a resume).</summary>
    public bool IsStep => Note is null && Step > 0 && State is TrainingJobState.Running or TrainingJobState.Checkpointing;
}

[GenerateSerializer, Immutable]
public sealed record TrainingJobStatus(
    [property: Id(0)] string Id, [property: Id(1)] TrainingJobState State, [property: Id(2)] int Step,
    [property: Id(3)] int Steps, [property: Id(4)] float? Loss, [property: Id(5)] string? Error,
    [property: Id(6)] string Layout = "", [property: Id(7)] int CheckpointStep = 0, [property: Id(8)] int Restarts = 0,
    [property: Id(9)] string? Model = null);

/// <summary>What a job keeps in grain storage: enough to resume it anywhere.</summary>
[GenerateSerializer]
public sealed class TrainingJobRecord
{
    [Id(0)] public TrainingJobSpec? Spec { get; set; }
    [Id(1)] public TrainingJobState State { get; set; }
    [Id(2)] public string? Error { get; set; }
    /// <summary>The step log up to the last checkpoint (steps after it are redone on a resume, so never counted twice).</summary>
    [Id(3)] public List<TrainingJobEvent> Events { get; set; } = [];
    [Id(4)] public string? Checkpoint { get; set; }
    [Id(5)] public int CheckpointStep { get; set; }
    [Id(6)] public int Restarts { get; set; }
    [Id(7)] public string? Model { get; set; }
    [Id(8)] public long Epoch { get; set; }
    /// <summary>The Orleans cluster id it was submitted to: a silo of another cluster sharing the directory never resumes it.</summary>
    [Id(9)] public string? ClusterId { get; set; }
    /// <summary>How many times a silo running it (its own or a trainer's) died: at TrainingOptions.MaxSiloLosses it fails instead of resuming.</summary>
    [Id(10)] public int SiloLosses { get; set; }
    /// <summary>Cancel was asked for: the job stops, and is never resumed, even when its silo dies before it has stopped.</summary>
    [Id(11)] public bool CancelRequested { get; set; }
    /// <summary>Its last activation ended in order (a silo shutting down, not dying): the next one is not a silo loss.</summary>
    [Id(12)] public bool DeactivatedInOrder { get; set; }
}

public interface ITrainingJobGrain : IGrainWithStringKey
{
    /// <summary>Validates the spec and starts the job; a job id takes one spec (submitting it again answers its status).</summary>
    Task<TrainingJobStatus> Submit(TrainingJobSpec spec);

    /// <summary>Null when nothing was submitted under this id. (Asking wakes a job whose silo died: it resumes.)</summary>
    Task<TrainingJobStatus?> Status();

    /// <summary>Every event from the job's start (past ones first), until it ends.</summary>
    IAsyncEnumerable<TrainingJobEvent> Events();

    /// <summary>Stops the job after its current step, for good (recorded before it answers); null when nothing was submitted under this id.</summary>
    Task<TrainingJobStatus?> Cancel();
}
