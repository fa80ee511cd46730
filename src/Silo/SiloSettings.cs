// The silo's settings, read from configuration (appsettings, command line, or env vars such as Cluster__SiloName,
// Orleans__Endpoints__SiloPort). Orleans__Clustering__ProviderType picks Redis/AdoNet; absent, localhost clustering.
using Cluster.Compute;
using Cluster.Contracts;
using Microsoft.Extensions.Configuration;
using Orleans.Configuration;

namespace Cluster.Silo;

public sealed record SiloSettings(
    string SiloName, int SiloPort, int GatewayPort, string? ClusteringProvider, System.Net.IPEndPoint PrimarySilo,
    string ModelId, ModelSource Model, string Layout, string[]? ShardSilos, bool ServeModel, int DeviceThreads, DeviceSpec[] Devices, int KvSequences, int KvBlockSize,
    string[] ModelRoots, TimeSpan JoinTimeout)
{
    /// <summary>What the default model is served as: its source, layout and the silos its shards are pinned to.</summary>
    public ModelServing Serving => new(Model, Layout, ShardSilos);

    public static SiloSettings From(IConfiguration config)
    {
        int siloPort = config.GetValue("Orleans:Endpoints:SiloPort", 11111);
        int gatewayPort = config.GetValue("Orleans:Endpoints:GatewayPort", 30000);
        string? modelPath = config["Cluster:Model:Path"];
        string? tokenizerPath = config["Cluster:Model:Tokenizer"];
        // Models named through the API load from these folders only: the configured ones and the served model's own.
        string[] modelRoots = [.. (config["Cluster:ModelRoots"] ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
            .. new[] { modelPath, tokenizerPath }.OfType<string>().Select(p => Directory.Exists(p) ? p : Path.GetDirectoryName(Path.GetFullPath(p))!)];
        return new SiloSettings(
            SiloName: config["Cluster:SiloName"] ?? $"{Environment.MachineName}-{siloPort}",
            SiloPort: siloPort,
            GatewayPort: gatewayPort,
            ClusteringProvider: config["Orleans:Clustering:ProviderType"],
            PrimarySilo: System.Net.IPEndPoint.Parse(config["Cluster:PrimarySiloEndpoint"] ?? $"127.0.0.1:{siloPort}"),
            ModelId: config["Cluster:Model:Id"] ?? "default",
            Model: (modelPath is not null
                ? ModelSource.File(modelPath, tokenizerPath)
                : ModelSource.Random(config["Cluster:Model:Preset"] ?? "tiny", config.GetValue("Cluster:Model:Seed", 1)))
                with   // a bad name stops the silo
                {
                    Weights = config["Cluster:Model:Weights"] is { } weights ? WeightFormats.Parse(weights).Name() : null,
                    KvCache = config["Cluster:Model:KvCache"] is { } kv ? KvFormats.Parse(kv).Name() : null,
                },
            Layout: config["Cluster:Model:Layout"] ?? "",
            ShardSilos: config["Cluster:Model:Silos"]?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
            ServeModel: config.GetValue("Cluster:Model:Serve", true),
            DeviceThreads: config.GetValue("Cluster:DeviceThreads", Environment.ProcessorCount),
            Devices: DeviceSpec.ParseList(config["Cluster:Devices"] ?? "cpu"),   // a bad name stops the silo, saying what is accepted
            KvSequences: InRange(config.GetValue("Cluster:KvSequences", 8), 1, 4096, "Cluster:KvSequences"),
            KvBlockSize: InRange(config.GetValue("Cluster:KvBlockSize", 16), 1, 1024, "Cluster:KvBlockSize"),
            ModelRoots: modelRoots,
            JoinTimeout: TimeSpan.FromSeconds(InRange(config.GetValue("Cluster:Model:JoinTimeout", 120), 0, 86_400, "Cluster:Model:JoinTimeout")));
    }

    /// <summary>
    /// Failure detection tuned for serving: a silo killed mid-stream is declared dead within about 5 s (Orleans' defaults
    /// took twice as long), and every scheduler with a shard there replays its streams then. Each silo probes its peers
    /// every 1-8 s (the period adapts to the replies, between half and four times ProbeTimeout) and suspects one after 3
    /// missed probes; 2 votes (or the one of a two-silo cluster) declare it dead. A busy silo is not mistaken for a dead
    /// one: a peer whose connection carried messages lately is not voted against, and a degraded silo stretches its own
    /// probe timeouts. Any Orleans__Membership__* key (ClusterMembershipOptions) overrides these; Orleans binds no such
    /// section itself.
    /// </summary>
    public static void ConfigureMembership(ClusterMembershipOptions membership, IConfiguration config)
    {
        membership.ProbeTimeout = TimeSpan.FromSeconds(2);
        membership.NumMissedProbesLimit = 3;
        membership.NumVotesForDeathDeclaration = 2;
        config.GetSection("Orleans:Membership").Bind(membership);
    }

    /// <summary>
    /// How long a dead silo's grains are held back after it is declared dead: 1 s. Orleans' distributed directory starts
    /// the hold at the silo's estimated failure, the declaration less the failure-detection window (MaxProbeTimeout ×
    /// NumMissedProbesLimit: 8 s × 3 with the settings above), and ends it RangeLeaseDuration later; its default of 30 s
    /// held a killed scheduler's grain for 6 s after the declaration, all of which a stream waited. The margin is there for
    /// a silo declared dead that is in fact alive (cut off, not killed) and still runs its activations until it learns of
    /// the declaration: here a scheduler that lingers so yields to its successor (the shards take the newer epoch's steps,
    /// and the gateway follows the scheduler's incarnation).
    /// </summary>
    public static readonly TimeSpan DeadSiloHold = TimeSpan.FromSeconds(1);

    public static void ConfigureDirectory(GrainDirectoryOptions directory, ClusterMembershipOptions membership) =>
        directory.RangeLeaseDuration = membership.MaxProbeTimeout * membership.NumMissedProbesLimit + DeadSiloHold;

    private static int InRange(int value, int min, int max, string key) =>
        value >= min && value <= max ? value : throw new ArgumentOutOfRangeException(key, value, $"{key} must be from {min} to {max}");
}
