// Tensor element types as GGUF and safetensors store them (enum values are ggml_type ids), their GGML block
// geometry, decoders to float32 for every listed type and encoders for the types our writers emit.
// Quantized blocks follow ggml-quants.c: 32 elements per block, an f16 scale d (and f16 min m for the _1 types);
// 4-bit types keep elements 0..15 in the low nibbles and 16..31 in the high nibbles. The K-quants (Q2_K..Q6_K, the
// types of the usual llama.cpp downloads such as Q4_K_M) pack 256 elements in a super-block of 16 or 8 sub-blocks
// whose scales (and mins) are themselves quantized against the super-block's f16 d (and dmin).
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Cluster.Compute;

namespace Cluster.Model.Formats;

public enum TensorType
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30,
}

public static class TensorCodec
{
    public const int QuantBlock = 32;
    public const int SuperBlock = 256;   // ggml's QK_K

    public static bool IsKnown(uint ggmlType) => ggmlType <= int.MaxValue && Enum.IsDefined((TensorType)(int)ggmlType);

    /// <summary>Elements per block: 1 for the float types, 256 for the K-quants, 32 for the other quantized ones.</summary>
    public static int BlockSize(TensorType type) => type switch
    {
        TensorType.F32 or TensorType.F16 or TensorType.BF16 => 1,
        TensorType.Q2_K or TensorType.Q3_K or TensorType.Q4_K or TensorType.Q5_K or TensorType.Q6_K => SuperBlock,
        _ => QuantBlock,
    };

    /// <summary>Bytes per block.</summary>
    public static int BlockBytes(TensorType type) => type switch
    {
        TensorType.F32 => 4,
        TensorType.F16 or TensorType.BF16 => 2,
        TensorType.Q4_0 => 18,   // d, qs[16]
        TensorType.Q4_1 => 20,   // d, m, qs[16]
        TensorType.Q5_0 => 22,   // d, qh[4], qs[16]
        TensorType.Q5_1 => 24,   // d, m, qh[4], qs[16]
        TensorType.Q8_0 => 34,   // d, qs[32]
        TensorType.Q8_1 => 36,   // d, s, qs[32]
        TensorType.Q2_K => 84,   // scales[16], qs[64], d, dmin
        TensorType.Q3_K => 110,  // hmask[32], qs[64], scales[12], d
        TensorType.Q4_K => 144,  // d, dmin, scales[12], qs[128]
        TensorType.Q5_K => 176,  // d, dmin, scales[12], qh[32], qs[128]
        TensorType.Q6_K => 210,  // ql[128], qh[64], scales[16], d
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown tensor type"),
    };

    /// <summary>Bytes that <paramref name="count"/> elements take; a count that is negative or not whole blocks is a format error.</summary>
    public static long ByteSize(TensorType type, long count, string file, string tensor)
    {
        int block = BlockSize(type);
        if (count < 0 || count > long.MaxValue / 8)
            throw new ModelFormatException(file, $"element count {count} out of range", tensor);
        if (count % block != 0)
            throw new ModelFormatException(file, $"{count} elements are not a whole number of {type} blocks of {block}", tensor);
        return count / block * BlockBytes(type);
    }

    /// <summary>Decodes <paramref name="source"/> (exactly the bytes of destination.Length elements) into float32.</summary>
    public static void Decode(ReadOnlySpan<byte> source, TensorType type, Span<float> destination)
    {
        int block = BlockSize(type), blockBytes = BlockBytes(type);
        if (destination.Length % block != 0 || (long)source.Length != (long)destination.Length / block * blockBytes)
            throw new ArgumentException($"{source.Length} bytes do not hold {destination.Length} {type} elements");
        switch (type)
        {
            case TensorType.F32:
                MemoryMarshal.Cast<byte, float>(source).CopyTo(destination);
                break;
            case TensorType.F16:
                var halves = MemoryMarshal.Cast<byte, Half>(source);
                for (int i = 0; i < destination.Length; i++) destination[i] = (float)halves[i];
                break;
            case TensorType.BF16:
                var bf = MemoryMarshal.Cast<byte, ushort>(source);
                for (int i = 0; i < destination.Length; i++) destination[i] = BitConverter.Int32BitsToSingle(bf[i] << 16);
                break;
            default:
                for (int b = 0; b < destination.Length / block; b++)
                    DecodeBlock(source.Slice(b * blockBytes, blockBytes), type, destination.Slice(b * block, block));
                break;
        }
    }

    private static float F16(ReadOnlySpan<byte> bytes, int at) => (float)BinaryPrimitives.ReadHalfLittleEndian(bytes[at..]);

