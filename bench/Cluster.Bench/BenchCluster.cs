// In-process Orleans clusters for the cluster benchmarks (transport, collectives, serving): N silos in this process
// that talk to each other over real TCP on loopback, hosting the project's grains (AddClusterGrains, so keys ending
// in "@{siloName}" pin [PinnedShardPlacement] grains) and the benchmarks' own grains. Logs go to stderr, warnings
// and up only, so stdout stays the Markdown tables.
using Cluster.Grains;
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

    /// <summary>The silos' names in start order: the suffix that pins a grain there is "@" + name.</summary>
    public static string[] SiloNames(this InProcessTestCluster cluster) => [.. cluster.Silos.Select(s => s.Name)];

    private static void QuietLogging(ILoggingBuilder logging)
    {
        logging.ClearProviders();
        logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        logging.SetMinimumLevel(LogLevel.Warning);
    }
}
