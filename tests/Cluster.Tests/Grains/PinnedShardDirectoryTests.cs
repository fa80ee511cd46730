// PinnedShardDirectory: pinned shard keys are registered and found without the shared directory, whose range may sit
// on a silo that was just killed (it would not answer until the cluster declared that silo dead); everything else
// goes to the shared directory. Run: dotnet test --project tests/Cluster.Tests -- --filter-class "*PinnedShardDirectoryTests"
using System.Collections.Immutable;
using System.Net;
using Cluster.Grains;
using Orleans.GrainDirectory;

namespace Cluster.Tests.Grains;

public sealed class PinnedShardDirectoryTests
{
    private static readonly SiloAddress A = SiloAddress.New(new IPEndPoint(IPAddress.Loopback, 11111), 1);
    private static readonly SiloAddress B = SiloAddress.New(new IPEndPoint(IPAddress.Loopback, 11112), 1);
    private static readonly SiloAddress DeadB = SiloAddress.New(new IPEndPoint(IPAddress.Loopback, 11112), 0);

    private static GrainId Shard(string key) => GrainId.Create("shard", key);

    private static (PinnedShardDirectory Directory, SilentDirectory Shared) OnSiloA(params (SiloAddress Silo, SiloStatus Status, string Name)[] members)
    {
        var shared = new SilentDirectory();
        var snapshot = new ClusterMembershipSnapshot(
            members.ToImmutableDictionary(m => m.Silo, m => new ClusterMember(m.Silo, m.Status, m.Name)), new MembershipVersion(3));
        return (new PinnedShardDirectory(shared, new Membership(snapshot), new LocalSilo("a", A)), shared);
    }

    [Fact]
    public async Task AKeyPinnedHereRegistersHereAndTheFirstActivationWins()
    {
        var (directory, shared) = OnSiloA((A, SiloStatus.Active, "a"));
        var grain = Shard("m/0.1.0~1@a");
        Assert.Null(await directory.Lookup(grain));   // not active yet: the placement activates it here

        var first = new GrainAddress { GrainId = grain, SiloAddress = A, ActivationId = ActivationId.NewId() };
        var second = new GrainAddress { GrainId = grain, SiloAddress = A, ActivationId = ActivationId.NewId() };
        Assert.Equal(first, await directory.Register(first));
        Assert.Equal(first, await directory.Register(second));
        Assert.Equal(first, await directory.Lookup(grain));

        await directory.Unregister(second);   // not the registered activation: nothing changes
        Assert.Equal(first, await directory.Lookup(grain));
        await directory.Unregister(first);
        Assert.Null(await directory.Lookup(grain));
        Assert.Equal(second, await directory.Register(second));
        Assert.Equal(0, shared.Calls);
    }

    [Fact]
    public async Task AKeyPinnedToAnotherActiveSiloIsFoundThereWithoutTheSharedDirectory()
    {
        // b restarted: its dead generation is still in the membership; the active one is found by name.
        var (directory, shared) = OnSiloA((A, SiloStatus.Active, "a"), (DeadB, SiloStatus.Dead, "b"), (B, SiloStatus.Active, "b"));
        var grain = Shard("m/0.1.0~2@b");
        var found = await directory.Lookup(grain).WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        Assert.NotNull(found);
        Assert.Equal(B, found.SiloAddress);
        Assert.Equal(grain, found.GrainId);
        Assert.True(found.ActivationId.IsDefault);   // matches whichever activation b holds
        Assert.Equal(0, shared.Calls);
    }

    [Fact]
    public async Task UnpinnedKeysAndKeysOfAbsentSilosGoToTheSharedDirectory()
    {
        var (directory, shared) = OnSiloA((A, SiloStatus.Active, "a"), (DeadB, SiloStatus.Dead, "b"));
        var unpinned = Shard("m/0.1.0");
        var pinnedToDeadSilo = Shard("m/0.1.0@b");
        _ = directory.Lookup(unpinned);
        _ = directory.Lookup(pinnedToDeadSilo);
        _ = directory.Register(new GrainAddress { GrainId = pinnedToDeadSilo, SiloAddress = A, ActivationId = ActivationId.NewId() });   // the placement's fallback put it here
        Assert.Equal(3, shared.Calls);
    }

    [Fact]
    public async Task ADeadSilosRegistrationsAreDropped()
    {
        var (directory, _) = OnSiloA((A, SiloStatus.Active, "a"));
        var grain = Shard("m/0.0.0@a");
        var address = new GrainAddress { GrainId = grain, SiloAddress = A, ActivationId = ActivationId.NewId() };
        await directory.Register(address);
        await directory.UnregisterSilos([B]);
        Assert.Equal(address, await directory.Lookup(grain));
        await directory.UnregisterSilos([A]);
        Assert.Null(await directory.Lookup(grain));
    }

    /// <summary>A shared directory whose range owner was killed: it counts the calls and never answers.</summary>
    private sealed class SilentDirectory : IGrainDirectory
    {
        private int _calls;
        public int Calls => _calls;
        private Task<T> Silence<T>() { Interlocked.Increment(ref _calls); return new TaskCompletionSource<T>().Task; }
        public Task<GrainAddress?> Register(GrainAddress address) => Silence<GrainAddress?>();
        public Task Unregister(GrainAddress address) => Silence<bool>();
        public Task<GrainAddress?> Lookup(GrainId grainId) => Silence<GrainAddress?>();
        public Task UnregisterSilos(List<SiloAddress> siloAddresses) => Silence<bool>();
    }

    private sealed class Membership(ClusterMembershipSnapshot snapshot) : IClusterMembershipService
    {
        public ClusterMembershipSnapshot CurrentSnapshot => snapshot;
        public IAsyncEnumerable<ClusterMembershipSnapshot> MembershipUpdates => throw new NotSupportedException();
        public ValueTask Refresh(MembershipVersion minimumVersion = default, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
        public Task<bool> TryKill(SiloAddress siloAddress) => throw new NotSupportedException();
    }

    private sealed class LocalSilo(string name, SiloAddress address) : ILocalSiloDetails
    {
        public string Name => name;
        public string ClusterId => "test";
        public string DnsHostName => "localhost";
        public SiloAddress SiloAddress => address;
        public SiloAddress GatewayAddress => address;
    }
}
