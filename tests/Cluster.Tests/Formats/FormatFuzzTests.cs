// Seeded mutation fuzzing of every loader: small valid files (made by our writers) are truncated, bit-flipped, given
// absurd dimensions and counts, wrong magic and swapped dtypes. Every load must either return a model that passes
// validation or throw ModelFormatException: never another exception, never a hang, never a huge allocation.
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Cluster.Model;
using Cluster.Model.Formats;

namespace Cluster.Tests.Formats;

public class FormatFuzzTests
{
    private const int Mutations = 300;
    private const long MaxAllocatedBytes = 64 << 20;
    private static readonly long[] Absurd = [0, 1, -1, 3, int.MaxValue, int.MinValue, uint.MaxValue, 1L << 31, 1L << 40, long.MaxValue, 0x7FFF_FFFF_FFFF_FFF0];

    private static LoadedModel SmallModel() => RandomModel.Create(new ModelConfig
    {
        Architecture = Architecture.Llama, Dim = 32, HiddenDim = 64, Layers = 2, Heads = 4, KvHeads = 2,
        VocabSize = 400, MaxSeqLen = 16, TiedEmbeddings = false,
    }, seed: 1);

    [Fact]
    public void Llama2c_mutations_fail_cleanly()
    {
        using var dir = new TempDirectory();
        string original = dir.File("original.bin");
        Llama2cFormat.Write(SmallModel(), original);
        Fuzz(File.ReadAllBytes(original), headerBytes: 28, dir, "m.bin", path => path, (bytes, r) => AbsurdValue(bytes, r, 28, 4));
    }

