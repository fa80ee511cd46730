// The structure of a GGUF v2/v3 file, parsed and validated but not yet interpreted as a model:
//   "GGUF", uint32 version, uint64 tensor_count, uint64 metadata_kv_count,
//   metadata: (string key, uint32 value type, value)*, tensor infos: (string name, uint32 n_dims, uint64 ne[n_dims],
//   uint32 ggml_type, uint64 offset)*, padding to general.alignment (default 32), then the tensor data.
// Strings are uint64 length + UTF-8 bytes. ne[] lists dims innermost first: an (out, in) matrix has ne = [in, out].
// Every count is checked against the bytes left before anything is allocated; tensors must lie inside the data
// region, be aligned and not overlap.
using System.Buffers.Binary;

namespace Cluster.Model.Formats;

public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>One tensor's header entry; <see cref="Offset"/> is absolute in the file.</summary>
public sealed record GgufTensorInfo(string Name, long[] Dims, TensorType Type, long Offset, long ElementCount, long ByteSize);

public sealed class GgufFile
{
    public const uint Magic = 0x46554747;   // "GGUF" little endian
    public const int DefaultAlignment = 32;
    private const int MaxDims = 4, MaxArrayNesting = 4;

    private GgufFile(string path) => Path = path;

    public string Path { get; }
    public uint Version { get; private set; }
    public long Alignment { get; private set; } = DefaultAlignment;
    public long DataOffset { get; private set; }
    /// <summary>Values are boxed scalars (byte, sbyte, ushort, short, uint, int, float, bool, ulong, long, double), strings, typed arrays, or object[] of nested arrays.</summary>
    public Dictionary<string, object> Metadata { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, GgufTensorInfo> Tensors { get; } = new(StringComparer.Ordinal);

    public static GgufFile Parse(MappedFile file)
    {
        var gguf = new GgufFile(file.Path);
        var reader = new SpanReader(file.Head, file.Path);
        if (reader.UInt32("magic") != Magic) throw new ModelFormatException(file.Path, "not a GGUF file (bad magic)");
        gguf.Version = reader.UInt32("version");
        if (gguf.Version is not (2 or 3))
            throw new ModelFormatException(file.Path, $"GGUF version {gguf.Version} is not supported (2 and 3 are)");
        ulong tensorCount = reader.UInt64("tensor_count"), kvCount = reader.UInt64("metadata_kv_count");
        // Smallest encodings: a key/value is 8+1+4+1 bytes, a tensor info 8+1+4+8+4+8.
        if (kvCount > (ulong)reader.Remaining / 14) throw new ModelFormatException(file.Path, $"metadata count {kvCount} exceeds what the file can hold");
        if (tensorCount > (ulong)reader.Remaining / 33) throw new ModelFormatException(file.Path, $"tensor count {tensorCount} exceeds what the file can hold");

        for (ulong i = 0; i < kvCount; i++)
        {
            string key = gguf.ReadString(ref reader, "metadata key");
            var type = (GgufValueType)reader.UInt32($"type of {key}");
            if (!gguf.Metadata.TryAdd(key, gguf.ReadValue(ref reader, type, key, 0)))
                throw new ModelFormatException(file.Path, $"metadata key '{key}' appears twice");
        }
        if (gguf.Metadata.ContainsKey("general.alignment"))
        {
            long alignment = gguf.Int("general.alignment");
            if (alignment <= 0 || alignment > 1 << 20 || (alignment & (alignment - 1)) != 0)
                throw new ModelFormatException(file.Path, $"general.alignment {alignment} is not a power of two up to 1 MiB");
            gguf.Alignment = alignment;
        }

        var infos = new List<(string Name, long[] Dims, TensorType Type, ulong Offset)>();
        for (ulong i = 0; i < tensorCount; i++)
        {
            string name = gguf.ReadString(ref reader, "tensor name");
            uint dimCount = reader.UInt32("n_dims");
            if (dimCount is 0 or > MaxDims) throw new ModelFormatException(file.Path, $"{dimCount} dimensions (1..{MaxDims} allowed)", name);
            var dims = new long[dimCount];
            for (int d = 0; d < dimCount; d++)
            {
                ulong n = reader.UInt64("dimension");
                if (n == 0 || n > int.MaxValue) throw new ModelFormatException(file.Path, $"dimension {d} is {n}", name);
                dims[d] = (long)n;
            }
            uint rawType = reader.UInt32("tensor type");
            if (!TensorCodec.IsKnown(rawType)) throw new ModelFormatException(file.Path, $"unsupported ggml type {rawType}", name);
            infos.Add((name, dims, (TensorType)rawType, reader.UInt64("tensor offset")));
        }
        gguf.DataOffset = AlignUp(reader.Position, gguf.Alignment);
        if (gguf.DataOffset > file.Length) throw new ModelFormatException(file.Path, $"data section starts at {gguf.DataOffset}, past the end of the file ({file.Length} bytes)");

        long dataLength = file.Length - gguf.DataOffset;
        foreach (var (name, dims, type, offset) in infos)
        {
            long count = 1;
            foreach (long d in dims)
            {
                if (count > System.Array.MaxLength / d) throw new ModelFormatException(file.Path, $"shape [{string.Join(", ", dims)}] is too large", name);
                count *= d;
            }
            if (dims[0] % TensorCodec.BlockSize(type) != 0)
                throw new ModelFormatException(file.Path, $"row length {dims[0]} is not a multiple of the {type} block size", name);
            long bytes = TensorCodec.ByteSize(type, count, file.Path, name);
            if (offset % (ulong)gguf.Alignment != 0) throw new ModelFormatException(file.Path, $"offset {offset} is not aligned to {gguf.Alignment}", name);
            if (offset > (ulong)dataLength || bytes > dataLength - (long)offset)
                throw new ModelFormatException(file.Path, $"data [{offset}, {offset}+{bytes}) lies outside the data section ({dataLength} bytes)", name);
            if (!gguf.Tensors.TryAdd(name, new GgufTensorInfo(name, dims, type, gguf.DataOffset + (long)offset, count, bytes)))
                throw new ModelFormatException(file.Path, "tensor name appears twice", name);
        }
        GgufTensorInfo? previous = null;
        foreach (var t in gguf.Tensors.Values.OrderBy(t => t.Offset))
        {
            if (previous is not null && previous.Offset + previous.ByteSize > t.Offset)
                throw new ModelFormatException(file.Path, $"data overlaps tensor '{previous.Name}'", t.Name);
            previous = t;
        }
        return gguf;
    }

    public static long AlignUp(long offset, long alignment) => (offset + alignment - 1) / alignment * alignment;

    private string ReadString(ref SpanReader reader, string what)
    {
        ulong length = reader.UInt64($"length of {what}");
        if (length > (ulong)reader.Remaining) throw new ModelFormatException(Path, $"{what}: string length {length} runs past the end of the file");
        return System.Text.Encoding.UTF8.GetString(reader.Bytes((long)length, what));
    }

    private object ReadValue(ref SpanReader reader, GgufValueType type, string key, int depth) => type switch
    {
        GgufValueType.UInt8 => reader.UInt8(key),
        GgufValueType.Int8 => (sbyte)reader.UInt8(key),
        GgufValueType.UInt16 => BinaryPrimitives.ReadUInt16LittleEndian(reader.Bytes(2, key)),
        GgufValueType.Int16 => BinaryPrimitives.ReadInt16LittleEndian(reader.Bytes(2, key)),
        GgufValueType.UInt32 => reader.UInt32(key),
        GgufValueType.Int32 => reader.Int32(key),
        GgufValueType.Float32 => reader.Single(key),
        GgufValueType.Bool => reader.UInt8(key) != 0,
        GgufValueType.String => ReadString(ref reader, key),
        GgufValueType.UInt64 => reader.UInt64(key),
        GgufValueType.Int64 => reader.Int64(key),
        GgufValueType.Float64 => reader.Double(key),
        GgufValueType.Array => ReadArray(ref reader, key, depth),
        _ => throw new ModelFormatException(Path, $"metadata '{key}' has unknown value type {(uint)type}"),
    };

    private object ReadArray(ref SpanReader reader, string key, int depth)
    {
        if (depth >= MaxArrayNesting) throw new ModelFormatException(Path, $"metadata '{key}' nests arrays deeper than {MaxArrayNesting}");
        var type = (GgufValueType)reader.UInt32($"element type of {key}");
        ulong count = reader.UInt64($"length of {key}");
        int minBytes = type switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
            GgufValueType.Array => 12,
            _ => throw new ModelFormatException(Path, $"metadata '{key}' has unknown element type {(uint)type}"),
        };
        if (count > (ulong)reader.Remaining / (ulong)minBytes)
            throw new ModelFormatException(Path, $"metadata '{key}': array of {count} elements exceeds what the file can hold");
        int n = (int)count;
        switch (type)
        {
            case GgufValueType.String:
                var strings = new string[n];
                for (int i = 0; i < n; i++) strings[i] = ReadString(ref reader, key);
                return strings;
            case GgufValueType.Float32:
                return reader.Floats(n, key);
            case GgufValueType.Int32:
                var ints = new int[n];
                for (int i = 0; i < n; i++) ints[i] = reader.Int32(key);
                return ints;
            default:
                var values = new object[n];
                for (int i = 0; i < n; i++) values[i] = ReadValue(ref reader, type, key, depth + 1);
                return values;
        }
    }

