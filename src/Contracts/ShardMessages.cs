// Messages of the shards' forward protocol. Activations and logits travel as raw float32 bytes, never as float[].
namespace Cluster.Contracts;

/// <summary>Where a shard sits: its model, layout and grid position, its tensor-parallel peers and next stage.</summary>
[GenerateSerializer, Immutable]
public sealed record ShardAssignment(
    [property: Id(0)] ModelSource Source,
    [property: Id(1)] string Layout,
    [property: Id(2)] int Replica,
    [property: Id(3)] int Stage,
    [property: Id(4)] int Rank,
    /// <summary>Keys of the shards of this stage, in rank order (this one included).</summary>
    [property: Id(5)] string[] TensorGroup,
    /// <summary>Key of the next stage's shard of the same rank; null on the last stage.</summary>
    [property: Id(6)] string? NextStage,
    [property: Id(7)] long Epoch);

/// <summary>New tokens of one sequence; a shard creates the sequence's KV cache entry on first sight of its id.</summary>
[GenerateSerializer, Immutable]
public sealed record ForwardChunk([property: Id(0)] Guid Sequence, [property: Id(1)] int[] Tokens, [property: Id(2)] bool AllLogits = false);

/// <summary>
/// One pipeline step: sequences that ended (their KV blocks are freed first, in step order, so every shard's cache
/// sees the same history), the chunks, and after the first stage the previous stage's hidden states (T', C) as
/// float32 bytes, T' leaving out each chunk's cached prefix, whose length (PrefixHits) the first stage found.
/// StepId names the step to its scheduler: the last stage hands the logits straight to it (DeliverLogits) rather than
/// back up through every earlier stage. Immutable: not copied between grains of one silo.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record StageBatch(
    [property: Id(0)] long Epoch,
    [property: Id(1)] long Step,
    [property: Id(2)] ForwardChunk[] Chunks,
    [property: Id(3)] byte[] Hidden,
    [property: Id(4)] Guid[] Released,
    [property: Id(5)] int[]? PrefixHits = null,
    [property: Id(6)] Guid StepId = default);

/// <summary>Rows × VocabSize float32 logits (little-endian), one row per chunk, or one per token where AllLogits.</summary>
[GenerateSerializer, Immutable]
public sealed record StageResult([property: Id(0)] byte[] Logits, [property: Id(1)] int Rows, [property: Id(2)] int VocabSize);

[GenerateSerializer, Immutable]
public sealed record ShardDescription(
    [property: Id(0)] string Key,
    [property: Id(1)] string Source,
    [property: Id(2)] string Config,
    [property: Id(3)] string Device,
    [property: Id(4)] string Silo,
    [property: Id(5)] int FreeKvBlocks,
    [property: Id(6)] int TotalKvBlocks,
    [property: Id(7)] int ActiveSequences,
    [property: Id(8)] int MaxSeqLen,
    [property: Id(9)] int KvBlockSize,
    [property: Id(10)] string Slice,
    [property: Id(11)] long Epoch,
    [property: Id(12)] int CachedKvBlocks,
    [property: Id(13)] long PrefixHitTokens);

/// <summary>The step or collective belongs to an epoch that a newer one has ended (the scheduler replays).</summary>
[GenerateSerializer]
public sealed class StaleEpochException(string message) : Exception(message);
