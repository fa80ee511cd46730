// API keys: requests to /v1 must carry `Authorization: Bearer <key>` for one of the keys in Cluster:ApiKeys
// (comma-separated). Keys may be left unset only in the Development environment (the app host's local default);
// anywhere else the gateway refuses to start without them, so a deployed gateway is never open by accident.
using System.Security.Cryptography;
using System.Text;

namespace Cluster.Gateway;

public sealed class ApiKeys
{
    private readonly byte[][] _keys;

    public ApiKeys(IEnumerable<string> keys) =>
        _keys = keys.Select(k => k.Trim()).Where(k => k.Length > 0).Select(Encoding.UTF8.GetBytes).ToArray();

    public bool Required => _keys.Length > 0;

    public static ApiKeys FromConfiguration(IConfiguration config, IHostEnvironment environment)
    {
        var keys = new ApiKeys((config["Cluster:ApiKeys"] ?? "").Split(','));
        if (!keys.Required && !environment.IsDevelopment())
            throw new InvalidOperationException(
                $"Cluster:ApiKeys (env Cluster__ApiKeys) is empty in the '{environment.EnvironmentName}' environment: set at least one key, or run in Development for an open local gateway");
        return keys;
    }

    /// <summary>Constant-time comparison of the bearer token against every key.</summary>
    public bool Accepts(string? authorization)
    {
        if (!Required) return true;
        const string Bearer = "Bearer ";
        if (authorization is null || !authorization.StartsWith(Bearer, StringComparison.OrdinalIgnoreCase)) return false;
        byte[] presented = Encoding.UTF8.GetBytes(authorization[Bearer.Length..].Trim());
        bool accepted = false;
        foreach (var key in _keys) accepted |= CryptographicOperations.FixedTimeEquals(presented, key);
        return accepted;
    }
}

public static class ApiKeyMiddleware
{
    /// <summary>Answers 401 in the OpenAI error shape for /v1 requests without an accepted key.</summary>
    public static IApplicationBuilder UseApiKeys(this IApplicationBuilder app, ApiKeys keys) => app.Use(async (context, next) =>
    {
        if (context.Request.Path.StartsWithSegments("/v1") && !keys.Accepts(context.Request.Headers.Authorization))
        {
            await new ApiError(StatusCodes.Status401Unauthorized, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                code: "invalid_api_key").WriteAsync(context.Response);
            return;
        }
        await next(context);
    });
}
