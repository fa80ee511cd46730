// Once the silo is up, activates the default model's scheduler (which loads its shard) and logs "ready".
using Cluster.Contracts;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.Silo;

public sealed class ServeDefaultModel(
    SiloSettings settings, IGrainFactory grains, IHostApplicationLifetime lifetime, ILogger<ServeDefaultModel> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var started = new TaskCompletionSource();
        using (lifetime.ApplicationStarted.Register(started.SetResult))
            await started.Task.WaitAsync(stoppingToken);
        var scheduler = grains.GetGrain<IInferenceSchedulerGrain>(settings.ModelId);
        var shard = await scheduler.Serve(new ModelServing(settings.Model, settings.ShardSilo)).WaitAsync(stoppingToken);
        log.LogInformation("ready: silo {Silo} serves model '{Model}' ({Config}) on shard {Shard} at silo {ShardSilo}, {Device}",
            settings.SiloName, settings.ModelId, shard.Config, shard.Key, shard.Silo, shard.Device);
    }
}
