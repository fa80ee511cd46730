// Gives host memory that loading let go back to the OS. A load drops large tensors (whole layers once cut, host copies
// once packed on the device) faster than the GC decommits on its own, so a process would peak at both copies; a
// decommitting collection after each budget of bytes let go keeps it near one copy plus the budget.
namespace Cluster.Model;

public sealed class HostMemory(long collectEveryBytes)
{
    private long _uncollected;

    /// <summary>A blocking, compacting collection that returns the freed pages to the OS.</summary>
    public static void GiveBack() => GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);

    /// <summary>Records <paramref name="bytes"/> let go; collects once the budget is reached.</summary>
    public void Released(long bytes)
    {
        _uncollected += bytes;
        if (_uncollected >= collectEveryBytes) Flush();
    }

    /// <summary>Collects if anything was let go since the last collection.</summary>
    public void Flush()
    {
        if (_uncollected == 0) return;
        GiveBack();
        _uncollected = 0;
    }
}
