// Generation requests and the streamed chunks the scheduler answers with.
namespace Cluster.Contracts;

[GenerateSerializer, Immutable]
public sealed record GenerationRequest
{
    /// <summary>Prompt text (BOS is prepended); ignored when <see cref="PromptTokens"/> is set.</summary>
    [Id(0)] public string Prompt { get; init; } = "";
    /// <summary>Prompt token ids used as they are (include BOS yourself).</summary>
    [Id(1)] public int[]? PromptTokens { get; init; }
    [Id(2)] public int MaxTokens { get; init; } = 64;
    /// <summary>0 samples greedily.</summary>
    [Id(3)] public float Temperature { get; init; } = 1f;
    [Id(4)] public float TopP { get; init; } = 0.9f;
    [Id(5)] public int TopK { get; init; }
    [Id(6)] public ulong Seed { get; init; } = 1;
    /// <summary>Ends the generation when BOS or EOS is sampled (llama2.c run.c behaviour).</summary>
    [Id(7)] public bool StopAtEos { get; init; } = true;
    /// <summary>
    /// Tokens this generation already produced and delivered before its scheduler was lost: they count towards
    /// MaxTokens, the sampler moves past them, and generation carries on after them exactly as it would have.
    /// </summary>
    [Id(8)] public int[]? Resume { get; init; }
    /// <summary>The caller's id for this stream (kept when it resumes): the scheduler answers StreamProgress for it.</summary>
    [Id(9)] public Guid Stream { get; init; }
    /// <summary>-1: no log-probabilities; 0 to 20: each chunk carries its token's and that many alternatives' (ChunkLogprobs).</summary>
    [Id(10)] public int TopLogprobs { get; init; } = -1;
    /// <summary>OpenAI's penalties (-2 to 2): each logit is lowered by presence·[the token was generated] + frequency·(times it was).</summary>
    [Id(11)] public float PresencePenalty { get; init; }
    [Id(12)] public float FrequencyPenalty { get; init; }
    /// <summary>OpenAI's logit_bias: at most 300 tokens, each logit raised by its value (-100 to 100) before sampling.</summary>
    [Id(13)] public LogitBias? LogitBias { get; init; }
}

/// <summary>One generated token and the text it completes (partial UTF-8 is held back until whole); its log-probabilities when asked for.</summary>
[GenerateSerializer, Immutable]
public sealed record GeneratedChunk([property: Id(0)] int TokenId, [property: Id(1)] string Text, [property: Id(2)] ChunkLogprobs? Logprobs = null);

/// <summary>A token by its own bytes (its piece alone, as UTF-8; a partial character's bytes shown replaced in Token) and its log-probability.</summary>
[GenerateSerializer, Immutable]
public sealed record TokenLogprob([property: Id(0)] string Token, [property: Id(1)] byte[] Bytes, [property: Id(2)] float Logprob);

/// <summary>The generated token's log-probability under the model's distribution and the most likely tokens', most likely first.</summary>
[GenerateSerializer, Immutable]
public sealed record ChunkLogprobs([property: Id(0)] TokenLogprob Chosen, [property: Id(1)] TokenLogprob[] Top);

[GenerateSerializer, Immutable]
public sealed record SchedulerStatus([property: Id(0)] string Silo, [property: Id(1)] string[] Shards, [property: Id(2)] int Running, [property: Id(3)] int Waiting);
