// One completion: tokenizes the prompt on the model's scheduler, streams its chunks and answers them as an OpenAI
// text_completion / chat.completion object or as server-sent chunk events (with each token's log-probabilities when
// asked for: the model's distribution before penalties, temperature and top-k/p), each choice's text cut before the
// first `stop` string (StopSequences). With n > 1 the choices are n generations of the same prompt, seeded seed, seed +
// 1, ..., run at once as n sequences of the scheduler, the later ones finding the prompt's full KV blocks in its prefix
// cache. finish_reason is "length" when max_tokens ended a choice, else "stop" (a stop string, EOS, or the model's
// context filled up). Grain argument errors become 400s; the rest map in GatewayPipeline (unknown model 404, full queue
// 429, pipeline lost 503; mid-stream: an error event). The client going away cancels the generations on the scheduler
// at once, queued or running. A stream whose scheduler's silo dies resumes on the scheduler's next activation
// (ResumableGeneration).
using Cluster.Contracts;

namespace Cluster.Gateway;

public sealed class CompletionRun(HttpContext context, IInferenceSchedulerGrain scheduler, CompletionRequest request, bool chat)
{
    private readonly string _id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly SemaphoreSlim _writing = new(1, 1);   // the choices' streams share one response

    /// <summary>How long a stream waits for its scheduler to come back on another silo before it fails.</summary>
    private static readonly TimeSpan ResumePatience = TimeSpan.FromSeconds(60);

    /// <summary>One of the n choices: its generation, its text so far and how it ended.</summary>
    private sealed class Choice(int index, ResumableGeneration chunks, StopSequences stops)
    {
        public int Index => index;
        public ResumableGeneration Chunks => chunks;
        public StopSequences Stops => stops;
        public System.Text.StringBuilder Text { get; } = new();
        /// <summary>Each token's log-probabilities, where asked for; the stream has sent the first Sent of them.</summary>
        public List<ChunkLogprobs> Logprobs { get; } = [];
        public int Sent { get; set; }
        public int Tokens { get; set; }
        public string Finish { get; set; } = "stop";
    }

