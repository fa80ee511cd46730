// One completion: tokenizes the prompt on the model's scheduler, streams its chunks and answers them as an OpenAI
// text_completion / chat.completion object or as server-sent chunk events, cut before the first `stop` string
// (StopSequences). finish_reason is "length" when max_tokens ended it, else "stop" (a stop string, EOS, or the model's
// context filled up). Grain argument errors become 400s; the
// rest map in GatewayPipeline (unknown model 404, full queue 429, pipeline lost 503; mid-stream: an error event). The
// client going away cancels the generation on the scheduler at once, queued or running. A stream whose scheduler's
// silo dies resumes on the scheduler's next activation (ResumableGeneration).
using Cluster.Contracts;

namespace Cluster.Gateway;

public sealed class CompletionRun(HttpContext context, IInferenceSchedulerGrain scheduler, CompletionRequest request, bool chat)
{
    private readonly string _id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>How long a stream waits for its scheduler to come back on another silo before it fails.</summary>
    private static readonly TimeSpan ResumePatience = TimeSpan.FromSeconds(60);

    public async Task RunAsync()
    {
        var cancellation = context.RequestAborted;
        int[] prompt = await Grain(() => scheduler.Tokenize(request.Prompt, cancellation));
        var generation = new GenerationRequest
        {
            PromptTokens = prompt, MaxTokens = request.MaxTokens, Temperature = request.Temperature,
            TopP = request.TopP, TopK = request.TopK, Seed = request.Seed,
        };
        await using var chunks = new ResumableGeneration(scheduler, generation, ResumePatience, cancellation);
        bool any = await Grain(chunks.MoveNextAsync);   // argument errors surface before any output
        var text = new System.Text.StringBuilder();
        var stops = new StopSequences(request.Stop);
        int completionTokens = 0;
        if (request.Stream) StartEvents();
        for (; any; any = await Grain(chunks.MoveNextAsync))
        {
            completionTokens++;
            await Emit(stops.Add(chunks.Current.Text));
            if (stops.Stopped) break;   // leaving the stream ends the generation on the scheduler
        }
        if (!stops.Stopped) await Emit(stops.Flush());
        var usage = new { prompt_tokens = prompt.Length, completion_tokens = completionTokens, total_tokens = prompt.Length + completionTokens };
        string finish = !stops.Stopped && completionTokens >= request.MaxTokens ? "length" : "stop";
        if (!request.Stream)
        {
            await context.Response.WriteAsJsonAsync(Response(text.ToString(), finish, usage), cancellation);
            return;
        }
        await Send(Chunk(chat ? null : "", finish));
        if (request.IncludeUsage) await Send(Envelope(Array.Empty<object>(), usage));
        await context.Response.Body.WriteAsync("data: [DONE]\n\n"u8.ToArray(), cancellation);

        async Task Emit(string piece)
        {
            text.Append(piece);
            if (request.Stream && piece.Length > 0) await Send(Chunk(piece, null));
        }
    }

    /// <summary>A grain call whose argument errors are the request's fault (400); other failures map in GatewayPipeline.</summary>
    private static async Task<T> Grain<T>(Func<Task<T>> call)
    {
        try { return await call(); }
        catch (ArgumentException e) { throw new ApiError(400, e.Message, "prompt"); }
    }

    private void StartEvents()
    {
        context.Response.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
    }

    private async Task Send(object payload)
    {
        await context.Response.Body.WriteAsync(OpenAiEndpoints.SseEvent(payload), context.RequestAborted);
        await context.Response.Body.FlushAsync(context.RequestAborted);
    }

    private object Chunk(string? text, string? finish) => Envelope(chat
        ? [new { index = 0, delta = text is null ? (object)new { } : new { role = "assistant", content = text }, logprobs = (object?)null, finish_reason = finish }]
        : [new { text, index = 0, logprobs = (object?)null, finish_reason = finish }], usage: null);

    private object Response(string text, string finish, object usage) => Envelope(chat
        ? [new { index = 0, message = new { role = "assistant", content = text }, logprobs = (object?)null, finish_reason = finish }]
        : [new { text, index = 0, logprobs = (object?)null, finish_reason = finish }], usage);

    private object Envelope(object[] choices, object? usage) => new
    {
        id = _id,
        @object = chat ? (request.Stream ? "chat.completion.chunk" : "chat.completion") : "text_completion",
        created = _created,
        model = request.Model,
        choices,
        usage,
    };
}
