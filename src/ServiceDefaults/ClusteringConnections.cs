// The connections Orleans' configuration-based clustering providers resolve from DI. An Aspire app host would add
// them with its client integrations (AddKeyedRedisClient); those packages are not available here, so this does the
// same from the same keys: Orleans__Clustering__ProviderType=Redis, Orleans__Clustering__ServiceKey=NAME and
// ConnectionStrings__NAME=host:port.
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using StackExchange.Redis;

namespace Cluster.ServiceDefaults;

public static class ClusteringConnections
{
    public static IServiceCollection AddClusteringConnections(this IServiceCollection services, IConfiguration config)
    {
        if (!string.Equals(config["Orleans:Clustering:ProviderType"], "Redis", StringComparison.OrdinalIgnoreCase)) return services;
        string key = config["Orleans:Clustering:ServiceKey"]
            ?? throw new InvalidOperationException("Orleans:Clustering:ServiceKey must name the Redis connection (ConnectionStrings:<key>)");
        string connection = config.GetConnectionString(key)
            ?? throw new InvalidOperationException($"ConnectionStrings:{key} (env ConnectionStrings__{key}) is not set");
        services.AddKeyedSingleton<IConnectionMultiplexer>(key, (_, _) => ConnectionMultiplexer.Connect(connection));
        return services;
    }
}
