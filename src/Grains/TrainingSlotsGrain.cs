// The running-job slots (ITrainingSlotsGrain): TrainingOptions.MaxRunningJobs leases, each lapsing after SlotLease
// without a renewal. Kept in memory: a new activation starts empty and the running jobs take their slots back on their
// next renewal (while the first of them do, one more job may start than the limit says).
using Cluster.Contracts;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

public sealed class TrainingSlotsGrain(IOptions<TrainingOptions> options) : Grain, ITrainingSlotsGrain
{
    private readonly Dictionary<string, DateTime> _leases = [];   // job -> when its lease lapses

    public Task<bool> TryHold(string jobId)
    {
        var now = DateTime.UtcNow;
        foreach (var lapsed in _leases.Where(l => l.Value < now).Select(l => l.Key).ToList()) _leases.Remove(lapsed);
        bool held = _leases.ContainsKey(jobId) || _leases.Count < options.Value.MaxRunningJobs;
        if (held) _leases[jobId] = now + options.Value.SlotLease;
        return Task.FromResult(held);
    }

    public Task Release(string jobId)
    {
        _leases.Remove(jobId);
        return Task.CompletedTask;
    }
}
