// The in-memory list of served models; schedulers register when they start serving.
using Cluster.Contracts;

namespace Cluster.Grains;

public sealed class ModelRegistryGrain : Grain, IModelRegistryGrain
{
    private readonly Dictionary<string, ModelEntry> _models = [];

    public Task Register(ModelEntry entry)
    {
        _models[entry.Id] = entry;
        return Task.CompletedTask;
    }

    public Task<ModelEntry[]> List() => Task.FromResult(_models.Values.OrderBy(m => m.Id, StringComparer.Ordinal).ToArray());
}
