// Everything a silo needs to host this project's grains: shard, scheduler and training options, the pinned-shard
// placement director, the device inventory report, the training jobs' durable storage (files under the training root)
// and their keeper.
using Microsoft.Extensions.DependencyInjection;
using Orleans.Persistence.FileStorage;

namespace Cluster.Grains;

public static class SiloBuilderExtensions
{
    public static ISiloBuilder AddClusterGrains(
        this ISiloBuilder silo, Action<ShardOptions>? shards = null, Action<SchedulerOptions>? schedulers = null, Action<TrainingOptions>? training = null)
    {
        silo.Services.AddOptions<ShardOptions>().Configure(o => shards?.Invoke(o));
        silo.Services.AddOptions<SchedulerOptions>().Configure(o => schedulers?.Invoke(o));
        silo.Services.AddOptions<TrainingOptions>().Configure(o => training?.Invoke(o));
        var trainingOptions = new TrainingOptions();
        training?.Invoke(trainingOptions);
        silo.AddFileGrainStorage(TrainingOptions.JobStorage, o => o.RootDirectory = Path.Combine(trainingOptions.Root, "records"));
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, TrainingJobKeeper>();
        silo.Services.AddPlacementDirector<PinnedShardPlacementStrategy, PinnedShardPlacementDirector>();
        silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>, DeviceInventoryReporter>();
        return silo;
    }
}
