// The jobs API: POST /v1/jobs starts a training job (model, dataset, layout, hyper-parameters, where to serve the
// result), GET /v1/jobs/{id} answers its status, GET /v1/jobs/{id}/events streams its progress as server-sent events
// until it ends, POST /v1/jobs/{id}/cancel stops it.
using System.Text.Json;
using Cluster.Contracts;
using static Cluster.Gateway.JsonFields;

namespace Cluster.Gateway;

public static class JobsEndpoints
{
    public static IEndpointRouteBuilder MapJobs(this IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/jobs", context => Answer(context, async grains =>
        {
            var spec = ParseSpec(await OpenAiEndpoints.ReadBody(context.Request, context.RequestAborted));
            if (spec.ReplaceServed && !context.Roles().HasFlag(ApiRoles.Admin))
                throw new ApiError(StatusCodes.Status403Forbidden, "'replace': true (publishing over a served model) needs an API key with the 'admin' role.",
                    "replace", "insufficient_role", "permission_error");
            string id = "job-" + Guid.NewGuid().ToString("N");
            return Results.Json(Body(await grains.GetGrain<ITrainingJobGrain>(id).Submit(spec)), statusCode: 201);
        }));
        app.MapGet("/v1/jobs/{id}", (HttpContext context, string id) => Answer(context, async grains =>
            Results.Json(Body(await grains.GetGrain<ITrainingJobGrain>(id).Status() ?? throw NotFound(id)))));
        app.MapPost("/v1/jobs/{id}/cancel", (HttpContext context, string id) => Answer(context, async grains =>
            Results.Json(Body(await grains.GetGrain<ITrainingJobGrain>(id).Cancel() ?? throw NotFound(id)))));
        app.MapGet("/v1/jobs/{id}/events", (HttpContext context, string id) => Answer(context, async grains =>
        {
            var job = grains.GetGrain<ITrainingJobGrain>(id);
            if (await job.Status() is null) throw NotFound(id);
            context.Response.ContentType = "text/event-stream";
            context.Response.Headers.CacheControl = "no-cache";
            await foreach (var e in job.Events().WithCancellation(context.RequestAborted))
            {
                await context.Response.Body.WriteAsync(OpenAiEndpoints.SseEvent(new
                {
                    @object = "training.job.event", step = e.Step, loss = float.IsNaN(e.Loss) ? (float?)null : e.Loss,
                    learning_rate = e.LearningRate, tokens_per_second = e.TokensPerSecond, mfu = e.Mfu, state = State(e.State), error = e.Error, note = e.Note,
                    expert_load = e.ExpertLoad, dropped_tokens = e.DroppedTokens, router_loss = e.RouterLoss,   // MoE models; null otherwise
                }), context.RequestAborted);
                await context.Response.Body.FlushAsync(context.RequestAborted);
            }
            await context.Response.Body.WriteAsync("data: [DONE]\n\n"u8.ToArray(), context.RequestAborted);
            return Results.Empty;
        }));
        return app;
    }

    /// <summary>Runs a handler; its failures (ApiError or grain errors) are answered by GatewayPipeline.</summary>
    private static async Task Answer(HttpContext context, Func<IGrainFactory, Task<IResult>> handle) =>
        await (await handle(context.RequestServices.GetRequiredService<IGrainFactory>())).ExecuteAsync(context);

    private static ApiError NotFound(string id) => new(404, $"No job '{id}'.", "id", "job_not_found");

    private static string State(TrainingJobState state) => state.ToString().ToLowerInvariant();

    private static object Body(TrainingJobStatus s) => new
    {
        id = s.Id, @object = "training.job", state = State(s.State), step = s.Step, steps = s.Steps, loss = s.Loss, error = s.Error,
        layout = s.Layout, checkpoint_step = s.CheckpointStep, restarts = s.Restarts, model = s.Model,
    };

    /// <summary>The job from the request body: a model ("preset" or "model_path"), the data and the hyper-parameters.</summary>
    private static TrainingJobSpec ParseSpec(ReadOnlyMemory<byte> body)
    {
        using var document = ParseObject(body);
        var root = document.RootElement;
        int seed = Get(root, "seed") is { } sd ? Integer(sd, "seed", 0, int.MaxValue) : 1;
        var source = Get(root, "model_path") is { } path
            ? ModelSource.File(String(path, "model_path"), Get(root, "tokenizer_path") is { } t ? String(t, "tokenizer_path") : null)
            : ModelSource.Random(Get(root, "preset") is { } p ? String(p, "preset") : throw Missing("preset"), seed);
        return new TrainingJobSpec
        {
            Source = source,
            Dataset = Get(root, "dataset") is { } d ? String(d, "dataset") : "additions",
            Documents = Get(root, "documents") is { } docs ? Strings(docs, "documents") : null,
            Steps = Get(root, "steps") is { } st ? Integer(st, "steps", 1, 1_000_000) : 100,
            BatchSize = Get(root, "batch_size") is { } b ? Integer(b, "batch_size", 1, 4096) : 4,
            SequenceLength = Get(root, "sequence_length") is { } sl ? Integer(sl, "sequence_length", 2, 1 << 16) : 64,
            LearningRate = Get(root, "learning_rate") is { } lr ? Number(lr, "learning_rate", 1e-9, 1) : 1e-3f,
            WarmupSteps = Get(root, "warmup_steps") is { } w ? Integer(w, "warmup_steps", 0, 1_000_000) : 10,
            Layout = Get(root, "layout") is { } layout ? String(layout, "layout") : "",
            MicroBatches = Get(root, "micro_batches") is { } mb ? Integer(mb, "micro_batches", 1, 1024) : 1,
            Schedule = Get(root, "schedule") is { } schedule ? String(schedule, "schedule") : "1f1b",
            CheckpointEvery = Get(root, "checkpoint_every") is { } ce ? Integer(ce, "checkpoint_every", 1, 1_000_000) : 25,
            KeepCheckpoints = Get(root, "keep_checkpoints") is { } kc ? Integer(kc, "keep_checkpoints", 1, 1000) : 3,
            ServeAs = Get(root, "serve_as") is { } serveAs ? String(serveAs, "serve_as") : null,
            ServeLayout = Get(root, "serve_layout") is { } serveLayout ? String(serveLayout, "serve_layout") : "",
            ReplaceServed = Get(root, "replace") is { } replace && Bool(replace, "replace"),
            ZeroStage = Get(root, "zero_stage") is { } z ? Integer(z, "zero_stage", 0, 3) : 0,
            Lora = Get(root, "lora") is { } lora ? ParseLora(lora) : null,
            ActivationCheckpointing = Get(root, "activation_checkpointing") is { } ac ? Bool(ac, "activation_checkpointing") : false,
            Precision = Get(root, "precision") is { } precision ? String(precision, "precision") : "fp32",
            Silos = Get(root, "silos") is { } silos ? Strings(silos, "silos") : null,
            Seed = seed,
        };
    }

    /// <summary>"lora": {"rank": 8, "alpha": 16, "targets": ["wq", "wv"], "dropout": 0.05, "quantize_base": true} (rank required; quantize_base: QLoRA).</summary>
    private static LoraSettings ParseLora(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) throw new ApiError(400, "'lora' must be an object with rank, alpha, targets and dropout.", "lora");
        int rank = Get(e, "rank") is { } r ? Integer(r, "lora.rank", 1, 1024) : throw Missing("lora.rank");
        return new LoraSettings(rank,
            Get(e, "alpha") is { } a ? Number(a, "lora.alpha", 1e-6, 1e6) : 2f * rank,
            Get(e, "targets") is { } t ? Strings(t, "lora.targets") : ["wq", "wk", "wv", "wo"],
            Get(e, "dropout") is { } d ? Number(d, "lora.dropout", 0, 0.99) : 0f,
            Get(e, "quantize_base") is { } q && Bool(q, "lora.quantize_base"));
    }

    private static string[] Strings(JsonElement e, string param) =>
        e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String)
            ? [.. e.EnumerateArray().Select(x => String(x, param))]
            : throw new ApiError(400, $"'{param}' must be an array of strings.", param);
}
