// How a paged KV cache keeps keys and values: float32, float16 (half the bytes) or int8 with one float scale per token
// and KV head (a little over a quarter): a longer context, or more sequences, in the same memory.
namespace Cluster.Compute;

public enum KvFormat { F32, F16, Int8 }

public static class KvFormats
{
    /// <summary>Parses "f32", "f16" or "int8" (any case); a clear error otherwise.</summary>
    public static KvFormat Parse(string name) => name.ToLowerInvariant() switch
    {
        "f32" => KvFormat.F32,
        "f16" => KvFormat.F16,
        "int8" => KvFormat.Int8,
        _ => throw new ArgumentException($"unknown KV cache format '{name}': use f32, f16 or int8"),
    };

    public static string Name(this KvFormat format) => format.ToString().ToLowerInvariant();

    /// <summary>Bytes one token's K (or V) takes in one layer: kvDim values, and for int8 a float scale per KV head.</summary>
    public static long BytesPerToken(this KvFormat format, int kvDim, int headDim) => format switch
    {
        KvFormat.F32 => 4L * kvDim,
        KvFormat.F16 => 2L * kvDim,
        _ => kvDim + 4L * (kvDim / headDim),
    };
}
