// The per-model entry point (key = model id): tokenizes, batches every running request into the shards' pipeline
// steps (continuous batching), samples, streams tokens.
namespace Cluster.Contracts;

public interface IInferenceSchedulerGrain : IGrainWithStringKey
{
    /// <summary>Starts serving: places and loads every shard of the layout and registers the model. Idempotent for the same serving.</summary>
    Task<ShardDescription> Serve(ModelServing serving);

    /// <summary>
    /// The generation's tokens as they are sampled. Cancelling (or disposing the enumerator) ends the sequence at
    /// once, queued or running, and frees its KV blocks. Full waiting queue: <see cref="ModelOverloadedException"/>.
    /// </summary>
    IAsyncEnumerable<GeneratedChunk> Generate(GenerationRequest request, CancellationToken cancellation = default);

    /// <summary>
    /// The prompt's token ids with BOS prepended, as <see cref="Generate"/> would encode them. A prompt longer than the
    /// context could hold (by its UTF-8 length and the vocabulary's longest piece) is refused before any tokenizing.
    /// </summary>
    Task<int[]> Tokenize(string prompt, CancellationToken cancellation = default);

    Task<SchedulerStatus> Status();

    /// <summary>
    /// This activation's identity, new each time the scheduler is activated: a stream whose scheduler answers with
    /// another one than it started with lost its scheduler (the silo died), even while its own call is still pending.
    /// </summary>
    Task<Guid> Incarnation();

    /// <summary>
    /// The tokens this activation has generated so far for the stream with this GenerationRequest.Stream (resumed ones
    /// included), or -1 when it runs no such stream. More than the caller received, for longer than a response takes,
    /// means the caller's call lost its response (it came back through a gateway silo that died).
    /// </summary>
    Task<int> StreamProgress(Guid stream);
}
