// Everything a silo needs to host this project's grains: shard, scheduler and training options, the model roots, the pinned-shard
// placement director, the device inventory report, the durable records' storage (files under the training root: jobs,
// served models, the registry) and the training jobs' keeper.
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Orleans.Runtime.Hosting;
using Orleans.Storage;

namespace Cluster.Grains;

public static class SiloBuilderExtensions
{
    /// <summary>The grain storage of durable records: training jobs, models served through the API, the model registry.</summary>
    public const string RecordStorage = "cluster-records";

    public static ISiloBuilder AddClusterGrains(
        this ISiloBuilder silo, Action<ShardOptions>? shards = null, Action<SchedulerOptions>? schedulers = null, Action<TrainingOptions>? training = null,
        Action<ModelRootOptions>? modelRoots = null)
    {
        silo.Services.AddOptions<ModelRootOptions>().Configure(o => modelRoots?.Invoke(o));
        silo.Services.AddSingleton<ModelRoots>();
        silo.Services.AddOptions<ShardOptions>().Configure(o => shards?.Invoke(o));
        silo.Services.AddOptions<SchedulerOptions>().Configure(o => schedulers?.Invoke(o));
        silo.Services.AddOptions<TrainingOptions>().Configure(o => training?.Invoke(o));
        silo.Services.AddGrainStorage(RecordStorage, (services, _) => new RecordFileStorage(
            services.GetRequiredService<IOptions<TrainingOptions>>().Value.RecordsDirectory, services.GetRequiredService<IGrainStorageSerializer>()));
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, TrainingJobKeeper>();
        silo.Services.AddPlacementDirector<PinnedShardPlacementStrategy, PinnedShardPlacementDirector>();
        silo.Services.AddSingleton<DeviceSlots>();
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, DeviceInventoryReporter>();
        return silo;
    }
}
