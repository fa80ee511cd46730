// The OpenAI-compatible endpoints (and GET /v1/cluster/silos, the device inventory): GET /v1/models, POST /v1/completions and /v1/chat/completions (JSON or, with
// "stream": true, server-sent events ending in "data: [DONE]"). Grains come from the IGrainFactory in DI.
using System.Text.Json;
using Cluster.Contracts;

namespace Cluster.Gateway;

public static class OpenAiEndpoints
{
    public const int MaxBodyBytes = 1 << 20;

    public static IEndpointRouteBuilder MapOpenAi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/v1/models", async (IGrainFactory grains) =>
        {
            var models = await grains.GetGrain<IModelRegistryGrain>(0).List();
            return Results.Json(new
            {
                @object = "list",
                data = models.Select(m => new { id = m.Id, @object = "model", created = 0, owned_by = "cluster", config = m.Config, layout = m.Layout, shards = m.Shards }),
            });
        });
        // Not OpenAI: the silos of the cluster and the devices each owns (behind the same API keys as /v1).
        app.MapGet("/v1/cluster/silos", async (IGrainFactory grains) =>
            Results.Json(new { @object = "list", data = await grains.GetGrain<IClusterInventoryGrain>(0).ActiveSilos() }));
        app.MapPost("/v1/completions", context => Complete(context, chat: false));
        app.MapPost("/v1/chat/completions", context => Complete(context, chat: true));
        return app;
    }

    private static async Task Complete(HttpContext context, bool chat)
    {
        try
        {
            var body = await ReadBody(context.Request, context.RequestAborted);
            var request = CompletionRequest.Parse(body, chat);
            var grains = context.RequestServices.GetRequiredService<IGrainFactory>();
            await new CompletionRun(context, grains.GetGrain<IInferenceSchedulerGrain>(request.Model), request, chat).RunAsync();
        }
        catch (Exception e) when (context.Response.ContentType == "text/event-stream" && !context.RequestAborted.IsCancellationRequested)
        {
            // the stream had begun: end it with the error event (the status line has gone)
            await context.Response.Body.WriteAsync(SseEvent(GatewayPipeline.AsApiError(e, context).Body), context.RequestAborted);
        }
    }

    /// <summary>The body, at most <see cref="MaxBodyBytes"/> (else 413), read whole before parsing.</summary>
    internal static async Task<ReadOnlyMemory<byte>> ReadBody(HttpRequest request, CancellationToken cancellation)
    {
        var tooLarge = new ApiError(413, $"The request body exceeds {MaxBodyBytes} bytes.");
        if (request.ContentLength > MaxBodyBytes) throw tooLarge;
        using var buffer = new MemoryStream();
        var chunk = new byte[16384];
        int read;
        while ((read = await request.Body.ReadAsync(chunk, cancellation)) > 0)
        {
            if (buffer.Length + read > MaxBodyBytes) throw tooLarge;
            buffer.Write(chunk, 0, read);
        }
        return buffer.GetBuffer().AsMemory(0, (int)buffer.Length);
    }

    internal static byte[] SseEvent(object payload) =>
        [.. "data: "u8, .. JsonSerializer.SerializeToUtf8Bytes(payload), .. "\n\n"u8];
}
