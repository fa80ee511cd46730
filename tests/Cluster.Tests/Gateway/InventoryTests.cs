// Device discovery: every silo of the test cluster reports the CPU threads its shards get, and the gateway lists
// the active silos with their devices.
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Tests.Grains;

namespace Cluster.Tests.Gateway;

[Collection(nameof(ClusterCollection))]
public sealed class InventoryTests(ClusterFixture fixture)
{
    [Fact]
    public async Task EverySiloReportsItsDevices()
    {
        var inventory = fixture.Cluster.Client.GetGrain<IClusterInventoryGrain>(0);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        SiloInventory[] silos;
        while ((silos = await inventory.ActiveSilos()).Length < fixture.Cluster.Silos.Count)
        {
            Assert.True(DateTime.UtcNow < deadline, $"only {silos.Length} of {fixture.Cluster.Silos.Count} silos reported");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.Equal(fixture.Cluster.Silos.Select(s => s.SiloAddress.ToString()).Order(), silos.Select(s => s.Address).Order());
        foreach (var silo in silos) Assert.Contains(silo.Devices, d => d.Kind == "Cpu" && d.Threads == 1);

        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        using var json = JsonDocument.Parse(await http.GetStringAsync("v1/cluster/silos", TestContext.Current.CancellationToken));
        Assert.Equal(silos.Length, json.RootElement.GetProperty("data").GetArrayLength());
    }
}
