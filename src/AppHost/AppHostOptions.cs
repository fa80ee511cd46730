// The app host's options, from its command line (`-- --silos 3 --model PATH`): Aspire reads `--name value` arguments as
// configuration keys, so appsettings.json or environment variables with the same names work too.
using Microsoft.Extensions.Configuration;

namespace Cluster.AppHost;

public sealed record AppHostOptions(
    int Silos, string? ModelPath, string? TokenizerPath, string Layout, int HttpPort, int BaseSiloPort, int BaseGatewayPort,
    int TrainSteps, string TrainingRoot, string DataDirectory)
{
    public const int DefaultTrainSteps = 1500;
    public const int MaxSilos = 16;

    public Uri GatewayUrl => new($"http://127.0.0.1:{HttpPort}/");

    /// <summary>
    /// The English story model the cluster serves as "default" when no --model is given: trained on the first start
    /// (the storyteller resource) and kept here, so later starts serve it at once. The name carries the recipe's
    /// version: a change to the corpus or the preset trains a new one instead of serving a stale file.
    /// </summary>
    public string StoryModelPath => Path.Combine(DataDirectory, "models", "storyteller-v1.gguf");

    public static AppHostOptions From(IConfiguration config)
    {
        int Int(string name, int fallback, int min, int max) =>
            config[name] is not { } text ? fallback
            : int.TryParse(text, out int value) && value >= min && value <= max ? value
            : throw new ArgumentException($"--{name} must be a whole number from {min} to {max}, got '{text}'");
        string? ExistingPath(string name) =>
            config[name] is not { } path ? null
            : File.Exists(path) || Directory.Exists(path) ? Path.GetFullPath(path)
            : throw new ArgumentException($"--{name} {path}: no such file or directory");

        int silos = Int("silos", 2, 1, MaxSilos);
        int basePort = Int("silo-port", 11111, 1, 65535 - MaxSilos), baseGateway = Int("gateway-port", 30000, 1, 65535 - MaxSilos);
        // A fresh training root per run by default: jobs, checkpoints and trained models of this cluster only, in a
        // folder only this user can open, under a name nobody can guess ahead.
        string trainingRoot = Path.GetFullPath(config["training-root"] ?? Directory.CreateTempSubdirectory("cluster-training-").FullName);
        string dataDirectory = Path.GetFullPath(config["data-dir"]
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "cluster"));
        return new AppHostOptions(silos, ExistingPath("model"), ExistingPath("tokenizer"),
            config["layout"] ?? (silos > 1 ? $"pp={Math.Min(silos, 2)}" : ""), Int("port", 8080, 1, 65535), basePort, baseGateway,
            Int("train-steps", DefaultTrainSteps, 0, 1_000_000), trainingRoot, dataDirectory);
    }
}
