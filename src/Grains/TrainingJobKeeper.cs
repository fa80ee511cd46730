// Wakes running training jobs: every silo looks at the running-job markers now and then and asks each job of its own
// cluster for its status. A job whose grain was lost with its silo activates again on that call, reads its durable
// record and resumes from its last checkpoint without anyone resubmitting it. A marker holds the cluster id the job
// was submitted to: jobs of another cluster sharing the training root are left alone. On start the keeper creates
// the training root (0700 on Unix) and warns when an existing one is open to other users.
using Cluster.Contracts;
using Cluster.Training;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans.Configuration;

namespace Cluster.Grains;

public sealed class TrainingJobKeeper(
    IGrainFactory grains, IOptions<TrainingOptions> options, IOptions<ClusterOptions> cluster, ILogger<TrainingJobKeeper> log)
    : ILifecycleParticipant<ISiloLifecycle>
{
    private readonly CancellationTokenSource _stop = new();
    private readonly HashSet<string> _foreign = [];   // markers of other clusters' jobs, logged once
    private Task _loop = Task.CompletedTask;

    public void Participate(ISiloLifecycle lifecycle) => lifecycle.Subscribe(nameof(TrainingJobKeeper), ServiceLifecycleStage.Active,
        _ =>
        {
            PrepareRoot();
            _loop = Task.Run(KeepAsync);
            return Task.CompletedTask;
        },
        async _ =>
        {
            _stop.Cancel();
            await _loop.ContinueWith(_ => { }, TaskScheduler.Default);
        });

    private void PrepareRoot()
    {
        string root = options.Value.Root;
        DurableFile.CreatePrivateDirectory(root);
        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(root) & ~DurableFile.PrivateDirectoryMode) != 0)
            log.LogWarning("the training root {Root} is open to other users (mode {Mode}): its checkpoints and job records are readable there", root, File.GetUnixFileMode(root));
    }

    private async Task KeepAsync()
    {
        var o = options.Value;
        string clusterId = cluster.Value.ClusterId;
        while (!_stop.IsCancellationRequested)
        {
            try { await Task.Delay(o.KeeperInterval, _stop.Token); }
            catch (OperationCanceledException) { return; }
            if (!Directory.Exists(o.RunningDirectory)) continue;
            foreach (string marker in Directory.EnumerateFiles(o.RunningDirectory))
            {
                if (marker.Contains(DurableFile.TemporarySuffix, StringComparison.Ordinal)) continue;   // a marker being written
                string id = Uri.UnescapeDataString(Path.GetFileName(marker));
                try
                {
                    string recordedUnder = (await File.ReadAllTextAsync(marker, _stop.Token)).Trim();
                    if (recordedUnder != clusterId)
                    {
                        if (_foreign.Add(marker))
                            log.LogInformation("training job {Job} runs under cluster {Recorded}, not this silo's {Cluster}: not woken here", id, recordedUnder, clusterId);
                        continue;
                    }
                    await grains.GetGrain<ITrainingJobGrain>(id).Status();
                }
                catch (Exception e) { log.LogDebug(e, "waking training job {Job}", id); }
            }
        }
    }
}
