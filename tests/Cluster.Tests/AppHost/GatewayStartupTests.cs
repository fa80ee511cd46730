// The gateway process started before any silo (as the app host may start it: once the silo processes run, before
// their gateway ports open) answers its probes meanwhile (alive, not ready), keeps trying to connect instead of
// exiting, and serves once a silo comes up.
using System.Net;
using System.Text;

namespace Cluster.Tests.AppHost;

public sealed class GatewayStartupTests
{
    [Fact]
    public async Task AGatewayStartedBeforeTheSiloWaitsForItAndThenServes()
    {
        var cancel = TestContext.Current.CancellationToken;
        int[] ports = FreePorts.Take(3);   // http, silo, silo gateway
        var processes = new List<ChildProcess>();
        try
        {
            var gateway = ChildProcess.Start("gateway", "dotnet", [ChildProcess.Assembly("GatewayAssembly")], new()
            {
                ["ASPNETCORE_URLS"] = $"http://127.0.0.1:{ports[0]}",
                ["DOTNET_ENVIRONMENT"] = "Development",
                ["Cluster__SiloGateways"] = $"{ports[2]}",
            }, readyMarker: "Connection attempt to endpoint");   // Orleans' log line for a refused connection
            processes.Add(gateway);
            await gateway.Ready.WaitAsync(TimeSpan.FromMinutes(2), cancel);
            using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ports[0]}/"), Timeout = TimeSpan.FromSeconds(30) };
            Assert.Equal(HttpStatusCode.OK, await StatusOf(client, "health", cancel));
            Assert.Equal(HttpStatusCode.ServiceUnavailable, await StatusOf(client, "ready", cancel));
            using (var early = await client.PostAsync("v1/completions",
                new StringContent("""{"model":"default","prompt":"Once","max_tokens":4}""", Encoding.UTF8, "application/json"), cancel))
            {
                Assert.Equal(HttpStatusCode.ServiceUnavailable, early.StatusCode);
                Assert.Contains("cluster_unavailable", await early.Content.ReadAsStringAsync(cancel));
            }

            var silo = ChildProcess.Start("silo", "dotnet", [ChildProcess.Assembly("SiloAssembly")], new()
            {
                ["DOTNET_ENVIRONMENT"] = "Development",
                ["Orleans__Endpoints__SiloPort"] = $"{ports[1]}",
                ["Orleans__Endpoints__GatewayPort"] = $"{ports[2]}",
                ["Cluster__DeviceThreads"] = "1",
                ["Cluster__KvSequences"] = "2",
            }, "ready:");
            processes.Add(silo);
            await silo.Ready.WaitAsync(TimeSpan.FromMinutes(2), cancel);

            await ChildProcess.WaitForReady(client, gateway, cancel);
            await ChildProcess.AssertCompletes(client, 4, cancel);
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

    /// <summary>The probe's status, once the gateway listens (it may still be starting its web server).</summary>
    private static async Task<HttpStatusCode> StatusOf(HttpClient client, string path, CancellationToken cancel)
    {
        for (var deadline = DateTime.UtcNow.AddMinutes(1); ; await Task.Delay(250, cancel))
        {
            try
            {
                using var response = await client.GetAsync(path, cancel);
                return response.StatusCode;
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline) { }   // not listening yet
        }
    }
}
