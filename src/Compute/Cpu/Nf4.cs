// 4-bit NormalFloat (NF4, Dettmers et al., QLoRA): each block of 64 weights is scaled by its largest magnitude and
// every value stored as the index (4 bits) of the nearest of 16 levels placed at the quantiles of a normal
// distribution; two indices per byte, one fp32 scale per block. QLoRA keeps a frozen base this way (~4.5 bits a
// weight) and dequantizes a layer to fp32 just before its products need it.
namespace Cluster.Compute.Cpu;

public sealed class Nf4Tensor
{
    public const int BlockSize = 64;

    /// <summary>The 16 NF4 levels (QLoRA's table), ascending.</summary>
    public static readonly float[] Levels =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
        -0.09105003625154495f, 0f, 0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    private readonly byte[] _indices;   // two per byte, low nibble first
    private readonly float[] _scales;   // one per block

    private Nf4Tensor(int length, byte[] indices, float[] scales) => (Length, _indices, _scales) = (length, indices, scales);

    public int Length { get; }
    /// <summary>Bytes held: the indices and the scales.</summary>
    public long Bytes => _indices.Length + _scales.Length * sizeof(float);

    public static Nf4Tensor Quantize(ReadOnlySpan<float> values)
    {
        var indices = new byte[(values.Length + 1) / 2];
        var scales = new float[(values.Length + BlockSize - 1) / BlockSize];
        for (int b = 0; b < scales.Length; b++)
        {
            var block = values.Slice(b * BlockSize, Math.Min(BlockSize, values.Length - b * BlockSize));
            float scale = System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(block);
            scales[b] = Math.Abs(scale);
            float inverse = scales[b] == 0 ? 0 : 1 / scales[b];
            for (int i = 0; i < block.Length; i++)
            {
                int index = Nearest(block[i] * inverse), at = b * BlockSize + i;
                indices[at / 2] |= (byte)(at % 2 == 0 ? index : index << 4);
            }
        }
        return new Nf4Tensor(values.Length, indices, scales);
    }

    /// <summary>The fp32 values this tensor stands for.</summary>
    public float[] Dequantize()
    {
        var values = new float[Length];
        for (int i = 0; i < values.Length; i++)
        {
            int index = i % 2 == 0 ? _indices[i / 2] & 0xF : _indices[i / 2] >> 4;
            values[i] = Levels[index] * _scales[i / BlockSize];
        }
        return values;
    }

    /// <summary>The index of the level nearest to <paramref name="x"/> (in [-1, 1]); ties go to the lower level.</summary>
    private static int Nearest(float x)
    {
        int low = 0, high = Levels.Length - 1;
        while (high - low > 1)
        {
            int middle = (low + high) / 2;
            if (Levels[middle] <= x) low = middle; else high = middle;
        }
        return x - Levels[low] <= Levels[high] - x ? low : high;
    }
}
