// What every Cluster process (silos, gateway) sets up the same way, in the shape of Aspire's ServiceDefaults template:
// `builder.AddServiceDefaults()` gives quiet console logging defaults, OpenTelemetry logs, metrics and traces exported
// over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the Aspire app host sets it, with OTEL_SERVICE_NAME, for each
// resource), service discovery and standard resilience for outgoing HTTP clients, and the connections the
// configuration-based Orleans clustering providers resolve from DI.
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace Cluster.ServiceDefaults;

public static class Extensions
{
    /// <summary>The meter and activity source the engine's own code reports under (Cluster.Compute.ClusterTelemetry).</summary>
    public const string ClusterSource = "Cluster";

    public static TBuilder AddServiceDefaults<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        builder.Configuration.AddLoggingDefaults();
        builder.ConfigureOpenTelemetry();
        builder.Services.AddServiceDiscovery();
        builder.Services.ConfigureHttpClientDefaults(http =>
        {
            http.AddStandardResilienceHandler();
            http.AddServiceDiscovery();
        });
        builder.Services.AddClusteringConnections(builder.Configuration);
        return builder;
    }

    public static TBuilder ConfigureOpenTelemetry<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        builder.Logging.AddOpenTelemetry(logging =>
        {
            logging.IncludeFormattedMessage = true;
            logging.IncludeScopes = true;
        });
        var telemetry = builder.Services.AddOpenTelemetry()
            .WithMetrics(metrics => metrics
                .AddMeter("Microsoft.Orleans", "System.Runtime", "Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel",
                    "System.Net.Http", ClusterSource))
            .WithTracing(tracing => tracing
                .AddSource("Microsoft.Orleans.Runtime", "Microsoft.Orleans.Application", "Microsoft.AspNetCore", "System.Net.Http", ClusterSource)
                .SetSampler(new ParentBasedSampler(new NoOrleansRootsSampler())));
        if (!string.IsNullOrWhiteSpace(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"])) telemetry.UseOtlpExporter();
        return builder;
    }

    /// <summary>
    /// Traces begin at an HTTP request or an engine span (a scheduler step, a training step), never at an Orleans call:
    /// Orleans names its call spans "IInterface/Method", and its background calls (timers, membership pings, directory
    /// lookups, the Orleans dashboard's counters) would otherwise start several traces a second and bury the
    /// requests in the dashboard's trace list. Orleans calls inside a sampled trace are kept (the parent decides).
    /// </summary>
    private sealed class NoOrleansRootsSampler : Sampler
    {
        public override SamplingResult ShouldSample(in SamplingParameters parameters) =>
            new(parameters.Name.Contains('/') ? SamplingDecision.Drop : SamplingDecision.RecordAndSample);
    }
}
