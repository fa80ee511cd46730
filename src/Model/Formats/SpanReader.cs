// Bounds-checked little-endian reads over a file's bytes: every read names what it was reading, so a
// truncated file fails with a ModelFormatException that says where, never an IndexOutOfRange.
using System.Buffers.Binary;

namespace Cluster.Model;

public ref struct SpanReader
{
    private readonly ReadOnlySpan<byte> _data;
    private readonly string _source;

    public SpanReader(ReadOnlySpan<byte> data, string source)
    {
        _data = data;
        _source = source;
        Position = 0;
    }

    public long Position { get; private set; }
    public long Remaining => _data.Length - Position;

    public ReadOnlySpan<byte> Bytes(long count, string what)
    {
        if (count < 0 || count > Remaining)
            throw new ModelFormatException(_source, $"truncated: needs {count} bytes for {what} at offset {Position}, {Remaining} left");
        var span = _data.Slice((int)Position, (int)count);
        Position += count;
        return span;
    }

    public void Seek(long offset, string what)
    {
        if (offset < 0 || offset > _data.Length)
            throw new ModelFormatException(_source, $"offset {offset} of {what} is outside the file ({_data.Length} bytes)");
        Position = offset;
    }

    public byte UInt8(string what) => Bytes(1, what)[0];
    public int Int32(string what) => BinaryPrimitives.ReadInt32LittleEndian(Bytes(4, what));
    public uint UInt32(string what) => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4, what));
    public long Int64(string what) => BinaryPrimitives.ReadInt64LittleEndian(Bytes(8, what));
    public ulong UInt64(string what) => BinaryPrimitives.ReadUInt64LittleEndian(Bytes(8, what));
    public float Single(string what) => BinaryPrimitives.ReadSingleLittleEndian(Bytes(4, what));
    public double Double(string what) => BinaryPrimitives.ReadDoubleLittleEndian(Bytes(8, what));

    /// <summary>Reads count floats into a new array (the file's floats are little endian, as is every machine we run on).</summary>
    public float[] Floats(long count, string what)
    {
        if (count < 0 || count > Remaining / 4)
            throw new ModelFormatException(_source, $"truncated: needs {count} floats for {what} at offset {Position}, {Remaining} bytes left", what);
        var result = new float[count];
        Bytes(count * 4, what).CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(result.AsSpan()));
        return result;
    }
}
