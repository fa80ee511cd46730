// Everything a silo needs to host this project's grains: shard and scheduler options, the pinned-shard placement
// director, and the device inventory report.
using Microsoft.Extensions.DependencyInjection;

namespace Cluster.Grains;

public static class SiloBuilderExtensions
{
    public static ISiloBuilder AddClusterGrains(
        this ISiloBuilder silo, Action<ShardOptions>? shards = null, Action<SchedulerOptions>? schedulers = null)
    {
        silo.Services.AddOptions<ShardOptions>().Configure(o => shards?.Invoke(o));
        silo.Services.AddOptions<SchedulerOptions>().Configure(o => schedulers?.Invoke(o));
        silo.Services.AddPlacementDirector<PinnedShardPlacementStrategy, PinnedShardPlacementDirector>();
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, DeviceInventoryReporter>();
        return silo;
    }
}
