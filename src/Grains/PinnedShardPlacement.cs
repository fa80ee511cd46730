// [PinnedShardPlacement]: a grain whose key ends in "@{siloName}" activates on the active silo with that
// SiloOptions.SiloName; when there is none (it died or never joined) any compatible silo takes it.
using Cluster.Contracts;
using Orleans.Placement;
using Orleans.Runtime.Placement;

namespace Cluster.Grains;

public sealed class PinnedShardPlacementStrategy : PlacementStrategy;

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class PinnedShardPlacementAttribute() : PlacementAttribute(new PinnedShardPlacementStrategy());

public sealed class PinnedShardPlacementDirector(IClusterMembershipService membership) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var compatible = context.GetCompatibleSilos(target);
        string? wanted = ShardKey.PinnedSilo(target.GrainIdentity.Key.ToString() ?? "");
        if (wanted is not null)
            foreach (var member in membership.CurrentSnapshot.Members.Values)
                if (member.Name == wanted && member.Status == SiloStatus.Active && compatible.Contains(member.SiloAddress))
                    return Task.FromResult(member.SiloAddress);
        return Task.FromResult(compatible[Random.Shared.Next(compatible.Length)]);
    }
}
