// The app host's command line and the environment it gives each child: the Orleans__* keys an Aspire app host
// sets (cluster id, service id, endpoints), the OTEL_* keys for telemetry, and the Cluster__* model settings.
using System.Reflection;

namespace Cluster.AppHost;

public sealed record AppHostOptions(
    string? ModelPath, string? TokenizerPath, string Layout, int GatewayHttpPort, int BaseSiloPort, int BaseGatewayPort, TimeSpan StartTimeout,
    int TrainSteps, string TrainingRoot)
{
    public Uri GatewayUrl => new($"http://127.0.0.1:{GatewayHttpPort}/");

    public static AppHostOptions Parse(string[] args)
    {
        string? Value(string name)
        {
            int i = Array.IndexOf(args, name);
            if (i < 0) return null;
            return i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{name} needs a value");
        }
        int Port(string name, int fallback) =>
            Value(name) is not { } text ? fallback
            : int.TryParse(text, out int port) && port is > 0 and < 65536 ? port
            : throw new ArgumentException($"{name} must be a port number, got '{text}'");
        string? model = Value("--model");
        if (model is not null && !File.Exists(model) && !Directory.Exists(model)) throw new ArgumentException($"--model {model}: no such file");
        int trainSteps = Value("--train-steps") is not { } steps ? TrainingDemo.DefaultSteps
            : int.TryParse(steps, out int n) && n >= 0 ? n : throw new ArgumentException($"--train-steps must be a whole number (0: no training demo), got '{steps}'");
        // A fresh training root per run by default: jobs, checkpoints and trained models of this cluster only, in a
        // folder only this user can open, under a name nobody can guess ahead.
        string trainingRoot = Path.GetFullPath(Value("--training-root") ?? Directory.CreateTempSubdirectory("cluster-training-").FullName);
        return new AppHostOptions(model is null ? null : Path.GetFullPath(model), Value("--tokenizer") is { } t ? Path.GetFullPath(t) : null,
            Value("--layout") ?? "pp=2", Port("--port", 8080), Port("--silo-port", 11111), Port("--gateway-port", 30000), TimeSpan.FromSeconds(120),
            trainSteps, trainingRoot);
    }

    /// <summary>The path of a child's entry assembly, recorded at build time (see AppHost.csproj).</summary>
    public static string Assembly(string key)
    {
        string path = typeof(AppHostOptions).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == key).Value!;
        return File.Exists(path) ? Path.GetFullPath(path) : throw new InvalidOperationException($"{path} is missing: build the solution first");
    }

    public Dictionary<string, string> CommonEnvironment()
    {
        var environment = new Dictionary<string, string>
        {
            ["Orleans__ClusterId"] = "cluster-dev",
            ["Orleans__ServiceId"] = "cluster",
            ["DOTNET_ENVIRONMENT"] = "Development",
        };
        // Telemetry goes where the user's collector (or Aspire dashboard) listens; nothing is exported without one.
        foreach (string key in new[] { "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS" })
            if (Environment.GetEnvironmentVariable(key) is { Length: > 0 } value) environment[key] = value;
        if (ModelPath is not null) environment["Cluster__Model__Path"] = ModelPath;
        if (TokenizerPath is not null) environment["Cluster__Model__Tokenizer"] = TokenizerPath;
        environment["Cluster__Model__Layout"] = Layout;
        environment["Cluster__Model__Silos"] = "silo-1,silo-2";   // shards round-robin over both silos
        environment["Cluster__Training__Root"] = TrainingRoot;         // both silos see the same checkpoints and job records
        // Two silos (and up to two shards each) share this machine's cores: one thread per shard avoids oversubscribing them.
        environment["Cluster__DeviceThreads"] = "1";
        return environment;
    }

    /// <summary>
    /// Silo <paramref name="index"/>: its own ports, all pointing at silo 0 as the primary (localhost clustering). The last
    /// silo serves the model, once every silo its shards are pinned to has joined.
    /// </summary>
    public Dictionary<string, string> SiloEnvironment(Dictionary<string, string> common, int index, bool last) => new(common)
    {
        ["Cluster__Model__Serve"] = last ? "true" : "false",
        ["Cluster__SiloName"] = $"silo-{index + 1}",
        ["Orleans__Endpoints__SiloPort"] = $"{BaseSiloPort + index}",
        ["Orleans__Endpoints__GatewayPort"] = $"{BaseGatewayPort + index}",
        ["Cluster__PrimarySiloEndpoint"] = $"127.0.0.1:{BaseSiloPort}",
        ["OTEL_SERVICE_NAME"] = $"silo-{index + 1}",
        ["OTEL_RESOURCE_ATTRIBUTES"] = $"service.instance.id=silo-{index + 1}",
    };

    public Dictionary<string, string> GatewayEnvironment(Dictionary<string, string> common) => new(common)
    {
        ["ASPNETCORE_URLS"] = $"http://127.0.0.1:{GatewayHttpPort}",
        ["Cluster__SiloGateways"] = $"{BaseGatewayPort},{BaseGatewayPort + 1}",
        ["Orleans__Endpoints__GatewayPort"] = $"{BaseGatewayPort}",
        ["OTEL_SERVICE_NAME"] = "gateway",
        ["OTEL_RESOURCE_ATTRIBUTES"] = "service.instance.id=gateway",
    };

    /// <summary>Polls <paramref name="url"/> until it answers 200; fails if the child exits or the time runs out.</summary>
    public static async Task WaitForHttpReady(Uri url, ChildProcess child, TimeSpan timeout, CancellationToken cancel)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (child.HasExited) throw new InvalidOperationException($"{child.Name} exited before it was ready");
            try
            {
                using var response = await http.GetAsync(url, cancel);
                if (response.IsSuccessStatusCode) return;
            }
            catch (HttpRequestException) { }
            catch (TaskCanceledException) when (!cancel.IsCancellationRequested) { }
            await Task.Delay(250, cancel);
        }
        throw new TimeoutException($"{child.Name} was not ready at {url} within {timeout.TotalSeconds:F0} s");
    }
}
