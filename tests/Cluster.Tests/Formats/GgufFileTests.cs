// GgufFile on hand-built files: every metadata value type (nested arrays included), alignment, and the tensor-table
// checks (unknown type, misaligned, overlapping, outside the file) that must name the tensor.
using System.Text;
using Cluster.Model;
using Cluster.Model.Formats;

namespace Cluster.Tests.Formats;

public class GgufFileTests
{
    private sealed record TensorInfo(string Name, ulong[] Ne, uint Type, ulong Offset);

    private static byte[] Build(Action<BinaryWriter> metadata, int kvCount, TensorInfo[] tensors, int alignment, int dataBytes)
    {
        var stream = new MemoryStream();
        var w = new BinaryWriter(stream);
        w.Write(GgufFile.Magic);
        w.Write(3u);
        w.Write((ulong)tensors.Length);
        w.Write((ulong)kvCount);
        metadata(w);
        foreach (var t in tensors)
        {
            Str(w, t.Name);
            w.Write((uint)t.Ne.Length);
            foreach (var n in t.Ne) w.Write(n);
            w.Write(t.Type);
            w.Write(t.Offset);
        }
        while (stream.Length % alignment != 0) w.Write((byte)0);
        w.Write(new byte[dataBytes]);
        return stream.ToArray();
    }

    private static void Str(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void Key(BinaryWriter w, string key, GgufValueType type)
    {
        Str(w, key);
        w.Write((uint)type);
    }

    private static GgufFile Parse(byte[] bytes, TempDirectory dir)
    {
        string path = dir.File(Guid.NewGuid().ToString("N") + ".gguf");
        File.WriteAllBytes(path, bytes);
        using var file = MappedFile.Open(path);
        return GgufFile.Parse(file);
    }

    [Fact]
    public void Reads_every_value_type_and_honours_alignment()
    {
        var bytes = Build(w =>
        {
            Key(w, "u8", GgufValueType.UInt8); w.Write((byte)200);
            Key(w, "i8", GgufValueType.Int8); w.Write((sbyte)-5);
            Key(w, "u16", GgufValueType.UInt16); w.Write((ushort)60000);
            Key(w, "i16", GgufValueType.Int16); w.Write((short)-300);
            Key(w, "u32", GgufValueType.UInt32); w.Write(4000000000u);
            Key(w, "i32", GgufValueType.Int32); w.Write(-7);
            Key(w, "f32", GgufValueType.Float32); w.Write(1.5f);
            Key(w, "bool", GgufValueType.Bool); w.Write((byte)1);
            Key(w, "str", GgufValueType.String); Str(w, "héllo");
            Key(w, "u64", GgufValueType.UInt64); w.Write(1UL << 40);
            Key(w, "i64", GgufValueType.Int64); w.Write(-(1L << 40));
            Key(w, "f64", GgufValueType.Float64); w.Write(2.25);
            Key(w, "general.alignment", GgufValueType.UInt32); w.Write(64u);
            Key(w, "nested", GgufValueType.Array); w.Write((uint)GgufValueType.Array); w.Write(2UL);
            foreach (int n in new[] { 1, 2 })
            {
                w.Write((uint)GgufValueType.Int32); w.Write((ulong)n);
                for (int i = 0; i < n; i++) w.Write(10 * n + i);
            }
        }, 14, [new TensorInfo("t", [32, 2], (uint)TensorType.Q8_0, 0)], 64, 2 * 34);
        using var dir = new TempDirectory();
        var g = Parse(bytes, dir);
        Assert.Equal(200, g.Int("u8"));
        Assert.Equal(-5, g.Int("i8"));
        Assert.Equal(60000, g.Int("u16"));
        Assert.Equal(-300, g.Int("i16"));
        Assert.Equal(4000000000, g.Int("u32"));
        Assert.Equal(-7, g.Int("i32"));
        Assert.Equal(1.5f, g.Float("f32", 0));
        Assert.Equal(true, g.Metadata["bool"]);
        Assert.Equal("héllo", g.String("str"));
        Assert.Equal(1L << 40, g.Int("u64"));
        Assert.Equal(-(1L << 40), g.Int("i64"));
        Assert.Equal(2.25f, g.Float("f64", 0));
        var nested = g.Array<object>("nested");
        Assert.Equal([20, 21], (int[])nested[1]);
        Assert.Equal(64, g.Alignment);
        Assert.Equal(0, g.DataOffset % 64);
        Assert.Equal(g.DataOffset, g.Tensors["t"].Offset);
        Assert.Equal(64, g.Tensors["t"].ElementCount);
        Assert.Throws<ModelFormatException>(() => g.Int("u32", 0, 100));
        Assert.Throws<ModelFormatException>(() => g.String("u8"));
    }

    [Theory]
    [InlineData(99u, 0ul, 256, "unsupported ggml type")]
    [InlineData(0u, 16ul, 256, "not aligned")]
    [InlineData(0u, 32ul, 64, "outside the data section")]
    public void Bad_tensor_entries_name_the_tensor(uint type, ulong offset, int dataBytes, string message)
    {
        var bytes = Build(_ => { }, 0, [new TensorInfo("bad", [8, 2], type, offset)], 32, dataBytes);
        using var dir = new TempDirectory();
        var e = Assert.Throws<ModelFormatException>(() => Parse(bytes, dir));
        Assert.Equal("bad", e.Tensor);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Overlapping_tensors_are_rejected()
    {
        var bytes = Build(_ => { }, 0, [new TensorInfo("a", [16], 0, 0), new TensorInfo("b", [16], 0, 32)], 32, 128);
        using var dir = new TempDirectory();
        var e = Assert.Throws<ModelFormatException>(() => Parse(bytes, dir));
        Assert.Contains("overlaps", e.Message);
    }

    [Fact]
    public void Absurd_counts_fail_before_allocating()
    {
        var bytes = Build(w => { Key(w, "arr", GgufValueType.Array); w.Write((uint)GgufValueType.String); w.Write(ulong.MaxValue / 2); }, 1, [], 32, 0);
        using var dir = new TempDirectory();
        Assert.Contains("exceeds what the file can hold", Assert.Throws<ModelFormatException>(() => Parse(bytes, dir)).Message);
    }
}
