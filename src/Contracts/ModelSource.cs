// Where a shard gets its weights: a model file (plus tokenizer for llama2.c checkpoints) or a seeded random preset,
// optionally with a LoRA adapter (a PEFT directory) merged into them at load; and how it keeps them and its KV cache
// in memory (quantized weights, a float16 or int8 KV cache).
namespace Cluster.Contracts;

[GenerateSerializer, Immutable]
public sealed record ModelSource
{
    /// <summary>A model file or directory, as ModelLoader opens it; null for a random preset.</summary>
    [Id(0)] public string? Path { get; init; }
    [Id(1)] public string? TokenizerPath { get; init; }
    /// <summary>A RandomModel preset name (tiny, stories15M, ...), used when <see cref="Path"/> is null.</summary>
    [Id(2)] public string? Preset { get; init; }
    [Id(3)] public int Seed { get; init; } = 1;
    /// <summary>A PEFT LoRA adapter directory merged into the weights at load; null for none.</summary>
    [Id(4)] public string? AdapterPath { get; init; }
    /// <summary>
    /// How the served weight matrices are kept in memory and multiplied: "f32", "q8_0" or "q4_0"; null = as the file keeps
    /// them (a GGUF file whose layer matrices are all Q8_0, or all Q4_0, is served in that format, one of other quantized
    /// types such as K-quants in q8_0; anything else in f32).
    /// </summary>
    [Id(5)] public string? Weights { get; init; }
    /// <summary>How each shard's KV cache keeps keys and values: "f32" (null), "f16" or "int8" (a scale per token and KV head).</summary>
    [Id(6)] public string? KvCache { get; init; }

    public static ModelSource File(string path, string? tokenizerPath = null) => new() { Path = path, TokenizerPath = tokenizerPath };
    public static ModelSource Random(string preset, int seed = 1) => new() { Preset = preset, Seed = seed };

    public override string ToString() => (Path ?? $"random:{Preset}:{Seed}") + (AdapterPath is null ? "" : $" + LoRA {AdapterPath}") + (Weights is null ? "" : $" as {Weights}") + (KvCache is null ? "" : $", KV {KvCache}");
}

/// <summary>
/// What a scheduler serves: the weights, the parallel layout ("tp=2,pp=2,dp=1"; empty = one shard) and, optionally,
/// the silos the shards are pinned to, assigned round-robin in (replica, stage, rank) order.
/// </summary>
[GenerateSerializer, Immutable]
public sealed record ModelServing(
    [property: Id(0)] ModelSource Source,
    [property: Id(1)] string Layout = "",
    [property: Id(2)] string[]? Silos = null)
{
    public bool Equals(ModelServing? other) =>
        other is not null && Source == other.Source && Layout == other.Layout && (Silos ?? []).SequenceEqual(other.Silos ?? []);

    public override int GetHashCode() => HashCode.Combine(Source, Layout, Silos?.Length ?? 0);
}
