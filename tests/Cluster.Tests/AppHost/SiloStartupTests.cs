// Silo processes started out of order: the serving silo comes up before a silo its shards are pinned to (the app host
// may start them so: it waits for a silo's process, not for the silo to join). It waits for that silo to join and only
// then serves, so the pinned shard lands where its key says, not on the serving silo for good.
using System.Text.Json;

namespace Cluster.Tests.AppHost;

public sealed class SiloStartupTests
{
    [Fact]
    public async Task TheServingSiloWaitsForTheSiloItsShardsArePinnedTo()
    {
        var cancel = TestContext.Current.CancellationToken;
        int[] ports = FreePorts.Take(5);   // http, then silo and silo-gateway ports of b and of a
        var processes = new List<ChildProcess>();
        var model = new Dictionary<string, string>
        {
            ["DOTNET_ENVIRONMENT"] = "Development",
            ["Cluster__Model__Layout"] = "pp=2",
            ["Cluster__Model__Silos"] = "a,b",
            ["Cluster__DeviceThreads"] = "1",
            ["Cluster__KvSequences"] = "2",
        };
        try
        {
            var b = ChildProcess.Start("silo b", "dotnet", [ChildProcess.Assembly("SiloAssembly")], new(model)
            {
                ["Cluster__SiloName"] = "b",
                ["Orleans__Endpoints__SiloPort"] = $"{ports[1]}",
                ["Orleans__Endpoints__GatewayPort"] = $"{ports[2]}",
            }, readyMarker: "waiting for silos a to join");
            processes.Add(b);
            await b.Ready.WaitAsync(TimeSpan.FromMinutes(2), cancel);

            var a = ChildProcess.Start("silo a", "dotnet", [ChildProcess.Assembly("SiloAssembly")], new(model)
            {
                ["Cluster__SiloName"] = "a",
                ["Orleans__Endpoints__SiloPort"] = $"{ports[3]}",
                ["Orleans__Endpoints__GatewayPort"] = $"{ports[4]}",
                ["Cluster__PrimarySiloEndpoint"] = $"127.0.0.1:{ports[1]}",
                ["Cluster__Model__Serve"] = "false",
            }, readyMarker: "ready:");
            processes.Add(a);
            await a.Ready.WaitAsync(TimeSpan.FromMinutes(2), cancel);
            await b.Line("ready: silo b serves").WaitAsync(TimeSpan.FromMinutes(2), cancel);

            var gateway = ChildProcess.Start("gateway", "dotnet", [ChildProcess.Assembly("GatewayAssembly")], new()
            {
                ["ASPNETCORE_URLS"] = $"http://127.0.0.1:{ports[0]}",
                ["DOTNET_ENVIRONMENT"] = "Development",
                ["Cluster__SiloGateways"] = $"{ports[2]}",
            }, readyMarker: null);
            processes.Add(gateway);
            using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ports[0]}/"), Timeout = TimeSpan.FromSeconds(30) };
            await ChildProcess.WaitForReady(client, gateway, cancel);

            // Each silo reports its devices' holders; the reports lag the placements by up to a second or so.
            var deadline = DateTime.UtcNow.AddSeconds(30);
            Dictionary<string, string> holders;
            string report;
            do
            {
                await Task.Delay(250, cancel);
                report = await client.GetStringAsync("v1/cluster/silos", cancel);
                using var silos = JsonDocument.Parse(report);
                holders = silos.RootElement.GetProperty("data").EnumerateArray()
                    .SelectMany(s => s.GetProperty("devices").EnumerateArray().SelectMany(d => d.GetProperty("holders").EnumerateArray())
                        .Select(h => (Key: h.GetProperty("key").GetString()!, Silo: s.GetProperty("silo").GetString()!)))
                    .Where(h => h.Key.StartsWith("default/", StringComparison.Ordinal))
                    .ToDictionary(h => h.Key, h => h.Silo);
            } while (holders.Count < 2 && DateTime.UtcNow < deadline);
            Assert.True(holders.Count == 2, $"the silos report these holders: {report}");
            Assert.Equal("a", holders["default/0.0.0@a"]);
            Assert.Equal("b", holders["default/0.1.0@b"]);
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
}
