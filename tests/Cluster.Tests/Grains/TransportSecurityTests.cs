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
        static IConfiguration Config(params (string Key, string Value)[] pairs) =>
            new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => KeyValuePair.Create(p.Key, (string?)p.Value))).Build();
        Assert.Null(ClusterTransportSecurity.Require(Config()));   // localhost clustering
        // Aspire's development clustering as the app host sets it: loopback advertised address, primary and gateways.
        Assert.Null(ClusterTransportSecurity.Require(Config(("Orleans:Clustering:ProviderType", "Development"),
            ("Orleans:Endpoints:AdvertisedIPAddress", "127.0.0.1"), ("Orleans:Clustering:PrimarySiloEndPoint", "127.0.0.1:11111"))));
        Assert.Null(ClusterTransportSecurity.Require(Config(("Orleans:Clustering:ProviderType", "Development"),
            ("Orleans:Clustering:Gateways:0", "127.0.0.1:30000"), ("Orleans:Clustering:Gateways:1", "[::1]:30001"))));
        foreach (var reachable in new[]
        {
            Config(("Orleans:Clustering:ProviderType", "Redis")),
            Config(("Orleans:Clustering:ProviderType", "Development")),   // no address named: Orleans picks a routable one
            Config(("Orleans:Clustering:ProviderType", "Development"), ("Orleans:Endpoints:AdvertisedIPAddress", "10.0.0.5")),
            Config(("Orleans:Clustering:ProviderType", "Development"), ("Orleans:Endpoints:AdvertisedIPAddress", "127.0.0.1"),
                ("Orleans:Clustering:Gateways:0", "192.168.1.2:30000")),
            Config(("Orleans:Clustering:ProviderType", "Development"), ("Orleans:Clustering:Gateways:0", "not-an-address")),
        })
        {
            var refusal = Assert.Throws<InvalidOperationException>(() => ClusterTransportSecurity.Require(reachable));
            Assert.Contains("Cluster__AllowInsecureCluster", refusal.Message);
        }
        Assert.Null(ClusterTransportSecurity.Require(Config(("Orleans:Clustering:ProviderType", "Redis"), ("Cluster:AllowInsecureCluster", "true"))));
    }
}
