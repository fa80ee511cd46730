// Per-silo settings of training jobs: where checkpoints, trained models and job records live (every silo must see
// the same directory: one machine's disk, or a shared file system across machines), and failure handling.
namespace Cluster.Grains;

public sealed class TrainingOptions
{
    /// <summary>Root of checkpoints ({Root}/jobs/{id}/step-N), trained models ({Root}/jobs/{id}/model.gguf) and the durable records of jobs and served models ({Root}/records).</summary>
    public string Root { get; set; } = Path.Combine(Path.GetTempPath(), "cluster-training");
    /// <summary>How long one training step may take before its trainers are presumed lost.</summary>
    public TimeSpan StepTimeout { get; set; } = TimeSpan.FromMinutes(2);
    /// <summary>How long a job keeps trying to re-place and restart its trainers after a loss before it fails.</summary>
    public TimeSpan RecoveryTimeout { get; set; } = TimeSpan.FromSeconds(60);
    /// <summary>How often each silo wakes the running jobs (a job whose silo died resumes on its next activation).</summary>
    public TimeSpan KeeperInterval { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Trainers (shards of the layout) one job may start.</summary>
    public int MaxTrainersPerJob { get; set; } = 64;

    public string JobDirectory(string id) => Path.Combine(Root, "jobs", Uri.EscapeDataString(id));
    /// <summary>A running job leaves a marker here, so the keeper knows which jobs to wake.</summary>
    public string RunningDirectory => Path.Combine(Root, "running");
}
