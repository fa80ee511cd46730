// Per-silo settings of training jobs: where checkpoints, trained models and job records live (every silo must see
// the same directory: one machine's disk, or a shared file system across machines), and failure handling: how long
// lost trainers may take to come back, how often a failing step is retried, how many silo deaths a job may cause.
namespace Cluster.Grains;

public sealed class TrainingOptions
{
    private string? _root;

    /// <summary>
    /// Root of checkpoints ({Root}/jobs/{id}/step-N), trained models ({Root}/jobs/{id}/model.gguf) and the durable
    /// records of jobs and served models ({Root}/records). Default: the user's data directory
    /// ($XDG_DATA_HOME or ~/.local/share on Linux, %LOCALAPPDATA% on Windows) /cluster/training. Directories are
    /// created 0700 and records, markers and checkpoints written 0600 on Unix.
    /// </summary>
    public string Root
    {
        get => _root ??= DefaultRoot();
        set => _root = value;
    }

    /// <summary>How long one training step may take before its trainers are presumed lost.</summary>
    public TimeSpan StepTimeout { get; set; } = TimeSpan.FromMinutes(2);
    /// <summary>How long a job keeps trying to re-place and restart its trainers after a loss before it fails.</summary>
    public TimeSpan RecoveryTimeout { get; set; } = TimeSpan.FromSeconds(60);
    /// <summary>
    /// How many times a job retries from its last checkpoint when its steps (or a checkpoint's writing) fail while its
    /// trainers' silos live, before it fails with the cause; a checkpoint saved starts the count again.
    /// </summary>
    public int StepRetries { get; set; } = 3;
    /// <summary>The wait before a retry: doubled for each step retry in a row, so a failure that repeats backs off.</summary>
    public TimeSpan RetryBackoff { get; set; } = TimeSpan.FromSeconds(1);
    /// <summary>
    /// A job whose silos (its own or its trainers') died this many times while it ran fails ("took down its silo N
    /// times") instead of resuming again: a job that kills its silo, say out of memory, does not go on killing the others.
    /// </summary>
    public int MaxSiloLosses { get; set; } = 3;
    /// <summary>How often each silo wakes the running jobs (a job whose silo died resumes on its next activation).</summary>
    public TimeSpan KeeperInterval { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Jobs that run at once in the cluster; later ones wait in the queued state for a slot.</summary>
    public int MaxRunningJobs { get; set; } = 2;
    /// <summary>How long a running job's slot lasts without a renewal (it renews after a step once a quarter of this has passed).</summary>
    public TimeSpan SlotLease { get; set; } = TimeSpan.FromMinutes(5);
    /// <summary>Trainers (shards of the layout) one job may start.</summary>
    public int MaxTrainersPerJob { get; set; } = 64;

    public string JobDirectory(string id) => Path.Combine(Root, "jobs", Uri.EscapeDataString(id));
    /// <summary>A running job leaves a marker here (holding its cluster id), so the keeper knows which jobs to wake.</summary>
    public string RunningDirectory => Path.Combine(Root, "running");
    public string RecordsDirectory => Path.Combine(Root, "records");

    private static string DefaultRoot()
    {
        string data = Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData);
        return data.Length > 0 ? Path.Combine(data, "cluster", "training")
            : throw new InvalidOperationException("this user has no data directory (no HOME?): set Cluster__Training__Root");
    }
}
