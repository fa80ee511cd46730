// Hugging Face tokenizer.json files whose model is BPE, in the two flavours that matter here:
//   SentencePiece-converted (model.byte_fallback true: Llama 1/2, Mistral, TinyLlama): loaded into our own
//     SentencePieceBpeTokenizer, "▁" read as space and each merge's result scored -(merge rank), which reproduces
//     SentencePiece's highest-score-first merging for vocabularies whose merges HF derived from those scores.
//   Byte-level (GPT-2 style): ByteLevelBpeTokenizer over Microsoft.ML.Tokenizers with the GPT-2 pre-tokenizer
//     regex. That is exact for GPT-2; Llama 3 / tiktoken-style files use a different regex and may split some
//     digit runs and contractions differently.
// Microsoft.ML.Tokenizers 2.0 has no loader for tokenizer.json itself (its LlamaTokenizer reads SentencePiece
// .model protobufs), so the JSON is parsed here. Other model types (Unigram, WordPiece) are rejected.
using System.Text;
using System.Text.Json;

namespace Cluster.Model.Tokenizers;

public static class HfTokenizerJson
{
    private const float UnmergedScore = -1e9f;

    public static ITokenizer Load(string path, int? bosId = null, int? eosId = null)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ModelFormatException(path, "cannot read tokenizer: " + e.Message, inner: e); }
        JsonDocument json;
        try { json = JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw new ModelFormatException(path, "not valid JSON: " + e.Message, inner: e); }
        using (json)
        try
        {
            var root = json.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, "no 'model' object");
            string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "?";
            if (type != "BPE") throw new ModelFormatException(path, $"unsupported tokenizer model '{type}' (BPE is supported)");

            var vocabulary = ReadVocabulary(root, model, path);
            var merges = ReadMerges(model, path);
            int bos = bosId ?? FindSpecial(vocabulary, ["<s>", "<|begin_of_text|>", "<|endoftext|>"]);
            int eos = eosId ?? FindSpecial(vocabulary, ["</s>", "<|end_of_text|>", "<|endoftext|>"]);
            bool sentencePiece = model.TryGetProperty("byte_fallback", out var fallback) && fallback.ValueKind == JsonValueKind.True;
            return sentencePiece
                ? SentencePiece(vocabulary, merges, bos, eos, path)
                : new ByteLevelBpeTokenizer(vocabulary, merges.Select(m => m.Left + " " + m.Right), bos, eos, path);
        }
        catch (InvalidOperationException e)   // a JSON string that is not valid UTF-8
        {
            throw new ModelFormatException(path, "not valid JSON: " + e.Message, inner: e);
        }
    }

    private static Dictionary<string, int> ReadVocabulary(JsonElement root, JsonElement model, string path)
    {
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, "model.vocab is not an object");
        var result = new Dictionary<string, int>(StringComparer.Ordinal);
        void Add(string piece, JsonElement id)
        {
            if (id.ValueKind != JsonValueKind.Number || !id.TryGetInt32(out int value) || value < 0)
                throw new ModelFormatException(path, $"token '{piece}' has an invalid id");
            result.TryAdd(piece, value);
        }
        foreach (var entry in vocab.EnumerateObject()) Add(entry.Name, entry.Value);
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var token in added.EnumerateArray())
                if (token.ValueKind == JsonValueKind.Object && token.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String
                    && token.TryGetProperty("id", out var id))
                    Add(content.GetString()!, id);
        return result;
    }

    private static List<(string Left, string Right)> ReadMerges(JsonElement model, string path)
    {
        var merges = new List<(string, string)>();
        if (!model.TryGetProperty("merges", out var array) || array.ValueKind != JsonValueKind.Array) return merges;
        foreach (var m in array.EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.String && m.GetString()!.Split(' ') is [var left, var right])
                merges.Add((left, right));
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                merges.Add((m[0].GetString()!, m[1].GetString()!));
            else
                throw new ModelFormatException(path, $"merge {merges.Count} is neither \"left right\" nor [left, right]");
        }
        return merges;
    }

    private static int FindSpecial(Dictionary<string, int> vocabulary, string[] candidates)
    {
        foreach (var c in candidates)
            if (vocabulary.TryGetValue(c, out int id)) return id;
        return 0;
    }

    private static SentencePieceBpeTokenizer SentencePiece(Dictionary<string, int> vocabulary, List<(string Left, string Right)> merges, int bos, int eos, string path)
    {
        int size = vocabulary.Values.Max() + 1;
        if (size != vocabulary.Count) throw new ModelFormatException(path, $"vocabulary ids are not dense: {vocabulary.Count} tokens, largest id {size - 1}");
        var pieces = new byte[size][];
        var scores = new float[size];
        Array.Fill(scores, UnmergedScore);
        foreach (var (piece, id) in vocabulary) pieces[id] = Encoding.UTF8.GetBytes(piece.Replace('\u2581', ' '));
        for (int rank = merges.Count - 1; rank >= 0; rank--)   // the best rank wins when two merges give one piece
            if (vocabulary.TryGetValue(merges[rank].Left + merges[rank].Right, out int id)) scores[id] = -rank;
        return new SentencePieceBpeTokenizer(pieces, scores, bos, eos, path);
    }

    /// <summary>
    /// Writes <paramref name="tokenizer"/> as a SentencePiece-converted tokenizer.json: every piece that some split into
    /// two vocabulary pieces can produce becomes a merge, ranked by descending score.
    /// </summary>
    public static void Write(SentencePieceBpeTokenizer tokenizer, string path)
    {
        int n = tokenizer.VocabSize;
        var names = new string[n];
        var ids = new Dictionary<string, int>(n, StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            names[i] = Encoding.UTF8.GetString(tokenizer.Piece(i)).Replace(' ', '\u2581');
            ids.TryAdd(names[i], i);
        }
        var merges = new List<(float Score, int Id, string Left, string Right)>();
        for (int i = 0; i < n; i++)
            for (int cut = 1; cut < names[i].Length; cut++)
                if (ids.ContainsKey(names[i][..cut]) && ids.ContainsKey(names[i][cut..]))
                {
                    merges.Add((tokenizer.Score(i), i, names[i][..cut], names[i][cut..]));
                    break;
                }
        merges.Sort((a, b) => a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Id.CompareTo(b.Id));

        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteStartArray("added_tokens");
        foreach (int id in new[] { tokenizer.BosId, tokenizer.EosId })
        {
            w.WriteStartObject();
            w.WriteNumber("id", id);
            w.WriteString("content", names[id]);
            w.WriteBoolean("special", true);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteBoolean("byte_fallback", true);
        w.WriteBoolean("fuse_unk", true);
        w.WriteStartObject("vocab");
        for (int i = 0; i < n; i++)
            if (ids[names[i]] == i) w.WriteNumber(names[i], i);
        w.WriteEndObject();
        w.WriteStartArray("merges");
        foreach (var m in merges)
        {
            w.WriteStartArray();
            w.WriteStringValue(m.Left);
            w.WriteStringValue(m.Right);
            w.WriteEndArray();
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
