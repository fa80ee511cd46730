// Once the silo is up, activates the default model's scheduler (which places and loads its shards) and logs "ready";
// a silo told not to serve (Cluster__Model__Serve=false) logs "ready" as soon as it is up. With the shards pinned to
// named silos (Cluster__Model__Silos), it first waits for each of them to join the cluster, for at most
// Cluster__Model__JoinTimeout seconds (120): a shard whose silo has not joined yet would be placed on another one, and
// stay there. After the timeout it serves anyway, saying which silos are missing.
using Cluster.Contracts;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.Silo;

public sealed class ServeDefaultModel(
    SiloSettings settings, IGrainFactory grains, IClusterMembershipService membership, IHostApplicationLifetime lifetime, ILogger<ServeDefaultModel> log) : BackgroundService
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
        if (settings.ShardSilos is { Length: > 0 } pinned)
            await WaitForSilos(pinned, settings.JoinTimeout, stoppingToken);
        var scheduler = grains.GetGrain<IInferenceSchedulerGrain>(settings.ModelId);
        var shard = await scheduler.Serve(settings.Serving).WaitAsync(stoppingToken);
        var status = await scheduler.Status();
        log.LogInformation("ready: silo {Silo} serves model '{Model}' ({Config}) with layout '{Layout}' on shards {Shards}",
            settings.SiloName, settings.ModelId, shard.Config, settings.Layout, string.Join(", ", status.Shards));
    }

    /// <summary>Returns once every named silo is active in the membership, or after <paramref name="timeout"/> (with a warning).</summary>
    private async Task WaitForSilos(string[] names, TimeSpan timeout, CancellationToken stoppingToken)
    {
        var deadline = DateTime.UtcNow + timeout;
        string[] Missing() => [.. names.Distinct().Where(name => !membership.CurrentSnapshot.Members.Values.Any(m => m.Name == name && m.Status == SiloStatus.Active))];
        bool said = false;
        for (var missing = Missing(); missing.Length > 0; missing = Missing())
        {
            if (DateTime.UtcNow >= deadline)
            {
                log.LogWarning("silos {Missing} did not join within {Timeout}: their shards go to other silos", string.Join(", ", missing), timeout);
                return;
            }
            if (!said) log.LogInformation("waiting for silos {Missing} to join before serving (their shards are pinned there)", string.Join(", ", missing));
            said = true;
            await Task.Delay(TimeSpan.FromMilliseconds(250), stoppingToken);
        }
    }
}
