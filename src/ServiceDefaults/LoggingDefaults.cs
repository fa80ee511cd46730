// Console logging defaults for silos and the gateway: Orleans, ASP.NET Core and Polly at Warning (their start-up
// option dumps and retry lines are noise on a console), the cluster's own categories at Information. They sit below
// every other configuration source, so Logging__LogLevel__Orleans=Information (or appsettings) still turns them up;
// OpenTelemetry's log export follows the same levels.
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.Memory;

namespace Cluster.ServiceDefaults;

public static class LoggingDefaults
{
    public static readonly IReadOnlyDictionary<string, string?> Levels = new Dictionary<string, string?>
    {
        ["Logging:LogLevel:Default"] = "Information",
        ["Logging:LogLevel:Orleans"] = "Warning",
        ["Logging:LogLevel:Microsoft"] = "Warning",
        ["Logging:LogLevel:Microsoft.Hosting.Lifetime"] = "Information",
        ["Logging:LogLevel:Polly"] = "Warning",
    };

    /// <summary>Adds the defaults as the lowest-precedence configuration source.</summary>
    public static IConfigurationBuilder AddLoggingDefaults(this IConfigurationBuilder configuration)
    {
        configuration.Sources.Insert(0, new MemoryConfigurationSource { InitialData = Levels });
        return configuration;
    }
}
