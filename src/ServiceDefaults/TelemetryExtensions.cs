// OpenTelemetry for silos and the gateway: logs, Orleans' meters and activity sources, .NET runtime and HTTP
// metrics, and the engine's own meter, exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the variable an Aspire
// app host or dashboard sets; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name the process).
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace Cluster.ServiceDefaults;

public static class TelemetryExtensions
{
    /// <summary>The meter and activity source names the cluster's own code reports under.</summary>
    public const string ClusterSource = "Cluster";

    public static IServiceCollection AddClusterTelemetry(this IServiceCollection services, IConfiguration configuration)
    {
        var telemetry = services.AddOpenTelemetry()
            .WithMetrics(metrics => metrics
                .AddMeter("Microsoft.Orleans", "System.Runtime", "Microsoft.AspNetCore.Hosting", "System.Net.Http", ClusterSource))
            .WithTracing(tracing => tracing
                .AddSource("Microsoft.Orleans.Runtime", "Microsoft.Orleans.Application", "Microsoft.AspNetCore", ClusterSource))
            .WithLogging();
        if (!string.IsNullOrWhiteSpace(configuration["OTEL_EXPORTER_OTLP_ENDPOINT"])) telemetry.UseOtlpExporter();
        return services;
    }
}
