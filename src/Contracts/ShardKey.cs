// Shard grain keys: "{modelId}/{replica}.{stage}.{rank}", then "~{generation}" when a failover moved the shard to a new
// grain (its old one may still be registered on the dead silo), then an optional "@{siloName}" that pins placement.
namespace Cluster.Contracts;

public static class ShardKey
{
    public static string Create(string modelId, int replica, int stage, int rank, string? silo = null, int generation = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(generation);
        string key = $"{modelId}/{replica}.{stage}.{rank}";
        if (generation > 0) key += $"~{generation}";
        return silo is null ? key : $"{key}@{silo}";
    }

    /// <summary>The model (or job) id: everything before the last '/'.</summary>
    public static string ModelId(string key) => key.LastIndexOf('/') is > 0 and int slash ? key[..slash] : key;

    /// <summary>The silo name after the last '@', or null when the key is not pinned.</summary>
    public static string? PinnedSilo(string key)
    {
        int at = key.LastIndexOf('@');
        return at < 0 || at == key.Length - 1 ? null : key[(at + 1)..];
    }
}
