// Reading request fields from a JSON body: each wrong type or out-of-range value becomes a 400 in the OpenAI error
// shape naming the parameter; JSON null counts as absent. A body must be valid UTF-8 with no duplicate names, no
// deeper than 64 levels, and its strings valid UTF-16 (a lone surrogate such as "\udc00" is a 400).
using System.Text.Json;

namespace Cluster.Gateway;

internal static class JsonFields
{
    private static readonly JsonDocumentOptions Options = new() { MaxDepth = 64, AllowDuplicateProperties = false };

    /// <summary>The body as a JSON object, or a 400.</summary>
    public static JsonDocument ParseObject(ReadOnlyMemory<byte> body)
    {
        if (!System.Text.Unicode.Utf8.IsValid(body.Span)) throw new ApiError(400, "The request body is not valid UTF-8.");
        JsonDocument document;
        try { document = JsonDocument.Parse(body, Options); }
        catch (JsonException e) { throw new ApiError(400, $"The request body is not valid JSON: {e.Message}"); }
        if (document.RootElement.ValueKind == JsonValueKind.Object) return document;
        document.Dispose();
        throw new ApiError(400, "The request body must be a JSON object.");
    }

    public static JsonElement? Get(JsonElement obj, string name) =>
        obj.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

    public static ApiError Missing(string param) => new(400, $"Missing required parameter: '{param}'.", param);

    public static string String(JsonElement e, string param)
    {
        if (e.ValueKind != JsonValueKind.String) throw new ApiError(400, $"'{param}' must be a string.", param);
        try { return e.GetString()!; }
        catch (InvalidOperationException) { throw new ApiError(400, $"'{param}' is not valid Unicode (a lone surrogate escape?).", param); }
    }

    public static bool Bool(JsonElement e, string param) => e.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw new ApiError(400, $"'{param}' must be a boolean.", param),
    };

    public static int Integer(JsonElement e, string param, int min, int max) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int v) && v >= min && v <= max ? v
            : throw new ApiError(400, max == int.MaxValue ? $"'{param}' must be an integer >= {min}." : $"'{param}' must be an integer in [{min}, {max}].", param);

    public static float Number(JsonElement e, string param, double min, double max) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out double v) && v >= min && v <= max ? (float)v
            : throw new ApiError(400, $"'{param}' must be a number in [{min}, {max}].", param);
}
