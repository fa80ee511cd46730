// Messages of the shards' forward protocol. Activations travel as raw float32 bytes, never as float[]; logits stay on
// the last stage, which sends back token ids.
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

/// <summary>
/// New tokens of one sequence; a shard creates the sequence's KV cache entry on first sight of its id. A chunk that
/// carries the sequence's last token so far also says how to pick the next one (Sample): the last stage samples it
/// from the logits there, and only the token id goes back to the scheduler.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record ForwardChunk([property: Id(0)] Guid Sequence, [property: Id(1)] int[] Tokens, [property: Id(2)] TokenSampling? Sample = null);

/// <summary>
/// How a sequence's next token is picked: temperature (below 1e-4: the argmax), top-p, top-k, and the state of the
/// sequence's random generator now (xorshift64*, never 0). A sampled token draws one number from the generator; its
/// owner (the scheduler) moves its own copy of the state past that draw, so a replayed step draws the same token.
/// </summary>
/// <paramref name="TopLogprobs"/>: -1 asks for no log-probabilities; 0 to 20, for the sampled token's and that many of
/// the most likely tokens' (TokenLogprobs). With a presence or frequency penalty, <paramref name="Generated"/> holds the
/// tokens the sequence has generated so far (the penalties' counts, sent whole each step so a replayed step needs no
/// state on the shard).
[GenerateSerializer, Immutable]
public sealed record TokenSampling([property: Id(0)] float Temperature, [property: Id(1)] float TopP, [property: Id(2)] int TopK, [property: Id(3)] ulong Generator,
    [property: Id(4)] int TopLogprobs = -1, [property: Id(5)] float PresencePenalty = 0, [property: Id(6)] float FrequencyPenalty = 0,
    [property: Id(7)] int[]? Generated = null, [property: Id(8)] LogitBias? Bias = null);

/// <summary>OpenAI's logit_bias: each listed token's logit is raised by its value (-100 to 100) before sampling.</summary>
[GenerateSerializer, Immutable]
public sealed record LogitBias([property: Id(0)] int[] Tokens, [property: Id(1)] float[] Values);

/// <summary>
/// The sampled token's log-probability under the model's distribution (log-softmax of the raw logits, before
/// penalties, temperature, top-k and top-p) and the most likely tokens' ids and log-probabilities, most likely first.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record TokenLogprobs([property: Id(0)] float Logprob, [property: Id(1)] int[] TopTokens, [property: Id(2)] float[] TopLogprobs);

/// <summary>
/// One pipeline step: sequences that ended (their KV blocks are freed first, in step order, so every shard's cache
/// sees the same history), the chunks, and after the first stage the previous stage's hidden states (T', C) as
/// float32 bytes, T' leaving out each chunk's cached prefix, whose length (PrefixHits) the first stage found.
/// StepId names the step: the scheduler takes its sampled tokens straight from the last stage (IShardGrain.SampledTokens)
/// rather than back up through every earlier stage. Immutable: not copied between grains of one silo.
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

/// <summary>
/// One token per chunk of the step, in order: the one sampled after the chunk's last token, or -1 where the chunk asked
/// for none; and where any chunk asked for log-probabilities, one entry per chunk (null where it did not).
/// </summary>
[GenerateSerializer, Immutable]
public sealed record StageResult([property: Id(0)] int[] Tokens, [property: Id(1)] TokenLogprobs?[]? Logprobs = null);

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
