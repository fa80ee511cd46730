// How serving weight matrices are kept on a device (float32, or ggml's Q8_0 / Q4_0 blocks) and ggml's reference block
// quantizers, which the GGUF writer and the devices' quantized matrices share.
namespace Cluster.Compute;

/// <summary>ggml's reference block quantizers (ggml-quants.c), shared by the GGUF writer and the quantized matrices.</summary>
public static class BlockQuantizer
{
    public const int Block = 32;

    /// <summary>Q8_0: d = max|x| / 127 (stored as float16), q = round(x / d).</summary>
    public static float QuantizeQ8_0(ReadOnlySpan<float> x, Span<sbyte> q)
    {
        float amax = 0;
        for (int j = 0; j < Block; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float d = amax / 127, id = d != 0 ? 1 / d : 0;
        for (int j = 0; j < Block; j++) q[j] = (sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
        return (float)(Half)d;
    }

    /// <summary>
    /// Q4_0: d = (the value of largest magnitude) / −8 (stored as float16), q = min(15, ⌊x / d + 8.5⌋) ∈ [0, 15]; element
    /// j of the block in the low nibble of byte j, element j + 16 in its high nibble.
    /// </summary>
    public static float QuantizeQ4_0(ReadOnlySpan<float> x, Span<byte> nibbles)
    {
        float amax = 0, max = 0;   // the value of largest magnitude, sign kept
        for (int j = 0; j < Block; j++)
            if (MathF.Abs(x[j]) > amax) { amax = MathF.Abs(x[j]); max = x[j]; }
        float d = max / -8, id = d != 0 ? 1 / d : 0;
        for (int j = 0; j < Block / 2; j++)
        {
            int q0 = Math.Min(15, (int)(x[j] * id + 8.5f)), q1 = Math.Min(15, (int)(x[j + 16] * id + 8.5f));
            nibbles[j] = (byte)(q0 | (q1 << 4));
        }
        return (float)(Half)d;
    }
}

/// <summary>How a serving weight matrix is kept on its device.</summary>
public enum WeightFormat { F32, Q8_0, Q4_0 }

public static class WeightFormats
{
    /// <summary>Parses "f32", "q8_0" or "q4_0" (any case); a clear error otherwise.</summary>
    public static WeightFormat Parse(string name) => name.ToLowerInvariant() switch
    {
        "f32" => WeightFormat.F32,
        "q8_0" => WeightFormat.Q8_0,
        "q4_0" => WeightFormat.Q4_0,
        _ => throw new ArgumentException($"unknown weight format '{name}': use f32, q8_0 or q4_0"),
    };

    public static string Name(this WeightFormat format) => format.ToString().ToLowerInvariant();

    /// <summary>
    /// The format a (rows, cols) matrix is kept in when <paramref name="wanted"/> is asked for: a block format needs whole
    /// blocks of 32 along each row, so a matrix whose rows are not (tiny's 172-wide down projection, a tensor-parallel
    /// cut between blocks) stays float32, as llama.cpp's quantizer leaves such tensors in a wider type.
    /// </summary>
    public static WeightFormat For(WeightFormat wanted, int cols) => cols % BlockQuantizer.Block == 0 ? wanted : WeightFormat.F32;
}