    [Theory]
    [InlineData(TensorType.F32)]
    [InlineData(TensorType.Q8_0)]
    public void Gguf_mutations_fail_cleanly(TensorType type)
    {
        using var dir = new TempDirectory();
        string original = dir.File("original.gguf");
        GgufWriter.Write(SmallModel(), original, type);
        byte[] bytes = File.ReadAllBytes(original);
        int header;
        using (var file = MappedFile.Open(original)) header = (int)GgufFile.Parse(file).DataOffset;
        Fuzz(bytes, header, dir, "m.gguf", path => path, (b, r) =>
        {
            switch (r.Next(3))
            {
                case 0: SwapGgufTensorType(b, header, r); break;
                case 1: BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(8 + 8 * r.Next(2)), Absurd[r.Next(Absurd.Length)]); break;   // tensor / kv count
                default: AbsurdValue(b, r, header, 8); break;
            }
        });
    }

    [Fact]
    public void Safetensors_mutations_fail_cleanly()
    {
        using var dir = new TempDirectory();
        string originalDir = Path.Combine(dir.Path, "original");
        SafetensorsWriter.Write(SmallModel(), originalDir);
        string[] names = [SafetensorsFormat.WeightsFile, SafetensorsFormat.ConfigFile, SafetensorsFormat.TokenizerFile];
        var originals = names.ToDictionary(n => n, n => File.ReadAllBytes(Path.Combine(originalDir, n)));
        var weights = originals[SafetensorsFormat.WeightsFile];
        int header = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(weights);
        var random = new Random(1234);
        string target = Path.Combine(dir.Path, "m");
        Directory.CreateDirectory(target);
        var stopwatch = Stopwatch.StartNew();
        for (int i = 0; i < Mutations; i++)
        {
            foreach (var (n, b) in originals) File.WriteAllBytes(Path.Combine(target, n), b);
            string victim = random.Next(10) < 6 ? names[0] : names[1 + random.Next(2)];
            byte[] bytes = (byte[])originals[victim].Clone();
            bytes = victim == names[0]
                ? Mutate(bytes, header, random, (b, r) => JsonMutation(b, r, 8, header))
                : Mutate(bytes, bytes.Length, random, (b, r) => JsonMutation(b, r, 0, b.Length));
            File.WriteAllBytes(Path.Combine(target, victim), bytes);
            LoadOrFailCleanly(target, $"mutation {i} of {victim}");
        }
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(15), $"fuzzing took {stopwatch.Elapsed}");
    }

    private static void Fuzz(byte[] original, int headerBytes, TempDirectory dir, string name, Func<string, string> loadPath, Action<byte[], Random> formatMutation)
    {
        var random = new Random(name.Length * 7919 + headerBytes);
        string path = dir.File(name);
        var stopwatch = Stopwatch.StartNew();
        for (int i = 0; i < Mutations; i++)
        {
            File.WriteAllBytes(path, Mutate((byte[])original.Clone(), headerBytes, random, formatMutation));
            LoadOrFailCleanly(loadPath(path), $"mutation {i}");
        }
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(15), $"fuzzing took {stopwatch.Elapsed}");
    }

    /// <summary>One seeded mutation: truncation, byte flips in the header, wrong magic, or the format's own kind.</summary>
    private static byte[] Mutate(byte[] bytes, int headerBytes, Random r, Action<byte[], Random> formatMutation)
    {
        switch (r.Next(5))
        {
            case 0:
                return bytes[..r.Next(bytes.Length)];
            case 1:
                for (int k = 1 + r.Next(4); k > 0; k--) bytes[r.Next(Math.Min(headerBytes, bytes.Length))] ^= (byte)(1 << r.Next(8));
                return bytes;
            case 2:
                bytes[r.Next(4)] = (byte)r.Next(256);
                return bytes;
            default:
                formatMutation(bytes, r);
                return bytes;
        }
    }

    private static void AbsurdValue(byte[] bytes, Random r, int headerBytes, int width)
    {
        int at = r.Next(Math.Max(1, headerBytes / width)) * width;
        if (at + width > bytes.Length) return;
        long value = Absurd[r.Next(Absurd.Length)];
        if (width == 4) BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(at), (int)value);
        else BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(at), value);
    }

    /// <summary>Finds a tensor info (name ending ".weight") and replaces its ggml type.</summary>
    private static void SwapGgufTensorType(byte[] bytes, int header, Random r)
    {
        var names = new List<int>();
        var needle = ".weight"u8;
        for (int i = bytes.AsSpan(0, header).LastIndexOf("tokenizer"u8) + 1; i + needle.Length < header; i++)
            if (bytes.AsSpan(i, needle.Length).SequenceEqual(needle)) names.Add(i + needle.Length);
        if (names.Count == 0) return;
        int p = names[r.Next(names.Count)];
        int dims = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(p));
        int typeAt = p + 4 + 8 * dims;
        if (dims is < 1 or > 4 || typeAt + 4 > header) return;
        uint[] types = [0, 1, 2, 3, 6, 8, 9, 30, 99, 12345];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(typeAt), types[r.Next(types.Length)]);
    }

    /// <summary>Rewrites a JSON region: a dtype swapped, or a number replaced by an absurd one.</summary>
    private static void JsonMutation(byte[] bytes, Random r, int start, int end)
    {
        string text = Encoding.Latin1.GetString(bytes, start, end - start);
        string mutated;
        if (r.Next(2) == 0 && text.Contains("\"F32\""))
            mutated = ReplaceAt(text, "\"F32\"", r, ["\"F16\"", "\"BF1\"", "\"I8\" ", "\"F64\""]);
        else
        {
            var digits = System.Text.RegularExpressions.Regex.Matches(text, "[0-9]+");
            if (digits.Count == 0) return;
            var m = digits[r.Next(digits.Count)];
            string replacement = Absurd[r.Next(Absurd.Length)].ToString().PadLeft(m.Length)[..Math.Max(m.Length, 1)];
            mutated = text[..m.Index] + replacement + text[(m.Index + m.Length)..];
        }
        Encoding.Latin1.GetBytes(mutated).CopyTo(bytes, start);   // same length, so offsets elsewhere stay put
    }

    private static string ReplaceAt(string text, string what, Random r, string[] replacements)
    {
        var positions = new List<int>();
        for (int i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + 1, StringComparison.Ordinal)) positions.Add(i);
        int at = positions[r.Next(positions.Count)];
        return text[..at] + replacements[r.Next(replacements.Length)] + text[(at + what.Length)..];
    }

    private static void LoadOrFailCleanly(string path, string what)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            var model = ModelLoader.Load(path);
            model.Config.Validate(path);
            model.Weights.Validate(model.Config, path);
            model.Tokenizer?.Encode("Once upon a time", addBos: true);
        }
        catch (ModelFormatException) { }
        catch (Exception e)
        {
            Assert.Fail($"{what}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < MaxAllocatedBytes, $"{what}: allocated {allocated} bytes");
    }
}
