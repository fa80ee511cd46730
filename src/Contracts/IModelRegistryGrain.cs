// The cluster's list of served models (key 0).
namespace Cluster.Contracts;

[GenerateSerializer, Immutable]
public sealed record ModelEntry([property: Id(0)] string Id, [property: Id(1)] string Config, [property: Id(2)] string Owner);

public interface IModelRegistryGrain : IGrainWithIntegerKey
{
    Task Register(ModelEntry entry);

    Task<ModelEntry[]> List();
}
