// Tensor element types as GGUF and safetensors store them (enum values are ggml_type ids), their GGML block
// geometry, decoders to float32 for every listed type and encoders for the types our writers emit.
// Quantized blocks follow ggml-quants.c: 32 elements per block, an f16 scale d (and f16 min m for the _1 types);
// 4-bit types keep elements 0..15 in the low nibbles and 16..31 in the high nibbles.
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Cluster.Compute;

namespace Cluster.Model.Formats;

public enum TensorType
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, BF16 = 30,
}

public static class TensorCodec
{
    public const int QuantBlock = 32;

    public static bool IsKnown(uint ggmlType) => ggmlType <= int.MaxValue && Enum.IsDefined((TensorType)(int)ggmlType);

    /// <summary>Elements per block: 1 for the float types, 32 for the quantized ones.</summary>
    public static int BlockSize(TensorType type) => type is TensorType.F32 or TensorType.F16 or TensorType.BF16 ? 1 : QuantBlock;

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
