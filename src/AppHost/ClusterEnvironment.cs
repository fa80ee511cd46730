// The environment every silo and the gateway run in: Development, an open local gateway unless API keys are set
// (Cluster__ApiKeys). Everything else of the app host's own environment (Cluster__* settings, TLS) reaches them anyway:
// DCP starts resources with the app host's environment plus Aspire's variables.
namespace Cluster.AppHost;

public static class ClusterEnvironment
{
    public static void AddCommon(IDictionary<string, object> environment)
    {
        environment["DOTNET_ENVIRONMENT"] = "Development";
        environment["ASPNETCORE_ENVIRONMENT"] = "Development";
    }
}
