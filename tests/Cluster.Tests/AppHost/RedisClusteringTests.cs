// Redis membership with real processes: a redis-server, two silo processes and the gateway process configured only
// through the Orleans__* keys an Aspire app host would set (ProviderType=Redis, ServiceKey, ConnectionStrings__*).
// The silos find each other through Redis, the model is served pp=2 with one stage on each, and a completion works.
// Silos and gateway talk mutual TLS with a cluster certificate made here (Redis membership is not localhost clustering).
// Needs redis-server (bash infra/install-test-deps.sh installs it); skips with a message where it is missing.
using System.Text.Json;
using Cluster.Tests.Formats;

namespace Cluster.Tests.AppHost;

public sealed class RedisClusteringTests
{
    [Fact]
    public async Task SilosJoinThroughRedisAndServeAShardedModel()
    {
        string? redis = FindOnPath("redis-server");
        if (redis is null) Assert.Skip("redis-server is not installed (bash infra/install-test-deps.sh installs it): Redis clustering not tested");
        var cancel = TestContext.Current.CancellationToken;
        int redisPort = FreePorts.Take(1)[0], http = FreePorts.Take(1)[0];
        var processes = new List<ChildProcess>();
        try
        {
            var server = ChildProcess.Start("redis", redis, ["--port", $"{redisPort}", "--save", "", "--appendonly", "no"], new(), "Ready to accept connections");
            processes.Add(server);
            await server.Ready.WaitAsync(TimeSpan.FromSeconds(30), cancel);

            using var certificate = new TempDirectory();
            string certificatePath = Path.Combine(certificate.Path, "cluster.pfx");
            File.WriteAllBytes(certificatePath, TestCertificates.ClusterPfx("cluster.test", "secret"));
            var common = new Dictionary<string, string>
            {
                // Redis membership is not localhost clustering: silos and gateway talk mutual TLS with one cluster certificate.
                ["Cluster__Tls__CertificatePath"] = certificatePath,
                ["Cluster__Tls__CertificatePassword"] = "secret",
                ["Orleans__ClusterId"] = "redis-test-" + Guid.NewGuid().ToString("N")[..8],
                ["Orleans__ServiceId"] = "cluster",
                ["Orleans__Clustering__ProviderType"] = "Redis",
                ["Orleans__Clustering__ServiceKey"] = "clustering",
                ["ConnectionStrings__clustering"] = $"127.0.0.1:{redisPort}",
                ["DOTNET_ENVIRONMENT"] = "Development",
                ["Cluster__Model__Layout"] = "pp=2",
                ["Cluster__Model__Silos"] = "a,b",
                ["Cluster__DeviceThreads"] = "1",
                ["Cluster__Devices"] = "cpu:0,cpu:1",
                ["Cluster__KvSequences"] = "2",
            };
            foreach (var (name, serve) in new[] { ("a", "false"), ("b", "true") })   // b serves once a has joined
            {
                var silo = ChildProcess.Start($"silo {name}", "dotnet", [ChildProcess.Assembly("SiloAssembly")], new(common)
                {
                    ["Cluster__SiloName"] = name,
                    ["Orleans__Endpoints__SiloPort"] = $"{FreePorts.Take(1)[0]}",
                    ["Orleans__Endpoints__GatewayPort"] = $"{FreePorts.Take(1)[0]}",
                    ["Cluster__Model__Serve"] = serve,
                }, "ready:");
                processes.Add(silo);
                await silo.Ready.WaitAsync(TimeSpan.FromMinutes(2), cancel);
            }
            var gateway = ChildProcess.Start("gateway", "dotnet", [ChildProcess.Assembly("GatewayAssembly")], new(common) { ["ASPNETCORE_URLS"] = $"http://127.0.0.1:{http}" }, readyMarker: null);
            processes.Add(gateway);

            using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}/"), Timeout = TimeSpan.FromSeconds(30) };
            await ChildProcess.WaitForReady(client, gateway, cancel);
            string models = await client.GetStringAsync("v1/models", cancel);
            Assert.Contains("default/0.0.0@a", models);
            Assert.Contains("default/0.1.0@b", models);
            await ChildProcess.AssertCompletes(client, 8, cancel);

            // The silos' configured devices and KV pools, as /v1/cluster/silos reports them: two devices each, and the two
            // stages' KV caches together hold the tiny preset's 5 layers for 2 full-context sequences.
            using var silos = JsonDocument.Parse(await client.GetStringAsync("v1/cluster/silos", cancel));
            var devices = silos.RootElement.GetProperty("data").EnumerateArray().SelectMany(s => s.GetProperty("devices").EnumerateArray()).ToArray();
            Assert.Equal(["cpu:0", "cpu:0", "cpu:1", "cpu:1"], devices.Select(d => d.GetProperty("device").GetString()).Order());
            var holders = devices.SelectMany(d => d.GetProperty("holders").EnumerateArray()).Where(h => h.GetProperty("key").GetString()!.StartsWith("default/")).ToArray();
            var tiny = Cluster.Model.RandomModel.Preset("tiny");
            Assert.Equal(2L * tiny.Layers * (2 * tiny.MaxSeqLen) * tiny.KvDim * sizeof(float), holders.Sum(h => h.GetProperty("kvBytes").GetInt64()));
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new Exception($"process output:\n{string.Join("\n", processes.Select(p => p.Output))}", e);
        }
        finally
        {
            foreach (var p in Enumerable.Reverse(processes)) p.Dispose();
        }
    }

    private static string? FindOnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, program)).FirstOrDefault(File.Exists);
}
