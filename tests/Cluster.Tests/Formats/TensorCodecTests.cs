// The GGML block decoders against hand-computed blocks, and encode→decode error bounds of our quantizers.
using System.Buffers.Binary;
using Cluster.Model;
using Cluster.Model.Formats;

namespace Cluster.Tests.Formats;

public class TensorCodecTests
{
    private static byte[] Half(float v)
    {
        var b = new byte[2];
        BinaryPrimitives.WriteHalfLittleEndian(b, (Half)v);
        return b;
    }

    private static float[] Decode(byte[] bytes, TensorType type, int count)
    {
        var result = new float[count];
        TensorCodec.Decode(bytes, type, result);
        return result;
    }

    /// <summary>
    /// The K-quants (the usual llama.cpp downloads): blocks ggml's quantizer made of one 512-float row, decoded here,
    /// against ggml's own dequantization of the same blocks (data/kquant-reference.txt, made by bench/kquant-reference.c).
    /// </summary>
    [Theory]
    [InlineData(TensorType.Q2_K)]
    [InlineData(TensorType.Q3_K)]
    [InlineData(TensorType.Q4_K)]
    [InlineData(TensorType.Q5_K)]
    [InlineData(TensorType.Q6_K)]
    public void K_quants_decode_as_ggml_does(TensorType type)
    {
        string line = File.ReadLines(Path.Combine(AppContext.BaseDirectory, "Formats", "data", "kquant-reference.txt"))
            .Single(l => l.StartsWith(type + " ", StringComparison.Ordinal));
        string[] parts = line.Split(' ');
        byte[] blocks = Convert.FromHexString(parts[1]);
        float[] expected = [.. Convert.FromHexString(parts[2]).Chunk(4).Select(b => BinaryPrimitives.ReadSingleBigEndian(b))];
        Assert.Equal(512, expected.Length);
        Assert.Equal(2 * TensorCodec.BlockBytes(type), blocks.Length);
        var y = Decode(blocks, type, 512);
        for (int i = 0; i < y.Length; i++)   // ggml may fuse d·q − m into one rounding: one ulp of the terms apart at most
            Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-6f * Math.Max(1, Math.Abs(expected[i])), $"element {i}: {y[i]} here, {expected[i]} in ggml");
    }

    [Fact]
    public void Q8_0_block_is_scale_times_int8()
    {
        byte[] block = [.. Half(0.5f), .. Enumerable.Range(0, 32).Select(j => (byte)(sbyte)(j - 16))];
        var y = Decode(block, TensorType.Q8_0, 32);
        for (int j = 0; j < 32; j++) Assert.Equal((j - 16) * 0.5f, y[j]);
    }

    [Fact]
    public void Q4_0_low_nibbles_are_first_half_high_nibbles_second()
    {
        byte[] block = [.. Half(2f), .. Enumerable.Range(0, 16).Select(j => (byte)(j | ((15 - j) << 4)))];
        var y = Decode(block, TensorType.Q4_0, 32);
        for (int j = 0; j < 16; j++)
        {
            Assert.Equal((j - 8) * 2f, y[j]);
            Assert.Equal((15 - j - 8) * 2f, y[j + 16]);
        }
    }

    [Fact]
    public void Q4_1_adds_the_minimum()
    {
        byte[] block = [.. Half(0.25f), .. Half(-1f), .. Enumerable.Repeat((byte)0x3A, 16)];   // low 10, high 3
        var y = Decode(block, TensorType.Q4_1, 32);
        Assert.Equal(10 * 0.25f - 1, y[0]);
        Assert.Equal(3 * 0.25f - 1, y[31]);
    }

    [Fact]
    public void Q5_0_takes_the_fifth_bit_from_qh()
    {
        // qh bit j is element j's high bit, bit j+16 element j+16's.
        byte[] block = [.. Half(1f), 0x01, 0x00, 0x01, 0x00, .. Enumerable.Repeat((byte)0x21, 16)];   // low 1, high 2
        var y = Decode(block, TensorType.Q5_0, 32);
        Assert.Equal((1 | 16) - 16, y[0]);
        Assert.Equal(1 - 16, y[1]);
        Assert.Equal((2 | 16) - 16, y[16]);
        Assert.Equal(2 - 16, y[17]);
    }

    [Fact]
    public void Q5_1_and_Q8_1_decode()
    {
        byte[] q51 = [.. Half(2f), .. Half(0.5f), 0x00, 0x00, 0x00, 0x80, .. Enumerable.Repeat((byte)0xF0, 16)];
        var y = Decode(q51, TensorType.Q5_1, 32);
        Assert.Equal(0.5f, y[0]);
        Assert.Equal((15 | 16) * 2f + 0.5f, y[31]);   // bit 31 set
        Assert.Equal(15 * 2f + 0.5f, y[30]);
        byte[] q81 = [.. Half(0.125f), .. Half(99f), .. Enumerable.Range(0, 32).Select(j => (byte)(sbyte)-j)];
        Assert.Equal(-31 * 0.125f, Decode(q81, TensorType.Q8_1, 32)[31]);
    }

    [Fact]
    public void Float_types_decode()
    {
        Assert.Equal([1.5f, -2f], Decode([.. Half(1.5f), .. Half(-2f)], TensorType.F16, 2));
        Assert.Equal([1.5f], Decode([0xC0, 0x3F], TensorType.BF16, 1));   // bf16 0x3FC0 = 1.5
        Assert.Equal([3.25f], Decode(BitConverter.GetBytes(3.25f), TensorType.F32, 1));
    }

    [Fact]
    public void Byte_size_rejects_partial_blocks()
    {
        Assert.Equal(34 * 2, TensorCodec.ByteSize(TensorType.Q8_0, 64, "f", "t"));
        Assert.Equal(18, TensorCodec.ByteSize(TensorType.Q4_0, 32, "f", "t"));
        var e = Assert.Throws<ModelFormatException>(() => TensorCodec.ByteSize(TensorType.Q4_0, 33, "f", "t"));
        Assert.Equal("t", e.Tensor);
    }

    [Theory]
    [InlineData(TensorType.F32, 0f)]
    [InlineData(TensorType.F16, 1f / 1024)]
    [InlineData(TensorType.Q8_0, 1f / 127 * 0.51f + 1f / 1024)]
    [InlineData(TensorType.Q4_0, 1f / 8 * 1.01f + 1f / 1024)]
    public void Encode_then_decode_stays_within_the_quantization_step(TensorType type, float relativeError)
    {
        var random = new Random(7);
        var x = Enumerable.Range(0, 32 * 64).Select(_ => random.NextSingle() * 2 - 1).ToArray();
        var y = Decode(TensorCodec.Encode(x, type), type, x.Length);
        for (int b = 0; b < x.Length / 32; b++)
        {
            var block = x.AsSpan(b * 32, 32).ToArray();
            WeightAssert.ValuesEqual(block, y[(b * 32)..(b * 32 + 32)], relativeError, $"block {b}");
        }
    }
}
