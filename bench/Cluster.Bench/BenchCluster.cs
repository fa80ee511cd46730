// In-process Orleans clusters for the cluster benchmarks (transport, collectives, serving): N silos in this process
// that talk to each other over real TCP on loopback, hosting the project's grains (AddClusterGrains, so keys ending
// in "@{siloName}" pin [PinnedShardPlacement] grains) and the benchmarks' own grains. Logs go to stderr, warnings
// and up only, so stdout stays the Markdown tables.
using Cluster.Gateway;
using Cluster.Grains;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Orleans.Configuration;
using Orleans.TestingHost;

namespace Cluster.Bench;

public static class BenchCluster
{
    /// <summary>Long enough for the slowest timed grain call (a whole benchmark cell runs inside one).</summary>
    private static readonly TimeSpan CallTimeout = TimeSpan.FromMinutes(5);

    public static async Task<InProcessTestCluster> StartAsync(int silos, Action<ShardOptions>? shards = null, Action<ISiloBuilder>? configure = null)
    {
        string records = Path.Combine(Path.GetTempPath(), "cluster-bench", Guid.NewGuid().ToString("N"));   // this run's durable records only
        var builder = new InProcessTestClusterBuilder((short)silos);
        builder.Options.ConfigureFileLogging = false;
        builder.ConfigureSiloHost((_, host) => QuietLogging(host.Logging));
        builder.ConfigureClientHost(host => QuietLogging(host.Logging));
        builder.ConfigureSilo((_, silo) =>
        {
            silo.AddClusterGrains(shards, training: o => o.Root = records);
            silo.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = CallTimeout);
            configure?.Invoke(silo);
        });
        builder.ConfigureClient(client => client.Configure<ClientMessagingOptions>(o => o.ResponseTimeout = CallTimeout));
        var cluster = builder.Build();
        await cluster.DeployAsync();
        return cluster;
    }

    /// <summary>The gateway (Cluster.Gateway's pipeline, no API keys) in front of the cluster's client, on a free loopback port.</summary>
    public static async Task<BenchGateway> StartGatewayAsync(this InProcessTestCluster cluster)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<IGrainFactory>(cluster.Client);
        builder.Services.AddGateway(builder.Configuration, new ApiKeys());
        var app = builder.Build();
        app.UseGateway();
        await app.StartAsync();
        return new BenchGateway(app, new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First()));
    }

    /// <summary>The silos' names in start order: the suffix that pins a grain there is "@" + name.</summary>
    public static string[] SiloNames(this InProcessTestCluster cluster) => [.. cluster.Silos.Select(s => s.Name)];

    private static void QuietLogging(ILoggingBuilder logging)
    {
        logging.ClearProviders();
        logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        logging.SetMinimumLevel(LogLevel.Warning);
    }
}

/// <summary>A running in-process gateway and where it listens.</summary>
public sealed record BenchGateway(WebApplication App, Uri Address) : IAsyncDisposable
{
    public ValueTask DisposeAsync() => App.DisposeAsync();
}
