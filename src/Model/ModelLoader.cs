// Opens any supported model by looking at it: a directory holding model.safetensors + config.json, a GGUF file
// ("GGUF" magic), a safetensors file (uint64 header length then '{'), a llama2.c v1 checkpoint ("ak42") or, failing
// those, a legacy llama2.c v0 checkpoint (whose loader checks the header's shapes against the file size).
using Cluster.Model.Formats;

namespace Cluster.Model;

public static class ModelLoader
{
    /// <param name="tokenizerPath">llama2.c tokenizer.bin for llama2.c checkpoints, or a tokenizer.json for safetensors; GGUF embeds its own.</param>
    /// <param name="select">Chooses, from the config, which tensors to read (a shard's); default: all.</param>
    public static LoadedModel Load(string path, string? tokenizerPath = null, Func<ModelConfig, WeightFilter>? select = null)
    {
        if (Directory.Exists(path))
        {
            if (!File.Exists(Path.Combine(path, SafetensorsFormat.WeightsFile)))
                throw new ModelFormatException(path, $"directory has no {SafetensorsFormat.WeightsFile}");
            return SafetensorsFormat.Load(path, tokenizerPath, select);
        }
        Span<byte> head = stackalloc byte[9];
        int read;
        try
        {
            using var stream = File.OpenRead(path);
            read = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ModelFormatException(path, "cannot open: " + e.Message, inner: e);
        }
        uint magic = read >= 4 ? BitConverter.ToUInt32(head) : 0;
        if (magic == GgufFile.Magic)
        {
            if (tokenizerPath is not null) throw new ModelFormatException(path, "GGUF files carry their own tokenizer; a separate one is not supported");
            return GgufFormat.Load(path, select);
        }
        if (read == 9 && head[8] == (byte)'{' && BitConverter.ToUInt64(head) < (ulong)new FileInfo(path).Length)
            return SafetensorsFormat.Load(path, tokenizerPath, select);
        return Llama2cFormat.Load(path, tokenizerPath, select);
    }
}
