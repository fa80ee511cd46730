// Prefill and decode tokens/s of seeded random models with the llama2.c "15M" and "110M" shapes, on the CPU
// device at each thread count, and, in the same run, llama.cpp on the same weights written as an F32 GGUF
// (bench/llamacpp/bench.mjs through node-llama-cpp; run `npm ci` in bench/llamacpp first, see run.sh). With
// --batch 1,8,32 also the bare engine's batched decode: B sequences decoding together, one forward per step, the
// ceiling a served model is measured against (cluster-bench serving). With --weights f32,q8_0,q4_0 each model is also
// measured with its matrices quantized, beside llama.cpp on a GGUF of the same type.
using System.Diagnostics;
using System.Text.Json;
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;

namespace Cluster.Bench;

public static class ModelBench
{
    /// <param name="formats">The weight formats to measure each model in (f32, q8_0, q4_0); llama.cpp reads a GGUF of the same type.</param>
    /// <param name="writeGguf">Write those GGUF files even without node-llama-cpp (for llama-bench: bench/quantized.sh).</param>
    /// <param name="kvFormat">The KV cache's format for this engine's runs.</param>
    public static void Run(string[] presets, int[] threadCounts, int promptTokens, int decodeTokens, bool withLlamaCpp, int[] batches, WeightFormat[] formats,
        bool writeGguf, KvFormat kvFormat)
    {
        if (batches.Length > 0)
        {
            RunBatched(presets, threadCounts, promptTokens, decodeTokens, batches);
            return;
        }
        Console.WriteLine($"prompt {promptTokens} tokens, then {decodeTokens} decode steps; best of 5 runs; quantized kernel: {QuantizedGemm.Kernel}; KV cache {kvFormat.Name()}");
        Console.WriteLine();
        Console.WriteLine("| model | weights | threads | engine | prefill tok/s | decode tok/s |");
        Console.WriteLine("|---|---|---:|---|---:|---:|");
        foreach (string preset in presets)
        {
            var loaded = RandomModel.Create(preset, seed: 1);
            int[] prompt = Prompt(loaded.Config, promptTokens);
            foreach (var format in formats)
            {
                string? gguf = withLlamaCpp || writeGguf ? WriteGguf(loaded, preset, format) : null;
                foreach (int threads in threadCounts)
                {
                    var (prefill, decode) = MeasureCluster(loaded, prompt, decodeTokens, threads, format, kvFormat);
                    Console.WriteLine($"| {preset} | {format.Name()} | {threads} | Cluster (CPU) | {prefill:F0} | {decode:F1} |");
                    if (withLlamaCpp)
                    {
                        var (p, d) = MeasureLlamaCpp(gguf!, threads, promptTokens, decodeTokens);
                        Console.WriteLine($"| {preset} | {format.Name()} | {threads} | llama.cpp | {p:F0} | {d:F1} |");
                    }
                }
            }
        }
    }

