// A validated /v1/completions or /v1/chat/completions request, parsed by hand from the JSON body so every bad
// input maps to a 400 in the OpenAI error shape. Fields that would change the output and are not implemented
// (response_format other than text) are a 400; other unknown fields are ignored; JSON null counts as absent.
using System.Text.Json;
using Cluster.Contracts;
using static Cluster.Gateway.JsonFields;

namespace Cluster.Gateway;

public sealed record CompletionRequest(
    string Model, string Prompt, int MaxTokens, float Temperature, float TopP, int TopK, ulong Seed, bool Stream, bool IncludeUsage,
    IReadOnlyList<string> Stop, int Choices, int TopLogprobs, float PresencePenalty, float FrequencyPenalty, LogitBias? LogitBias)
{
    public const int MaxTokensLimit = 4096;
    public const int DefaultMaxTokens = 128;
    public const int MaxStopSequences = 4, MaxStopLength = 1024;
    public const int MaxChoices = 8;

    public static CompletionRequest Parse(ReadOnlyMemory<byte> body, bool chat)
    {
        using (var document = ParseObject(body))
        {
            var root = document.RootElement;
            string model = Get(root, "model") is { } m ? String(m, "model") : throw Missing("model");
            if (model.Length == 0) throw new ApiError(400, "'model' must not be empty.", "model");
            string prompt = chat ? RenderMessages(root) : Get(root, "prompt") is { } p ? String(p, "prompt") : throw Missing("prompt");
            var maxTokens = Get(root, "max_tokens") is { } mt ? ("max_tokens", mt)
                : Get(root, "max_completion_tokens") is { } mct ? ("max_completion_tokens", mct) : default;
            var streamOptions = Get(root, "stream_options");
            RefuseWhatChangesTheOutput(root);
            return new CompletionRequest(
                model, prompt,
                MaxTokens: maxTokens.Item1 is null ? DefaultMaxTokens : Integer(maxTokens.Item2, maxTokens.Item1, 1, MaxTokensLimit),
                Temperature: Get(root, "temperature") is { } t ? Number(t, "temperature", 0, 2) : 1f,
                TopP: Get(root, "top_p") is { } tp ? Number(tp, "top_p", 0, 1) : 1f,
                TopK: Get(root, "top_k") is { } tk ? Integer(tk, "top_k", 0, int.MaxValue) : 0,
                Seed: Get(root, "seed") is { } s ? SeedValue(s) : (ulong)Random.Shared.NextInt64(),
                Stream: Get(root, "stream") is { } st && Bool(st, "stream"),
                IncludeUsage: streamOptions is { ValueKind: JsonValueKind.Object } so && Get(so, "include_usage") is { } iu && Bool(iu, "stream_options.include_usage"),
                Stop: Get(root, "stop") is { } stop ? StopStrings(stop) : [],
                Choices: Get(root, "n") is { } n ? Integer(n, "n", 1, MaxChoices) : 1,
                TopLogprobs: chat ? ChatLogprobs(root) : Get(root, "logprobs") is { } lp ? Integer(lp, "logprobs", 0, 5) : -1,
                PresencePenalty: Get(root, "presence_penalty") is { } pp ? Number(pp, "presence_penalty", -2, 2) : 0,
                FrequencyPenalty: Get(root, "frequency_penalty") is { } fp ? Number(fp, "frequency_penalty", -2, 2) : 0,
                LogitBias: Get(root, "logit_bias") is { } lb ? Bias(lb) : null);
        }
    }

    /// <summary>Chat's `logprobs` (a boolean) and `top_logprobs` (0 to 20, with logprobs only): -1 for none, else the alternatives wanted.</summary>
    private static int ChatLogprobs(JsonElement root)
    {
        bool wanted = Get(root, "logprobs") is { } logprobs && Bool(logprobs, "logprobs");
        int top = Get(root, "top_logprobs") is { } t ? Integer(t, "top_logprobs", 0, 20) : 0;
        if (top > 0 && !wanted) throw new ApiError(400, "'top_logprobs' needs 'logprobs': true.", "top_logprobs");
        return wanted ? top : -1;
    }

    /// <summary>
    /// `logit_bias`: an object of token ids (as strings) to values from -100 to 100, at most 300 of them; null when empty.
    /// The scheduler checks the ids against the model's vocabulary.
    /// </summary>
    private static LogitBias? Bias(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) throw new ApiError(400, "'logit_bias' must be an object of token ids to numbers.", "logit_bias");
        var tokens = new List<int>();
        var values = new List<float>();
        foreach (var entry in e.EnumerateObject())
        {
            if (tokens.Count == 300) throw new ApiError(400, "'logit_bias' may list at most 300 tokens.", "logit_bias");
            if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int token))
                throw new ApiError(400, $"'logit_bias' keys must be token ids, not '{entry.Name}'.", "logit_bias");
            tokens.Add(token);
            values.Add(Number(entry.Value, "logit_bias", -100, 100));
        }
        return tokens.Count == 0 ? null : new LogitBias([.. tokens], [.. values]);
    }

    /// <summary>`stop`: a string or an array of up to 4 non-empty strings of at most 1024 characters.</summary>
    private static string[] StopStrings(JsonElement e)
    {
        string[] stops = e.ValueKind == JsonValueKind.Array
            ? e.GetArrayLength() <= MaxStopSequences ? [.. e.EnumerateArray().Select(s => String(s, "stop"))]
                : throw new ApiError(400, $"'stop' may hold at most {MaxStopSequences} strings.", "stop")
            : [String(e, "stop")];
        if (stops.Any(s => s.Length is 0 or > MaxStopLength))
            throw new ApiError(400, $"Each 'stop' string must have 1 to {MaxStopLength} characters.", "stop");
        return stops;
    }

    /// <summary>
    /// Fields that would change what is generated and that this server does not implement are refused, never ignored
    /// (their neutral values pass, as clients often send them).
    /// </summary>
    private static void RefuseWhatChangesTheOutput(JsonElement root)
    {
        if (Get(root, "response_format") is { } format
            && !(format.ValueKind == JsonValueKind.Object && Get(format, "type") is { ValueKind: JsonValueKind.String } type && type.GetString() == "text"))
            throw new ApiError(400, "Only 'response_format' {\"type\": \"text\"} is supported.", "response_format");
    }

    /// <summary>
    /// Chat prompt rendering: the models served here (stories-style) have no chat template, so the prompt is the
    /// messages' text contents in order, joined by a newline; roles are checked but not rendered.
    /// </summary>
    private static string RenderMessages(JsonElement root)
    {
        if (Get(root, "messages") is not { } messages) throw Missing("messages");
        if (messages.ValueKind != JsonValueKind.Array) throw new ApiError(400, "'messages' must be an array.", "messages");
        if (messages.GetArrayLength() == 0) throw new ApiError(400, "'messages' must not be empty.", "messages");
        var texts = new List<string>();
        int i = 0;
        foreach (var message in messages.EnumerateArray())
        {
            string param = $"messages[{i++}]";
            if (message.ValueKind != JsonValueKind.Object) throw new ApiError(400, $"'{param}' must be an object.", param);
            if (Get(message, "role") is not { } role) throw Missing($"{param}.role");
            if (String(role, $"{param}.role") is not ("system" or "developer" or "user" or "assistant" or "tool"))
                throw new ApiError(400, $"'{param}.role' must be one of system, developer, user, assistant, tool.", $"{param}.role");
            texts.Add(Get(message, "content") is { } content ? Content(content, $"{param}.content") : "");
        }
        return string.Join('\n', texts);
    }

    /// <summary>A message content: a string, or an array of {"type":"text","text":...} parts (concatenated).</summary>
    private static string Content(JsonElement content, string param)
    {
        if (content.ValueKind == JsonValueKind.String) return String(content, param);
        if (content.ValueKind != JsonValueKind.Array) throw new ApiError(400, $"'{param}' must be a string or an array of text parts.", param);
        var text = new System.Text.StringBuilder();
        foreach (var part in content.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || Get(part, "type") is not { ValueKind: JsonValueKind.String } type
                || String(type, param) != "text" || Get(part, "text") is not { ValueKind: JsonValueKind.String } partText)
                throw new ApiError(400, $"'{param}' parts must be {{\"type\":\"text\",\"text\":\"...\"}}; other content types are not supported.", param);
            text.Append(String(partText, param));
        }
        return text.ToString();
    }

    private static ulong SeedValue(JsonElement e) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long v) ? unchecked((ulong)v)
            : throw new ApiError(400, "'seed' must be an integer.", "seed");
}
