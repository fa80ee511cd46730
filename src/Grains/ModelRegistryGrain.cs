// The list of served models; schedulers register when they start serving. Kept in the durable record storage, so the
// list outlives the silo the registry lives on.
using Cluster.Contracts;

namespace Cluster.Grains;

[GenerateSerializer]
public sealed class ModelRegistryRecord
{
    [Id(0)] public Dictionary<string, ModelEntry> Models { get; set; } = [];
}

public sealed class ModelRegistryGrain(
    [PersistentState("registry", SiloBuilderExtensions.RecordStorage)] IPersistentState<ModelRegistryRecord> stored) : Grain, IModelRegistryGrain
{
    public async Task Register(ModelEntry entry)
    {
        if (stored.State.Models.TryGetValue(entry.Id, out var known) && Same(known, entry)) return;
        stored.State.Models[entry.Id] = entry;
        await stored.WriteStateAsync();
    }

    private static bool Same(ModelEntry a, ModelEntry b) =>
        a.Id == b.Id && a.Config == b.Config && a.Layout == b.Layout && a.Shards.SequenceEqual(b.Shards);

    public Task<ModelEntry[]> List() => Task.FromResult(stored.State.Models.Values.OrderBy(m => m.Id, StringComparer.Ordinal).ToArray());
}