    private static (double Prefill, double Decode) MeasureCluster(LoadedModel loaded, int[] prompt, int decodeTokens, int threads, WeightFormat format, KvFormat kvFormat)
    {
        using var device = new CpuDevice(threads);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights, format, kvFormat);
        using var cache = model.CreateCache(1, prompt.Length + decodeTokens, blockSize: 16);
        double bestPrefill = 0, bestDecode = 0;
        for (int run = 0; run < 5; run++)
        {
            int sequence = cache.CreateSequence();
            var logits = new float[model.Config.VocabSize];   // (V,) reused
            var clock = Stopwatch.StartNew();
            model.ForwardInto([new SequenceChunk(sequence, prompt)], cache, logits);
            bestPrefill = Math.Max(bestPrefill, prompt.Length / clock.Elapsed.TotalSeconds);
            clock.Restart();
            for (int step = 0; step < decodeTokens; step++)
                model.ForwardInto([new SequenceChunk(sequence, [Sampler.ArgMax(logits)])], cache, logits);
            bestDecode = Math.Max(bestDecode, decodeTokens / clock.Elapsed.TotalSeconds);
            cache.Release(sequence);
        }
        return (bestPrefill, bestDecode);
    }

    /// <summary>Decode tokens/s of B sequences stepping together (each prefilled with the same prompt first), best of 3 runs.</summary>
    private static void RunBatched(string[] presets, int[] threadCounts, int promptTokens, int decodeTokens, int[] batches)
    {
        Console.WriteLine($"batched decode: B sequences after a {promptTokens}-token prompt each, {decodeTokens} steps of all B in one forward; best of 3 runs");
        Console.WriteLine();
        Console.WriteLine("| model | threads | batch | decode tok/s (all sequences) | per sequence | vs batch 1 |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        foreach (string preset in presets)
        {
            var loaded = RandomModel.Create(preset, seed: 1);
            int[] prompt = Prompt(loaded.Config, promptTokens);
            foreach (int threads in threadCounts)
            {
                using var device = new CpuDevice(threads);
                using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
                double? single = null;
                foreach (int batch in batches)
                {
                    double best = BatchedDecode(device, model, prompt, batch, decodeTokens);
                    single ??= best;
                    Console.WriteLine($"| {preset} | {threads} | {batch} | {best:F1} | {best / batch:F1} | {best / single:F2}x |");
                }
            }
        }
    }

    /// <summary>Decode tokens/s of <paramref name="batch"/> sequences stepping together after <paramref name="prompt"/> each (greedy), best of 3 runs.</summary>
    public static double BatchedDecode(CpuDevice device, TransformerModel model, int[] prompt, int batch, int decodeTokens)
    {
        using var cache = PagedKvCache.ForSequences(device, model.Config, batch, prompt.Length + decodeTokens);
        double best = 0;
        for (int run = 0; run < 3; run++)
        {
            int[] sequences = [.. Enumerable.Range(0, batch).Select(_ => cache.CreateSequence())];
            var next = new int[batch];
            for (int s = 0; s < batch; s++)
                next[s] = Sampler.ArgMax(model.Forward([new SequenceChunk(sequences[s], prompt)], cache));
            int vocab = model.Config.VocabSize;
            var logits = new float[batch * vocab];   // (B, V) reused, as a shard reuses its output buffers
            var clock = Stopwatch.StartNew();
            for (int step = 0; step < decodeTokens; step++)
            {
                model.ForwardInto([.. sequences.Select((id, s) => new SequenceChunk(id, [next[s]]))], cache, logits);
                for (int s = 0; s < batch; s++) next[s] = Sampler.ArgMax(logits.AsSpan(s * vocab, vocab));
            }
            best = Math.Max(best, (double)batch * decodeTokens / clock.Elapsed.TotalSeconds);
            foreach (int id in sequences) cache.Release(id);
        }
        return best;
    }

    /// <summary>A fixed prompt of spread-out token ids past the byte tokens, the same for every engine and run.</summary>
    public static int[] Prompt(ModelConfig config, int tokens) =>
        [.. Enumerable.Range(0, tokens).Select(i => 259 + (int)((long)i * 7919 % (config.VocabSize - 259)))];

    /// <summary>The model as a GGUF whose matrices are in <paramref name="format"/> (as `cluster quantize` writes it), once per preset and format.</summary>
    private static string WriteGguf(LoadedModel loaded, string preset, WeightFormat format)
    {
        Directory.CreateDirectory("bench/results");
        string path = Path.GetFullPath(format == WeightFormat.F32 ? $"bench/results/{preset}.gguf" : $"bench/results/{preset}-{format.Name()}.gguf");
        var type = format switch { WeightFormat.Q8_0 => TensorType.Q8_0, WeightFormat.Q4_0 => TensorType.Q4_0, _ => TensorType.F32 };
        if (!File.Exists(path)) GgufWriter.Write(loaded, path, type, name: preset);
        return path;
    }

    private static (double Prefill, double Decode) MeasureLlamaCpp(string gguf, int threads, int promptTokens, int decodeTokens)
    {
        var start = new ProcessStartInfo("node", ["bench/llamacpp/bench.mjs", gguf, $"{threads}", $"{promptTokens}", $"{decodeTokens}"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(start) ?? throw new InvalidOperationException("cannot start node");
        string output = process.StandardOutput.ReadToEnd();
        string errors = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"llama.cpp benchmark failed ({process.ExitCode}): {errors}");
        using var json = JsonDocument.Parse(output.Trim().Split('\n')[^1]);
        return (json.RootElement.GetProperty("prefillTokensPerSecond").GetDouble(), json.RootElement.GetProperty("decodeTokensPerSecond").GetDouble());
    }
}
