// Cluster.AppHost, the Aspire app host: `dotnet run -c Release --project src/AppHost [-- --silos N --model PATH
// --tokenizer PATH --layout pp=2 --port 8080 --silo-port 11111 --gateway-port 30000 --train-steps 1500
// --training-root DIR --data-dir DIR]`. It starts the Aspire dashboard, N silos and the gateway as project resources
// (Orleans wired by Aspire.Hosting.Orleans), trains the English story model first when it is not cached yet (the
// "storyteller" resource), prints the API's URL, runs the training demo, and stops everything on Ctrl+C or SIGTERM.
using Cluster.AppHost;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

var builder = DistributedApplication.CreateBuilder(args);
var options = AppHostOptions.From(builder.Configuration);

// Development clustering (membership kept by the first silo) on loopback addresses; with a connection string named
// "clustering" (ConnectionStrings__clustering=host:port), Redis membership instead (infra/README.md: it needs the
// cluster certificate, Cluster__Tls__*, which the resources inherit from the app host's environment).
var redis = builder.Configuration.GetConnectionString("clustering");
var orleans = builder.AddOrleans("cluster").WithClusterId("cluster-dev").WithServiceId("cluster");
if (redis is null) orleans.WithDevelopmentClustering();
else orleans.WithClustering(builder.AddConnectionString("clustering"));

// The model "default": the user's --model, else the cached story model, trained first when it is missing.
string modelPath = options.ModelPath ?? options.StoryModelPath;
IResourceBuilder<ProjectResource>? storyteller = null;
if (options.ModelPath is null && !File.Exists(options.StoryModelPath))
{
    string models = Path.GetDirectoryName(options.StoryModelPath)!;
    if (OperatingSystem.IsWindows()) Directory.CreateDirectory(models);
    else Directory.CreateDirectory(models, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    storyteller = builder.AddProject<Projects.Cli>("storyteller")
        .WithArgs(["train", .. StoryModel.TrainingArguments, "--out", options.StoryModelPath]);
}

string[] siloNames = [.. Enumerable.Range(1, options.Silos).Select(i => $"silo-{i}")];
var silos = new List<IResourceBuilder<ProjectResource>>();
for (int i = 0; i < options.Silos; i++)
{
    int index = i;
    var silo = builder.AddProject<Projects.Silo>(siloNames[i])
        .WithReference(orleans)
        // Fixed ports (the options), bound to loopback: the silos reach each other directly, not through a proxy.
        .WithEndpoint("orleans-silo", e => (e.Port, e.TargetPort, e.IsProxied) = (options.BaseSiloPort + index, options.BaseSiloPort + index, false))
        .WithEndpoint("orleans-gateway", e => (e.Port, e.TargetPort, e.IsProxied) = (options.BaseGatewayPort + index, options.BaseGatewayPort + index, false))
        .WithEnvironment(context =>
        {
            ClusterEnvironment.AddCommon(context.EnvironmentVariables);
            if (redis is null)
            {
                context.EnvironmentVariables["Orleans__Endpoints__AdvertisedIPAddress"] = "127.0.0.1";
                context.EnvironmentVariables["Orleans__Clustering__PrimarySiloEndPoint"] = $"127.0.0.1:{options.BaseSiloPort}";
            }
            context.EnvironmentVariables["Cluster__SiloName"] = siloNames[index];
            context.EnvironmentVariables["Cluster__Model__Path"] = modelPath;
            if (options.TokenizerPath is not null) context.EnvironmentVariables["Cluster__Model__Tokenizer"] = options.TokenizerPath;
            context.EnvironmentVariables["Cluster__Model__Layout"] = options.Layout;
            context.EnvironmentVariables["Cluster__Model__Silos"] = string.Join(',', siloNames);   // shards round-robin over the silos
            // The last silo serves the model, once every silo its shards are pinned to has joined (each waits for the one before).
            context.EnvironmentVariables["Cluster__Model__Serve"] = index == options.Silos - 1 ? "true" : "false";
            context.EnvironmentVariables["Cluster__Training__Root"] = options.TrainingRoot;   // every silo sees the same checkpoints and job records
            // The silos share this machine's cores: one thread per shard avoids oversubscribing them.
            context.EnvironmentVariables["Cluster__DeviceThreads"] = "1";
        });
    if (storyteller is not null) silo.WaitForCompletion(storyteller);
    if (i > 0) silo.WaitFor(silos[i - 1]);
    silos.Add(silo);
}

var gateway = builder.AddProject<Projects.Gateway>("gateway")
    .WithReference(orleans.AsClient())
    .WithHttpEndpoint(port: options.HttpPort, targetPort: options.HttpPort, name: "http", isProxied: false)
    .WithHttpHealthCheck("/ready")
    .WithEnvironment(context =>
    {
        ClusterEnvironment.AddCommon(context.EnvironmentVariables);
        if (redis is null)
            for (int i = 0; i < options.Silos; i++)
                context.EnvironmentVariables[$"Orleans__Clustering__Gateways__{i}"] = $"127.0.0.1:{options.BaseGatewayPort + i}";
    });
foreach (var silo in silos) gateway.WaitFor(silo);

builder.Services.AddSingleton(options);
builder.Services.AddHostedService<TrainingDemo>();
builder.Build().Run();