    public bool Has(string key) => Metadata.ContainsKey(key);

    public string String(string key) =>
        Metadata.TryGetValue(key, out var v) ? v as string ?? throw Wrong(key, "a string") : throw Missing(key);

    /// <summary>An integer of any GGUF integer type, checked to fit in a long.</summary>
    public long Int(string key) => Metadata.TryGetValue(key, out var v) ? AsInt(v) ?? throw Wrong(key, "an integer") : throw Missing(key);

    /// <summary>An integer that must lie in [min, max].</summary>
    public int Int(string key, int min, int max, long? fallback = null)
    {
        long v = fallback is { } f && !Has(key) ? f : Int(key);
        if (v < min || v > max) throw new ModelFormatException(Path, $"metadata '{key}' = {v} is outside [{min}, {max}]");
        return (int)v;
    }

    public float Float(string key, float fallback) => !Metadata.TryGetValue(key, out var v) ? fallback : v switch
    {
        float f => f,
        double d => (float)d,
        _ => AsInt(v) ?? throw Wrong(key, "a number"),
    };

    public T[] Array<T>(string key) =>
        Metadata.TryGetValue(key, out var v) ? v as T[] ?? throw Wrong(key, $"an array of {typeof(T).Name}") : throw Missing(key);

    private static long? AsInt(object v) => v switch
    {
        byte b => b, sbyte b => b, ushort s => s, short s => s, uint u => u, int i => i, long l => l,
        ulong u when u <= long.MaxValue => (long)u,
        _ => null,
    };

    private ModelFormatException Missing(string key) => new(Path, $"metadata '{key}' is missing");
    private ModelFormatException Wrong(string key, string what) => new(Path, $"metadata '{key}' is not {what}");
}
