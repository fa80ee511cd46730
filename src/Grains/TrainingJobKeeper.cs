// Wakes running training jobs: every silo looks at the running-job markers now and then and asks each job for its
// status. A job whose grain was lost with its silo activates again on that call, reads its durable record and resumes
// from its last checkpoint without anyone resubmitting it.
using Cluster.Contracts;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

public sealed class TrainingJobKeeper(IGrainFactory grains, IOptions<TrainingOptions> options, ILogger<TrainingJobKeeper> log)
    : ILifecycleParticipant<ISiloLifecycle>
{
    private readonly CancellationTokenSource _stop = new();
    private Task _loop = Task.CompletedTask;

    public void Participate(ISiloLifecycle lifecycle) => lifecycle.Subscribe(nameof(TrainingJobKeeper), ServiceLifecycleStage.Active,
        _ =>
        {
            _loop = Task.Run(KeepAsync);
            return Task.CompletedTask;
        },
        async _ =>
        {
            _stop.Cancel();
            await _loop.ContinueWith(_ => { }, TaskScheduler.Default);
        });

    private async Task KeepAsync()
    {
        var o = options.Value;
        while (!_stop.IsCancellationRequested)
        {
            try { await Task.Delay(o.KeeperInterval, _stop.Token); }
            catch (OperationCanceledException) { return; }
            if (!Directory.Exists(o.RunningDirectory)) continue;
            foreach (string marker in Directory.EnumerateFiles(o.RunningDirectory))
            {
                string id = Uri.UnescapeDataString(Path.GetFileName(marker));
                try { await grains.GetGrain<ITrainingJobGrain>(id).Status(); }
                catch (Exception e) { log.LogDebug(e, "waking training job {Job}", id); }
            }
        }
    }
}
