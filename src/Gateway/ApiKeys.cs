// API keys and their roles. Keys come from configuration in one of two shapes:
//   Cluster:ApiKeys = "key1,key2"                       every key has every role (one trusted user);
//   Cluster:ApiKeys:0:Key = "...", Cluster:ApiKeys:0:Roles = "inference,train"   (env Cluster__ApiKeys__0__Key, ...__Roles).
// Roles: inference (models and completions), train (jobs), admin (everything, plus /v1/cluster/*, the dashboard and
// replacing a served model). Keys may be left unset only in the Development environment (the app host's local
// default), where every request has every role; anywhere else the gateway refuses to start without them.
using System.Security.Cryptography;
using System.Text;

namespace Cluster.Gateway;

[Flags]
public enum ApiRoles
{
    None = 0,
    Inference = 1,
    Train = 2,
    Admin = 4,
    All = Inference | Train | Admin,
}

public sealed record ApiKey(string Key, ApiRoles Roles);

public sealed class ApiKeys
{
    private readonly (byte[] Digest, ApiRoles Roles)[] _keys;

    public ApiKeys(IEnumerable<ApiKey> keys) =>
        _keys = [.. keys.Where(k => k.Key.Trim().Length > 0).Select(k => (Digest(k.Key.Trim()), k.Roles))];

    /// <summary>Keys with every role.</summary>
    public ApiKeys(params string[] keys) : this(keys.Select(k => new ApiKey(k, ApiRoles.All))) { }

    public bool Required => _keys.Length > 0;

    public static ApiKeys FromConfiguration(IConfiguration config, IHostEnvironment environment)
    {
        var section = config.GetSection("Cluster:ApiKeys");
        var keys = section.Value is { } list
            ? new ApiKeys(list.Split(','))
            : new ApiKeys(section.GetChildren().Select(entry => new ApiKey(
                entry["Key"] ?? throw new InvalidOperationException($"{entry.Path}: an API key entry needs 'Key' (and 'Roles')"),
                ParseRoles(entry.GetSection("Roles"), entry.Path))));
        if (!keys.Required && !environment.IsDevelopment())
            throw new InvalidOperationException(
                $"Cluster:ApiKeys (env Cluster__ApiKeys) is empty in the '{environment.EnvironmentName}' environment: set at least one key, or run in Development for an open local gateway");
        return keys;
    }

    /// <summary>Roles as "inference,train" or as an array (Roles:0, Roles:1); unknown names are a start-up error.</summary>
    private static ApiRoles ParseRoles(IConfigurationSection section, string path)
    {
        var names = section.Value is { } value ? value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            : section.GetChildren().Select(c => c.Value ?? "").ToArray();
        if (names.Length == 0) throw new InvalidOperationException($"{path}: an API key needs Roles (inference, train, admin)");
        return names.Aggregate(ApiRoles.None, (roles, name) => roles | (name.ToLowerInvariant() switch
        {
            "inference" => ApiRoles.Inference,
            "train" => ApiRoles.Train,
            "admin" => ApiRoles.All,
            _ => throw new InvalidOperationException($"{path}: unknown role '{name}' (inference, train, admin)"),
        }));
    }

    /// <summary>
    /// The roles of the key the request presents (Bearer, or Basic with the key as password for browsers on the
    /// dashboard), or null for none accepted. Every configured key is compared, in constant time, on SHA-256
    /// digests, so neither the matching key nor the keys' lengths show in the timing.
    /// </summary>
    public ApiRoles? RolesOf(string? authorization)
    {
        if (!Required) return ApiRoles.All;
        if (PresentedKey(authorization) is not { } presented) return null;
        byte[] digest = Digest(presented);
        ApiRoles? roles = null;
        foreach (var key in _keys)
            if (CryptographicOperations.FixedTimeEquals(digest, key.Digest)) roles = key.Roles;
        return roles;
    }

    private static string? PresentedKey(string? authorization)
    {
        if (authorization is null) return null;
        if (authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return authorization["Bearer ".Length..].Trim();
        if (!authorization.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase)) return null;
        try
        {
            string pair = Encoding.UTF8.GetString(Convert.FromBase64String(authorization["Basic ".Length..].Trim()));
            return pair[(pair.IndexOf(':') + 1)..];   // "user:key"; the user name is not checked
        }
        catch (FormatException) { return null; }
    }

    private static byte[] Digest(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));
}