    public async Task RunAsync()
    {
        var cancellation = context.RequestAborted;
        int[] prompt = await Grain(() => scheduler.Tokenize(request.Prompt, cancellation));
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancellation);   // one choice failing stops the others
        var choices = Enumerable.Range(0, request.Choices).Select(i => new Choice(i,
            new ResumableGeneration(scheduler, Generation(prompt, i), ResumePatience, failed.Token), new StopSequences(request.Stop))).ToArray();
        try
        {
            bool[] any = await FirstFailure(choices.Select(c => Grain(c.Chunks.MoveNextAsync)).ToArray(), failed);   // argument errors surface before any output
            if (request.Stream) StartEvents();
            await FirstFailure(choices.Select((c, i) => Generate(c, any[i])).ToArray(), failed);
        }
        finally
        {
            foreach (var choice in choices) await choice.Chunks.DisposeAsync();
        }
        int completionTokens = choices.Sum(c => c.Tokens);
        var usage = new { prompt_tokens = prompt.Length, completion_tokens = completionTokens, total_tokens = prompt.Length + completionTokens };
        if (!request.Stream)
        {
            await context.Response.WriteAsJsonAsync(Response(choices, usage), cancellation);
            return;
        }
        if (request.IncludeUsage) await Send(Envelope(Array.Empty<object>(), usage));
        await context.Response.Body.WriteAsync("data: [DONE]\n\n"u8.ToArray(), cancellation);
    }

    /// <summary>
    /// Every task's result; when one fails, the others are cancelled and that failure (not a sibling's cancellation) is
    /// what is thrown.
    /// </summary>
    private static async Task<T[]> FirstFailure<T>(Task<T>[] tasks, CancellationTokenSource others)
    {
        await FirstFailure(tasks.Cast<Task>().ToArray(), others);
        return [.. tasks.Select(t => t.Result)];
    }

    private static async Task FirstFailure(Task[] tasks, CancellationTokenSource others)
    {
        var pending = tasks.ToList();
        while (pending.Count > 0)
        {
            var done = await Task.WhenAny(pending);
            pending.Remove(done);
            if (done.IsFaulted || done.IsCanceled)
            {
                others.Cancel();
                try { await Task.WhenAll(pending); } catch (Exception) { }   // the siblings end on the cancellation
                await done;   // throws the failure itself
            }
        }
    }

    /// <summary>Choice <paramref name="index"/>'s request: the same prompt, its own seed.</summary>
    private GenerationRequest Generation(int[] prompt, int index) => new()
    {
        PromptTokens = prompt, MaxTokens = request.MaxTokens, Temperature = request.Temperature,
        TopP = request.TopP, TopK = request.TopK, Seed = unchecked(request.Seed + (ulong)index) is var seed && seed != 0 ? seed : 1,
        TopLogprobs = request.TopLogprobs, PresencePenalty = request.PresencePenalty, FrequencyPenalty = request.FrequencyPenalty,
        LogitBias = request.LogitBias,
    };

    /// <summary>Reads one choice's generation to its end or its stop string, sending its chunks when streaming.</summary>
    private async Task Generate(Choice choice, bool any)
    {
        for (; any; any = await Grain(choice.Chunks.MoveNextAsync))
        {
            choice.Tokens++;
            if (choice.Chunks.Current.Logprobs is { } logprobs) choice.Logprobs.Add(logprobs);
            await Emit(choice, choice.Stops.Add(choice.Chunks.Current.Text));
            if (choice.Stops.Stopped)
            {
                await choice.Chunks.DisposeAsync();   // ends the generation on the scheduler now
                break;
            }
        }
        if (!choice.Stops.Stopped) await Emit(choice, choice.Stops.Flush());
        choice.Finish = !choice.Stops.Stopped && choice.Tokens >= request.MaxTokens ? "length" : "stop";
        if (request.Stream) await Send(Chunk(choice.Index, chat ? null : "", Unsent(choice), choice.Finish));
    }

    private async Task Emit(Choice choice, string piece)
    {
        int offset = choice.Text.Length;
        choice.Text.Append(piece);
        if (request.Stream && piece.Length > 0) await Send(Chunk(choice.Index, piece, Unsent(choice), null, offset));
    }

    /// <summary>The log-probabilities not yet streamed (a token whose text a stop string held back goes with the next chunk).</summary>
    private ChunkLogprobs[] Unsent(Choice choice)
    {
        var unsent = choice.Logprobs[choice.Sent..].ToArray();
        choice.Sent = choice.Logprobs.Count;
        return unsent;
    }

    /// <summary>
    /// The OpenAI shape of some tokens' log-probabilities, or null when the request asked for none: chat's
    /// {content: [{token, logprob, bytes, top_logprobs}]}, completions' {tokens, token_logprobs, top_logprobs, text_offset}.
    /// </summary>
    private object? LogprobsJson(IReadOnlyList<ChunkLogprobs> tokens, int textOffset)
    {
        if (request.TopLogprobs < 0) return null;
        static int[] Bytes(TokenLogprob t) => [.. t.Bytes.Select(b => (int)b)];
        if (chat)
            return new
            {
                content = tokens.Select(t => new
                {
                    token = t.Chosen.Token, logprob = t.Chosen.Logprob, bytes = Bytes(t.Chosen),
                    top_logprobs = t.Top.Select(a => new { token = a.Token, logprob = a.Logprob, bytes = Bytes(a) }),
                }),
            };
        var offsets = new int[tokens.Count];
        for (int i = 0; i < tokens.Count; i++) offsets[i] = i == 0 ? textOffset : offsets[i - 1] + tokens[i - 1].Chosen.Token.Length;
        return new
        {
            tokens = tokens.Select(t => t.Chosen.Token),
            token_logprobs = tokens.Select(t => t.Chosen.Logprob),
            top_logprobs = tokens.Select(t => t.Top.GroupBy(a => a.Token).ToDictionary(g => g.Key, g => g.First().Logprob)),
            text_offset = offsets,
        };
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
        await _writing.WaitAsync(context.RequestAborted);
        try
        {
            await context.Response.Body.WriteAsync(OpenAiEndpoints.SseEvent(payload), context.RequestAborted);
            await context.Response.Body.FlushAsync(context.RequestAborted);
        }
        finally { _writing.Release(); }
    }

    private object Chunk(int index, string? text, ChunkLogprobs[] logprobs, string? finish, int textOffset = 0) => Envelope(chat
        ? [new { index, delta = text is null ? (object)new { } : new { role = "assistant", content = text }, logprobs = LogprobsJson(logprobs, textOffset), finish_reason = finish }]
        : [new { text, index, logprobs = LogprobsJson(logprobs, textOffset), finish_reason = finish }], usage: null);

    private object Response(Choice[] choices, object usage) => Envelope(chat
        ? [.. choices.Select(c => (object)new { index = c.Index, message = new { role = "assistant", content = c.Text.ToString() }, logprobs = LogprobsJson(c.Logprobs, 0), finish_reason = c.Finish })]
        : [.. choices.Select(c => (object)new { text = c.Text.ToString(), index = c.Index, logprobs = LogprobsJson(c.Logprobs, 0), finish_reason = c.Finish })], usage);

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
