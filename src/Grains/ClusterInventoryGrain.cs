// The cluster's device inventory: each silo's report, answered only for silos membership still lists as active.
using Cluster.Contracts;

namespace Cluster.Grains;

public sealed class ClusterInventoryGrain : Grain, IClusterInventoryGrain
{
    private readonly Dictionary<string, SiloInventory> _silos = [];

    public Task Report(SiloInventory inventory)
    {
        _silos[inventory.Address] = inventory;
        return Task.CompletedTask;
    }

    public async Task<SiloInventory[]> ActiveSilos()
    {
        var active = await GrainFactory.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true);
        var addresses = active.Keys.Select(a => a.ToString()).ToHashSet();
        return _silos.Values.Where(s => addresses.Contains(s.Address)).OrderBy(s => s.Silo, StringComparer.Ordinal).ToArray();
    }
}
