// Mutual TLS between silos and clients (ClusterTransportSecurity): a cluster whose silo and client hold the cluster
// certificate serves grain calls; a client without TLS, or with a certificate of its own, never gets a call through;
// and a process with non-localhost clustering refuses to start without a certificate unless told the network is trusted.
using Cluster.Contracts;
using Cluster.Grains;
using Cluster.ServiceDefaults;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.TestingHost;

namespace Cluster.Tests.Grains;

public sealed class TransportSecurityTests
{
    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    [Fact]
    public async Task OnlyClientsHoldingTheClusterCertificateGetThrough()
    {
        using var certificate = TestCertificates.Cluster("cluster.test");
        var builder = new InProcessTestClusterBuilder(1);
        builder.ConfigureSilo((_, silo) =>
        {
            silo.AddClusterGrains();
            silo.UseTls(certificate, o => ClusterTransportSecurity.Configure(o, certificate));
        });
        builder.ConfigureClient(client => client.UseTls(certificate, o => ClusterTransportSecurity.Configure(o, certificate)));
        var cluster = builder.Build();
        await cluster.DeployAsync(Cancel);
        try
        {
            Assert.NotNull(await cluster.Client.GetGrain<IModelRegistryGrain>(0).List());

            int gatewayPort = cluster.Silos[0].GatewayAddress!.Endpoint.Port;
            using var stranger = TestCertificates.Cluster("cluster.test");   // same name, another key
            foreach (var tls in new[] { (Action<IClientBuilder>?)null, c => c.UseTls(stranger, o => ClusterTransportSecurity.Configure(o, stranger)) })
            {
                var outsider = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
                outsider.UseOrleansClient(client =>
                {
                    client.UseLocalhostClustering(gatewayPort, cluster.Options.ServiceId, cluster.Options.ClusterId);
                    tls?.Invoke(client);
                });
                var host = outsider.Build();
                using var patience = CancellationTokenSource.CreateLinkedTokenSource(Cancel);
                patience.CancelAfter(TimeSpan.FromSeconds(15));
                await Assert.ThrowsAnyAsync<Exception>(async () =>
                {
                    await host.StartAsync(patience.Token);
                    await host.Services.GetRequiredService<IClusterClient>().GetGrain<IModelRegistryGrain>(0).List().WaitAsync(patience.Token);
                });
                // The refused client may still be retrying its connection: stop it without waiting for that.
                _ = Task.Run(async () =>
                {
                    try { await host.StopAsync(TimeSpan.FromSeconds(1)); }
                    finally { host.Dispose(); }
                }, CancellationToken.None);
            }
        }
        finally
        {
            await cluster.StopAllSilosAsync(Cancel);
            await cluster.DisposeAsync();
        }
    }

    [Fact]
    public void NonLocalClusteringNeedsACertificateOrAnExplicitOptOut()
    {
        var none = new ConfigurationBuilder().Build();
        Assert.Null(ClusterTransportSecurity.Require(none, localhostClustering: true));
        var refusal = Assert.Throws<InvalidOperationException>(() => ClusterTransportSecurity.Require(none, localhostClustering: false));
        Assert.Contains("Cluster__AllowInsecureCluster", refusal.Message);
        var optedOut = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Cluster:AllowInsecureCluster"] = "true" }).Build();
        Assert.Null(ClusterTransportSecurity.Require(optedOut, localhostClustering: false));
    }
}
