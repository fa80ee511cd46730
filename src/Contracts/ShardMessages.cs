// Messages of the shard's forward protocol. Logits travel as raw float32 bytes, never as float[].
namespace Cluster.Contracts;

/// <summary>New tokens of one sequence; the shard creates the sequence's KV cache entry on first sight of its id.</summary>
[GenerateSerializer, Immutable]
public sealed record ForwardChunk([property: Id(0)] Guid Sequence, [property: Id(1)] int[] Tokens, [property: Id(2)] bool AllLogits = false);

[GenerateSerializer, Immutable]
public sealed record ForwardBatch([property: Id(0)] ForwardChunk[] Chunks);

/// <summary>Rows × VocabSize float32 logits (little-endian), one row per chunk, or one per token where AllLogits.</summary>
[GenerateSerializer, Immutable]
public sealed record ForwardResult([property: Id(0)] byte[] Logits, [property: Id(1)] int Rows, [property: Id(2)] int VocabSize);

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
    [property: Id(8)] int MaxSeqLen);
