// The cluster's list of served models (key 0).
namespace Cluster.Contracts;

/// <summary>A served model: its id, a description of its config, its layout and the keys of its shards.</summary>
[GenerateSerializer, Immutable]
public sealed record ModelEntry(
    [property: Id(0)] string Id, [property: Id(1)] string Config, [property: Id(2)] string Layout, [property: Id(3)] string[] Shards);

public interface IModelRegistryGrain : IGrainWithIntegerKey
{
    Task Register(ModelEntry entry);

    Task<ModelEntry[]> List();
}
