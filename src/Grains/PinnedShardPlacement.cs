// [PinnedShardPlacement]: a grain whose key ends in "@{siloName}" activates on the active silo with that
// SiloOptions.SiloName. Otherwise (no pin, or the pinned silo died or never joined) a shard or trainer goes to the
// compatible silo with the most free devices (accelerators first), by the cluster inventory (DeviceSlots' reports,
// read at most once a second) plus what this director placed in the last few seconds (the reports lag the placements);
// ties, and other grains, go to any compatible silo at random.
using System.Diagnostics;
using Cluster.Contracts;
using Orleans.Placement;
using Orleans.Runtime.Placement;

namespace Cluster.Grains;

public sealed class PinnedShardPlacementStrategy : PlacementStrategy;

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class PinnedShardPlacementAttribute() : PlacementAttribute(new PinnedShardPlacementStrategy());

public sealed class PinnedShardPlacementDirector(IClusterMembershipService membership, IGrainFactory grains) : IPlacementDirector
{
    private static readonly TimeSpan InventoryAge = TimeSpan.FromSeconds(1), PlacementMemory = TimeSpan.FromSeconds(5);
    private readonly object _lock = new();
    private (SiloInventory[] Silos, long At) _inventory = ([], 0);
    private readonly List<(string Address, string Key, long At)> _placed = [];   // placements the inventory may not show yet

    public async Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var compatible = context.GetCompatibleSilos(target);
        string? wanted = ShardKey.PinnedSilo(target.GrainIdentity.Key.ToString() ?? "");
        if (wanted is not null)
            foreach (var member in membership.CurrentSnapshot.Members.Values)
                if (member.Name == wanted && member.Status == SiloStatus.Active && compatible.Contains(member.SiloAddress))
                    return member.SiloAddress;
        string type = target.GrainIdentity.Type.ToString() ?? "";
        if (type is not ("shard" or "trainer") || compatible.Length == 1) return compatible[Random.Shared.Next(compatible.Length)];
        return ByFreeDevices(compatible, await Inventory(), target.GrainIdentity.Key.ToString() ?? "");
    }

    /// <summary>The silo with the most free devices after this director's recent placements; accelerators count first.</summary>
    private SiloAddress ByFreeDevices(SiloAddress[] compatible, SiloInventory[] inventory, string key)
    {
        lock (_lock)
        {
            var byAddress = inventory.ToDictionary(s => s.Address);
            // A placement stops counting once the inventory shows its grain holding a device there, or after a while.
            _placed.RemoveAll(p => Stopwatch.GetElapsedTime(p.At) > PlacementMemory
                || (byAddress.TryGetValue(p.Address, out var silo) && silo.Devices.Any(d => d.Holders.Any(h => h.Key == p.Key))));
            (int Accelerators, int Devices) Free(SiloAddress silo)
            {
                if (!byAddress.TryGetValue(silo.ToString(), out var s)) return (0, 0);
                int placed = _placed.Count(p => p.Address == s.Address);
                var free = s.Devices.Where(d => d.Holders.Length == 0).OrderByDescending(d => d.Kind != "Cpu").Skip(placed).ToArray();
                return (free.Count(d => d.Kind != "Cpu"), free.Length);
            }
            var scored = compatible.Select(silo => (Silo: silo, Free: Free(silo))).ToArray();
            var best = scored.Max(s => s.Free);
            var choices = scored.Where(s => s.Free == best).Select(s => s.Silo).ToArray();
            var chosen = choices[Random.Shared.Next(choices.Length)];
            _placed.Add((chosen.ToString(), key, Stopwatch.GetTimestamp()));
            return chosen;
        }
    }

    /// <summary>The cluster inventory, at most a second old; empty when it cannot be read in time (placement then goes on at random).</summary>
    private async Task<SiloInventory[]> Inventory()
    {
        lock (_lock)
            if (_inventory.At != 0 && Stopwatch.GetElapsedTime(_inventory.At) < InventoryAge) return _inventory.Silos;
        try
        {
            var silos = await grains.GetGrain<IClusterInventoryGrain>(0).ActiveSilos().WaitAsync(TimeSpan.FromSeconds(2));
            lock (_lock) _inventory = (silos, Stopwatch.GetTimestamp());
            return silos;
        }
        catch (Exception e) when (e is TimeoutException or OrleansException or SiloUnavailableException)
        {
            return [];
        }
    }
}
