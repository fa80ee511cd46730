// Probes. GET /health: the process is alive (200). GET /ready (alias /health/ready): 200 once the cluster answers and
// its model registry lists at least one model, else 503. Neither says more than that (no exception text).
namespace Cluster.Gateway;

public static class ReadinessEndpoint
{
    public static IEndpointRouteBuilder MapReadiness(this IEndpointRouteBuilder app)
    {
        app.MapGet("/health", () => Results.Ok(new { status = "alive" }));
        var ready = async (IGrainFactory grains, CancellationToken cancellation) =>
        {
            try
            {
                var models = await grains.GetGrain<Contracts.IModelRegistryGrain>(0).List()
                    .WaitAsync(TimeSpan.FromSeconds(5), cancellation);
                return models.Length > 0
                    ? Results.Ok(new { status = "ready", models = models.Select(m => m.Id) })
                    : Results.Json(new { status = "no model served yet" }, statusCode: 503);
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellation.IsCancellationRequested)
            {
                return Results.Json(new { status = "cluster unavailable" }, statusCode: 503);
            }
        };
        app.MapGet("/ready", ready);
        app.MapGet("/health/ready", ready);
        return app;
    }
}
