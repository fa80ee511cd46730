// The grain directory of shard grains whose key is pinned ("…@{silo}", PinnedShardPlacement): the key says which silo
// holds the grain, so that silo alone records which activation it is, and any other silo finds it by the key. Why: a
// failover gives each shard of a killed silo a new key pinned to a live silo (InferenceSchedulerGrain), and under
// Orleans' distributed directory that new key's registration lands in whichever silo's range its hash falls, the
// killed silo's included; it then waits until the cluster declares the silo dead and the range's lease runs out
// (seconds after the kill). Registered where it lives, the new shard activates at once. A shard key without a pin, or
// one placed elsewhere because its silo was not active (the placement's fallback), and every other grain type, keep
// the shared (distributed) directory. Configured by the silo host: `silo.AddPinnedShardDirectory()`.
using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using Cluster.Contracts;
using Microsoft.Extensions.DependencyInjection;
using Orleans.GrainDirectory;
using Orleans.Metadata;
using Orleans.Runtime.GrainDirectory;
using Orleans.Runtime.Hosting;

namespace Cluster.Grains;

public sealed class PinnedShardDirectory(IGrainDirectory shared, IClusterMembershipService membership, ILocalSiloDetails local) : IGrainDirectory
{
    public const string Name = "pinned-shards";
    private static readonly GrainType ShardType = GrainType.Create("shard");
    private readonly ConcurrentDictionary<GrainId, GrainAddress> _here = new();   // the pinned shards activated on this silo

    private static string? PinnedSilo(GrainId grain) => ShardKey.PinnedSilo(grain.Key.ToString() ?? "");

    public static bool Serves(GrainType type) => type.Equals(ShardType);

    public Task<GrainAddress?> Register(GrainAddress address)
    {
        if (PinnedSilo(address.GrainId) != local.Name) return shared.Register(address);
        return Task.FromResult<GrainAddress?>(_here.GetOrAdd(address.GrainId, address));   // the first activation wins, as in any directory
    }

    public Task Unregister(GrainAddress address)
    {
        if (_here.TryRemove(new KeyValuePair<GrainId, GrainAddress>(address.GrainId, address))) return Task.CompletedTask;
        return PinnedSilo(address.GrainId) == local.Name ? Task.CompletedTask : shared.Unregister(address);
    }

    /// <summary>
    /// A pinned key whose silo is active lives there: its address names that silo (the activation is left open, which
    /// matches any activation there; messages are routed by silo and grain). One pinned here and not registered here
    /// is not active yet (null: the placement activates it here). Otherwise the shared directory knows.
    /// </summary>
    public Task<GrainAddress?> Lookup(GrainId grainId)
    {
        if (_here.TryGetValue(grainId, out var held)) return Task.FromResult<GrainAddress?>(held);
        string? pinned = PinnedSilo(grainId);
        if (pinned is null) return shared.Lookup(grainId);
        if (pinned == local.Name) return Task.FromResult<GrainAddress?>(null);
        var silo = membership.CurrentSnapshot.Members.Values
            .Where(m => m.Name == pinned && m.Status == SiloStatus.Active).MaxBy(m => m.SiloAddress.Generation)?.SiloAddress;
        return silo is null ? shared.Lookup(grainId) : Task.FromResult<GrainAddress?>(new GrainAddress { GrainId = grainId, SiloAddress = silo });
    }

    /// <summary>The shared directory is told of dead silos by Orleans itself; the shards registered here are on this (live) silo.</summary>
    public Task UnregisterSilos(List<SiloAddress> siloAddresses)
    {
        foreach (var (grain, address) in _here)
            if (address.SiloAddress is { } silo && siloAddresses.Contains(silo)) _here.TryRemove(grain, out _);
        return Task.CompletedTask;
    }
}

/// <summary>Sends the shard grain type to the PinnedShardDirectory.</summary>
public sealed class PinnedShardDirectoryResolver(IServiceProvider services) : IGrainDirectoryResolver
{
    public bool TryResolveGrainDirectory(GrainType grainType, GrainProperties? properties, [NotNullWhen(true)] out IGrainDirectory? grainDirectory)
    {
        grainDirectory = PinnedShardDirectory.Serves(grainType) ? services.GetRequiredKeyedService<IGrainDirectory>(PinnedShardDirectory.Name) : null;
        return grainDirectory is not null;
    }
}

public static class PinnedShardDirectoryExtensions
{
    /// <summary>Pinned shard grains register on their own silo; everything else keeps the default directory, which must be an IGrainDirectory (the distributed one).</summary>
    public static ISiloBuilder AddPinnedShardDirectory(this ISiloBuilder silo)
    {
        silo.AddGrainDirectory(PinnedShardDirectory.Name, (services, _) => new PinnedShardDirectory(
            services.GetRequiredKeyedService<IGrainDirectory>(GrainDirectoryAttribute.DEFAULT_GRAIN_DIRECTORY),
            services.GetRequiredService<IClusterMembershipService>(), services.GetRequiredService<ILocalSiloDetails>()));
        silo.Services.AddSingleton<IGrainDirectoryResolver, PinnedShardDirectoryResolver>();
        return silo;
    }
}
