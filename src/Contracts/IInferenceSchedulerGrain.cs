// The per-model entry point (key = model id): tokenizes, batches every running request into the shards' pipeline
// steps (continuous batching), samples, streams tokens.
namespace Cluster.Contracts;

public interface IInferenceSchedulerGrain : IGrainWithStringKey
{
    /// <summary>Starts serving: places and loads every shard of the layout and registers the model. Idempotent for the same serving.</summary>
    Task<ShardDescription> Serve(ModelServing serving);

    IAsyncEnumerable<GeneratedChunk> Generate(GenerationRequest request);

    /// <summary>The prompt's token ids with BOS prepended, as <see cref="Generate"/> would encode them.</summary>
    Task<int[]> Tokenize(string prompt);

    Task<SchedulerStatus> Status();
}
