// What every silo and the gateway receive besides Aspire's own variables: the Development environment (an open local
// gateway, unless API keys are set) and every Cluster__* variable of the app host's own environment (API keys, TLS,
// scheduler limits), so configuring the app host configures the cluster.
using System.Collections;

namespace Cluster.AppHost;

public static class ClusterEnvironment
{
    public static void AddCommon(IDictionary<string, object> environment)
    {
        environment["DOTNET_ENVIRONMENT"] = "Development";
        environment["ASPNETCORE_ENVIRONMENT"] = "Development";
        foreach (DictionaryEntry variable in Environment.GetEnvironmentVariables())
            if (variable.Key is string key && key.StartsWith("Cluster__", StringComparison.Ordinal) && variable.Value is string value)
                environment[key] = value;
    }
}
