// The structure of a .safetensors file: uint64 header length N, N bytes of JSON
//   { "name": { "dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end] }, ..., "__metadata__": {...} },
// then the data; offsets are relative to byte 8 + N. Shapes are PyTorch order (outermost first). Only F32, F16 and
// BF16 are read. Every tensor must lie inside the data section, match its dtype·shape size and not overlap another.
using System.Text.Json;

namespace Cluster.Model.Formats;

public sealed record SafetensorsTensor(string Name, TensorType Type, long[] Shape, long Offset, long ElementCount);

public static class SafetensorsFile
{
    private const long MaxHeaderBytes = 100 << 20;

    public static Dictionary<string, SafetensorsTensor> Parse(MappedFile file)
    {
        var reader = new SpanReader(file.Span(0, Math.Min(file.Length, 8), "header length"), file.Path);
        ulong headerLength = reader.UInt64("header length");
        if (headerLength == 0 || headerLength > MaxHeaderBytes || headerLength > (ulong)(file.Length - 8))
            throw new ModelFormatException(file.Path, $"header length {headerLength} is not a safetensors header in a {file.Length}-byte file");
        long dataStart = 8 + (long)headerLength, dataLength = file.Length - dataStart;
        JsonDocument json;
        try { json = JsonDocument.Parse(file.Span(8, (long)headerLength, "header").ToArray()); }
        catch (JsonException e) { throw new ModelFormatException(file.Path, "header is not valid JSON: " + e.Message, inner: e); }

        using (json)
        try
        {
            if (json.RootElement.ValueKind != JsonValueKind.Object) throw new ModelFormatException(file.Path, "header is not a JSON object");
            var tensors = new Dictionary<string, SafetensorsTensor>(StringComparer.Ordinal);
            var extents = new List<(long Begin, long End, string Name)>();
            foreach (var entry in json.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__") continue;
                var (tensor, begin, end) = ParseEntry(entry, dataStart, dataLength, file.Path);
                if (!tensors.TryAdd(entry.Name, tensor)) throw new ModelFormatException(file.Path, "tensor name appears twice", entry.Name);
                extents.Add((begin, end, entry.Name));
            }
            extents.Sort((a, b) => a.Begin.CompareTo(b.Begin));
            for (int i = 1; i < extents.Count; i++)
                if (extents[i].Begin < extents[i - 1].End)
                    throw new ModelFormatException(file.Path, $"data overlaps tensor '{extents[i - 1].Name}'", extents[i].Name);
            return tensors;
        }
        catch (InvalidOperationException e)   // a JSON string that is not valid UTF-8
        {
            throw new ModelFormatException(file.Path, "header is not valid JSON: " + e.Message, inner: e);
        }
    }

    private static (SafetensorsTensor Tensor, long Begin, long End) ParseEntry(JsonProperty entry, long dataStart, long dataLength, string path)
    {
        string name = entry.Name;
        ModelFormatException Bad(string message) => new(path, message, name);
        var v = entry.Value;
        if (v.ValueKind != JsonValueKind.Object) throw Bad("entry is not an object");
        if (!v.TryGetProperty("dtype", out var dtype) || dtype.ValueKind != JsonValueKind.String) throw Bad("missing dtype");
        var type = dtype.GetString() switch
        {
            "F32" => TensorType.F32,
            "F16" => TensorType.F16,
            "BF16" => TensorType.BF16,
            var other => throw Bad($"dtype {other} is not supported (F32, F16 and BF16 are)"),
        };
        if (!v.TryGetProperty("shape", out var shapeJson) || shapeJson.ValueKind != JsonValueKind.Array || shapeJson.GetArrayLength() > 8)
            throw Bad("missing or invalid shape");
        var shape = new long[shapeJson.GetArrayLength()];
        long count = 1;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shapeJson[i].ValueKind != JsonValueKind.Number || !shapeJson[i].TryGetInt64(out shape[i]) || shape[i] <= 0 || shape[i] > int.MaxValue)
                throw Bad($"shape dimension {i} is not a positive integer");
            if (count > Array.MaxLength / shape[i]) throw Bad("shape is too large");
            count *= shape[i];
        }
        if (!v.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2
            || offsets[0].ValueKind != JsonValueKind.Number || offsets[1].ValueKind != JsonValueKind.Number
            || !offsets[0].TryGetInt64(out long begin) || !offsets[1].TryGetInt64(out long end))
            throw Bad("missing or invalid data_offsets");
        if (begin < 0 || end < begin || end > dataLength)
            throw Bad($"data_offsets [{begin}, {end}) lie outside the data section ({dataLength} bytes)");
        long bytes = TensorCodec.ByteSize(type, count, path, name);
        if (end - begin != bytes) throw Bad($"data_offsets span {end - begin} bytes, {type} [{string.Join(", ", shape)}] needs {bytes}");
        return (new SafetensorsTensor(name, type, shape, dataStart + begin, count), begin, end);
    }
}