    private static void DecodeBlock(ReadOnlySpan<byte> x, TensorType type, Span<float> y)
    {
        switch (type)
        {
            case TensorType.Q2_K: DecodeQ2_K(x, y); return;
            case TensorType.Q3_K: DecodeQ3_K(x, y); return;
            case TensorType.Q4_K: DecodeQ4_K(x, y, highBits: false); return;
            case TensorType.Q5_K: DecodeQ4_K(x, y, highBits: true); return;
            case TensorType.Q6_K: DecodeQ6_K(x, y); return;
        }
        float d = F16(x, 0);
        switch (type)
        {
            case TensorType.Q8_0:
                for (int j = 0; j < 32; j++) y[j] = (sbyte)x[2 + j] * d;
                break;
            case TensorType.Q8_1:
                for (int j = 0; j < 32; j++) y[j] = (sbyte)x[4 + j] * d;
                break;
            case TensorType.Q4_0:
                for (int j = 0; j < 16; j++)
                {
                    y[j] = ((x[2 + j] & 0x0F) - 8) * d;
                    y[j + 16] = ((x[2 + j] >> 4) - 8) * d;
                }
                break;
            case TensorType.Q4_1:
            {
                float m = F16(x, 2);
                for (int j = 0; j < 16; j++)
                {
                    y[j] = (x[4 + j] & 0x0F) * d + m;
                    y[j + 16] = (x[4 + j] >> 4) * d + m;
                }
                break;
            }
            case TensorType.Q5_0:
            {
                uint qh = BinaryPrimitives.ReadUInt32LittleEndian(x[2..]);
                for (int j = 0; j < 16; j++)
                {
                    int high0 = (int)((qh >> j) << 4) & 0x10, high1 = (int)(qh >> (j + 12)) & 0x10;
                    y[j] = (((x[6 + j] & 0x0F) | high0) - 16) * d;
                    y[j + 16] = (((x[6 + j] >> 4) | high1) - 16) * d;
                }
                break;
            }
            case TensorType.Q5_1:
            {
                float m = F16(x, 2);
                uint qh = BinaryPrimitives.ReadUInt32LittleEndian(x[4..]);
                for (int j = 0; j < 16; j++)
                {
                    int high0 = (int)((qh >> j) << 4) & 0x10, high1 = (int)(qh >> (j + 12)) & 0x10;
                    y[j] = ((x[8 + j] & 0x0F) | high0) * d + m;
                    y[j + 16] = ((x[8 + j] >> 4) | high1) * d + m;
                }
                break;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "not a quantized type");
        }
    }

