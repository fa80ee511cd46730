// How the gateway finds the silos: Orleans__Clustering__ProviderType (Redis, AdoNet) like the silo, else localhost
// clustering to the gateway ports in Cluster__SiloGateways (comma-separated ports) or Orleans__Endpoints__GatewayPort.
namespace Cluster.Gateway;

public static class ClientClustering
{
    public static IClientBuilder UseClusterClustering(this IClientBuilder client, IConfiguration config)
    {
        if (!string.IsNullOrEmpty(config["Orleans:Clustering:ProviderType"])) return client;   // configured provider
        int[] ports = (config["Cluster:SiloGateways"] ?? config.GetValue("Orleans:Endpoints:GatewayPort", 30000).ToString())
            .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(int.Parse).ToArray();
        return client.UseLocalhostClustering(ports);
    }
}
