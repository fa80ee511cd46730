// Cluster.Silo: a thin Orleans host. Clustering and TLS come from configuration (Orleans__* keys, as the Aspire app host
// sets them, or localhost clustering when none is set); the default model is served at start.
using Cluster.Grains;
using Cluster.ServiceDefaults;
using Cluster.Silo;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using Orleans.Dashboard;

var builder = Host.CreateApplicationBuilder(args);
builder.AddServiceDefaults();
var settings = SiloSettings.From(builder.Configuration);
var certificate = ClusterTransportSecurity.Require(builder.Configuration);
builder.Services.AddSingleton(settings);
builder.UseOrleans(silo =>
{
    silo.AddActivityPropagation();
    silo.AddDashboard();   // collects grain and silo statistics; the gateway serves the dashboard UI at /dashboard
    if (string.IsNullOrEmpty(settings.ClusteringProvider))
        silo.UseLocalhostClustering(settings.SiloPort, settings.GatewayPort, settings.PrimarySilo);
    if (certificate is not null) silo.UseTls(certificate, o => ClusterTransportSecurity.Configure(o, certificate));
    silo.Configure<SiloOptions>(o => o.SiloName = settings.SiloName);
    silo.Configure<ClusterMembershipOptions>(o => SiloSettings.ConfigureMembership(o, builder.Configuration));
    // The distributed grain directory keeps one activation per grain when a silo crashes: with Orleans' default directory
    // the registrations a killed silo held are lost, and a second scheduler or shard activation can appear next to the
    // live one (the last stage then delivers its logits to a scheduler that awaits none). It holds a dead silo's grains
    // back for a while after the silo is declared dead (SiloSettings.ConfigureDirectory).
#pragma warning disable ORLEANSEXP003   // experimental in Orleans 10
    silo.AddDistributedGrainDirectory();
#pragma warning restore ORLEANSEXP003
    silo.AddPinnedShardDirectory();   // a pinned shard registers on its own silo: a failover's new shard never waits on a dead silo's range
    silo.Services.AddOptions<GrainDirectoryOptions>().Configure<Microsoft.Extensions.Options.IOptions<ClusterMembershipOptions>>(
        (directory, membership) => SiloSettings.ConfigureDirectory(directory, membership.Value));
    silo.AddClusterGrains(o => (o.DeviceThreads, o.Devices, o.KvSequences, o.KvBlockSize) =
        (settings.DeviceThreads, settings.Devices, settings.KvSequences, settings.KvBlockSize), o =>
    {
        builder.Configuration.GetSection("Cluster:Scheduler").Bind(o);
        // Every silo knows the configured model, so its scheduler can come back on any silo.
        o.ConfiguredModels[settings.ModelId] = settings.Serving;
    }, o => builder.Configuration.GetSection("Cluster:Training").Bind(o), o => o.Roots.AddRange(settings.ModelRoots));
});
builder.Services.AddHostedService<ServeDefaultModel>();
await builder.Build().RunAsync();