    /// <summary>Sub-block j's 6-bit scale and min of a Q4_K / Q5_K super-block (ggml's get_scale_min_k4).</summary>
    private static (int Scale, int Min) ScaleMinK4(int j, ReadOnlySpan<byte> q) => j < 4
        ? (q[j] & 63, q[j + 4] & 63)
        : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));

    /// <summary>Q4_K (Q5_K with <paramref name="highBits"/>): 8 sub-blocks of 32, y = d·scale·q − dmin·min, q of 4 (5) bits.</summary>
    private static void DecodeQ4_K(ReadOnlySpan<byte> x, Span<float> y, bool highBits)
    {
        float d = F16(x, 0), dmin = F16(x, 2);
        var scales = x.Slice(4, 12);
        var qh = highBits ? x.Slice(16, 32) : default;
        var qs = x.Slice(highBits ? 48 : 16, 128);
        for (int j = 0, at = 0; j < 4; j++, at += 64)   // 64 elements: the low nibbles of 32 bytes, then their high nibbles
        {
            var (sc1, m1) = ScaleMinK4(2 * j, scales);
            var (sc2, m2) = ScaleMinK4(2 * j + 1, scales);
            float d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2;
            var q = qs.Slice(32 * j, 32);
            int lowBit = 1 << (2 * j), highBit = 2 << (2 * j);
            for (int l = 0; l < 32; l++)
            {
                int q1 = q[l] & 0xF, q2 = q[l] >> 4;
                if (highBits)
                {
                    if ((qh[l] & lowBit) != 0) q1 += 16;
                    if ((qh[l] & highBit) != 0) q2 += 16;
                }
                y[at + l] = d1 * q1 - min1;
                y[at + 32 + l] = d2 * q2 - min2;
            }
        }
    }

    /// <summary>Q6_K: 16 sub-blocks of 16 with int8 scales, y = d·scale·(q − 32), q of 6 bits (4 in ql, 2 in qh).</summary>
    private static void DecodeQ6_K(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = F16(x, 208);
        for (int half = 0; half < 2; half++)   // 128 elements each
        {
            var ql = x.Slice(64 * half, 64);
            var qh = x.Slice(128 + 32 * half, 32);
            var sc = x.Slice(192 + 8 * half, 8);
            var o = y.Slice(128 * half, 128);
            for (int l = 0; l < 32; l++)
            {
                int s = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                o[l] = d * (sbyte)sc[s] * q1;
                o[l + 32] = d * (sbyte)sc[s + 2] * q2;
                o[l + 64] = d * (sbyte)sc[s + 4] * q3;
                o[l + 96] = d * (sbyte)sc[s + 6] * q4;
            }
        }
    }

    /// <summary>Q2_K: 16 sub-blocks of 16 with 4-bit scales and mins, y = d·scale·q − dmin·min, q of 2 bits.</summary>
    private static void DecodeQ2_K(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = F16(x, 80), dmin = F16(x, 82);
        var scales = x[..16];
        int sub = 0, at = 0;
        for (int half = 0; half < 2; half++)
        {
            var q = x.Slice(16 + 32 * half, 32);
            for (int shift = 0; shift < 8; shift += 2)
                for (int part = 0; part < 2; part++, sub++, at += 16)
                {
                    float dl = d * (scales[sub] & 0xF), ml = dmin * (scales[sub] >> 4);
                    for (int l = 0; l < 16; l++) y[at + l] = dl * ((q[16 * part + l] >> shift) & 3) - ml;
                }
        }
    }

    /// <summary>Q3_K: 16 sub-blocks of 16 with 6-bit scales (biased by 32), y = d·(scale − 32)·(q − 4·(1 − high bit)), q of 2 + 1 bits.</summary>
    private static void DecodeQ3_K(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = F16(x, 108);
        var hmask = x[..32];
        var packed = x.Slice(96, 12);
        Span<int> scales = stackalloc int[16];   // the low 4 bits from bytes 0..7, the high 2 bits from bytes 8..11
        for (int i = 0; i < 16; i++)
        {
            int low = i < 8 ? packed[i] & 0xF : packed[i - 8] >> 4;
            int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
            scales[i] = (low | (high << 4)) - 32;
        }
        int sub = 0, at = 0, bit = 1;
        for (int half = 0; half < 2; half++)
        {
            var q = x.Slice(32 + 32 * half, 32);
            for (int shift = 0; shift < 8; shift += 2, bit <<= 1)
                for (int part = 0; part < 2; part++, sub++, at += 16)
                {
                    float dl = d * scales[sub];
                    for (int l = 0; l < 16; l++)
                    {
                        int i = 16 * part + l;
                        y[at + l] = dl * (((q[i] >> shift) & 3) - ((hmask[i] & bit) != 0 ? 0 : 4));
                    }
                }
        }
    }

    /// <summary>Encodes float32 values as F32, F16, Q8_0 or Q4_0 (ggml's reference quantizers), returning the bytes.</summary>
    public static byte[] Encode(ReadOnlySpan<float> source, TensorType type)
    {
        int block = BlockSize(type);
        if (source.Length % block != 0)
            throw new ArgumentException($"{source.Length} elements are not a whole number of {type} blocks of {block}");
        var bytes = new byte[(long)source.Length / block * BlockBytes(type)];
        switch (type)
        {
            case TensorType.F32:
                MemoryMarshal.AsBytes(source).CopyTo(bytes);
                break;
            case TensorType.F16:
                var halves = MemoryMarshal.Cast<byte, Half>(bytes.AsSpan());
                for (int i = 0; i < source.Length; i++) halves[i] = (Half)source[i];
                break;
            case TensorType.Q8_0:
                for (int b = 0; b < source.Length / 32; b++) EncodeQ8_0(source.Slice(b * 32, 32), bytes.AsSpan(b * 34, 34));
                break;
            case TensorType.Q4_0:
                for (int b = 0; b < source.Length / 32; b++) EncodeQ4_0(source.Slice(b * 32, 32), bytes.AsSpan(b * 18, 18));
                break;
            default:
                throw new NotSupportedException($"encoding {type} is not implemented (F32, F16, Q8_0 and Q4_0 are)");
        }
        return bytes;
    }

    private static void EncodeQ8_0(ReadOnlySpan<float> x, Span<byte> y) =>
        BinaryPrimitives.WriteHalfLittleEndian(y, (Half)BlockQuantizer.QuantizeQ8_0(x, MemoryMarshal.Cast<byte, sbyte>(y[2..])));

    private static void EncodeQ4_0(ReadOnlySpan<float> x, Span<byte> y) =>
        BinaryPrimitives.WriteHalfLittleEndian(y, (Half)BlockQuantizer.QuantizeQ4_0(x, y[2..]));
}
