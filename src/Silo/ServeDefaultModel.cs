// Once the silo is up, activates the default model's scheduler (which places and loads its shards) and logs "ready";
// a silo told not to serve (Cluster__Model__Serve=false) logs "ready" as soon as it is up.
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
        if (!settings.ServeModel)
        {
            log.LogInformation("ready: silo {Silo} is up (another silo serves the model)", settings.SiloName);
            return;
        }
        var scheduler = grains.GetGrain<IInferenceSchedulerGrain>(settings.ModelId);
        var shard = await scheduler.Serve(settings.Serving).WaitAsync(stoppingToken);
        var status = await scheduler.Status();
        log.LogInformation("ready: silo {Silo} serves model '{Model}' ({Config}) with layout '{Layout}' on shards {Shards}",
            settings.SiloName, settings.ModelId, shard.Config, settings.Layout, string.Join(", ", status.Shards));
    }
}
