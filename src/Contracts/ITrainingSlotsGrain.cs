// How many training jobs run at once (key 0): a job holds a slot while it runs and renews it as it goes; others stay
// queued until one is free. A slot whose job stopped renewing (its silo died) lapses, so a lost job never holds one.
namespace Cluster.Contracts;

public interface ITrainingSlotsGrain : IGrainWithIntegerKey
{
    /// <summary>Takes or renews a slot for the job; false when every slot is held by another job.</summary>
    Task<bool> TryHold(string jobId);

    Task Release(string jobId);
}
