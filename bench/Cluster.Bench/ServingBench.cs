// Serving throughput through the InferenceSchedulerGrain on 2-silo in-process clusters (loopback TCP), seeded random
// weights of the llama2.c stories15M shape (or --preset's: an MoE preset takes ep=2 where a dense one takes tp=2),
// greedy, never stopping at EOS, token ids given directly:
// (a) continuous batching: 16 requests of mixed prompt lengths, served one after another vs all at once (pp=2);
// (b) sharding layouts: one shard with 2 device threads vs pp=2 and tp=2 (one shard per silo, 1 thread each):
//     prefill tokens/s and decode tokens/s for 1 and 8 concurrent requests.
// Shards' DeviceThreads is a silo option, so each thread setting gets its own cluster.
// Run: dotnet run -c Release --project bench/Cluster.Bench -- serving [--preset mixtral-small]
using System.Diagnostics;
using Cluster.Contracts;
using Orleans.TestingHost;

namespace Cluster.Bench;

public static class ServingBench
{
    private const int Context = 256;
    private static ModelSource Model = ModelSource.Random("stories15M");
    private static int Vocabulary = 32000;

    private sealed record Timing(long Start, long First, long Last, int Tokens);

    private sealed record LayoutRow(string Layout, string Shards, double Prefill, double Decode1, double Decode8);

    public static async Task Run(string preset = "stories15M", int requests = 16, int newTokens = 64)
    {
        var config = Cluster.Model.RandomModel.Preset(preset);
        (Model, Vocabulary) = (ModelSource.Random(preset), config.VocabSize);
        bool moe = config.Moe is not null;
        var layouts = new List<LayoutRow>();
        (double Sequential, double Concurrent, int Tokens) batching;

        // One shard, 2 device threads: the other silo only hosts grains that do no model work.
        await using (var cluster = await StartAsync(deviceThreads: 2))
        {
            string[] silos = cluster.SiloNames();
            var single = await ServeAsync(cluster, "single", "", [silos[0]]);
            layouts.Add(await MeasureLayout(single, "single shard", "1 x 2 threads", newTokens));
        }

        await using (var cluster = await StartAsync(deviceThreads: 1))
        {
            string[] silos = cluster.SiloNames();
            var pp = await ServeAsync(cluster, "pp2", "pp=2", silos);
            batching = await MeasureBatching(pp, requests, newTokens);
            layouts.Add(await MeasureLayout(pp, "pp=2", "2 x 1 thread (one per silo)", newTokens));
            if (preset == "stories15M")
            {
                // stories15M's 32 000 x 288 head weighs as much as 9 of its 6 layers: 5+1 evens the stages out.
                var weighted = await ServeAsync(cluster, "pp2w", "pp=2,layers=5+1", silos);
                layouts.Add(await MeasureLayout(weighted, "pp=2,layers=5+1", "2 x 1 thread (one per silo)", newTokens));
            }
            string split = moe ? "ep=2" : "tp=2";   // an MoE model's experts over the silos; a dense model's heads and hidden units
            var tp = await ServeAsync(cluster, "split", split, silos);
            layouts.Add(await MeasureLayout(tp, split, "2 x 1 thread (one per silo)", newTokens));
        }

        Console.WriteLine($"Continuous batching, {preset} (random weights) as pp=2 over a 2-silo in-process cluster, 1 device thread per shard: " +
            $"{requests} requests (prompts of 8-64 tokens, {newTokens} new tokens each, greedy, no EOS stop) through IInferenceSchedulerGrain.Generate " +
            "from the cluster client, one at a time vs all at once; tokens/s = generated tokens / wall time, best of 2 after a warm-up");
        Console.WriteLine();
        Console.WriteLine("| requests served | generated tokens | wall s | tokens/s | speed-up |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        Console.WriteLine($"| one at a time | {batching.Tokens} | {batching.Sequential:F2} | {batching.Tokens / batching.Sequential:F0} | 1.00 |");
        Console.WriteLine($"| all {requests} at once | {batching.Tokens} | {batching.Concurrent:F2} | {batching.Tokens / batching.Concurrent:F0} | {batching.Sequential / batching.Concurrent:F2} |");
        Console.WriteLine();
        Console.WriteLine($"Sharding layouts, {preset} (random weights) on 2-silo in-process clusters: prefill tok/s = {Context - 1}-token prompt / time to " +
            $"completion of a 1-token request (the context is {Context}); decode tok/s = tokens after the first / (last token - first token), {newTokens} new " +
            "tokens, 16-token prompts, for 1 request and summed over 8 concurrent ones; best of 5 (prefill) or 3 (decode) after a warm-up");
        Console.WriteLine();
        Console.WriteLine("| layout | shards x device threads | prefill tok/s | decode tok/s, 1 request | decode tok/s, 8 concurrent |");
        Console.WriteLine("|---|---|---:|---:|---:|");
        foreach (var row in layouts)
            Console.WriteLine($"| {row.Layout} | {row.Shards} | {row.Prefill:F0} | {row.Decode1:F0} | {row.Decode8:F0} |");
    }

    private static Task<InProcessTestCluster> StartAsync(int deviceThreads) =>
        BenchCluster.StartAsync(2, shards =>
        {
            shards.DeviceThreads = deviceThreads;
            shards.KvSequences = 16;   // room for 16 concurrent requests of up to 128 tokens with a spare
        });

    private static async Task<IInferenceSchedulerGrain> ServeAsync(InProcessTestCluster cluster, string id, string layout, string[] silos)
    {
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>(id);
        await scheduler.Serve(new ModelServing(Model, layout, silos));
        var shards = (await scheduler.Status()).Shards;
        if (shards.Length != Math.Max(1, silos.Length) || shards.Zip(silos).Any(p => !p.First.EndsWith("@" + p.Second, StringComparison.Ordinal)))
            throw new InvalidOperationException($"unexpected shards for layout '{layout}': {string.Join(", ", shards)}");
        await Generate(scheduler, Request(16, newTokens: 8, salt: 999));   // warm-up: JIT, first calls, caches
        return scheduler;
    }

    private static async Task<(double Sequential, double Concurrent, int Tokens)> MeasureBatching(IInferenceSchedulerGrain scheduler, int count, int newTokens)
    {
        // Prompt lengths spread over 8..64 tokens (BOS included).
        var requests = Enumerable.Range(0, count).Select(i => Request(8 + i * 37 % 57, newTokens, salt: i)).ToArray();
        double sequential = double.MaxValue, concurrent = double.MaxValue;
        int tokens = 0;
        for (int run = 0; run < 2; run++)
        {
            var clock = Stopwatch.StartNew();
            tokens = 0;
            foreach (var request in requests) tokens += Check((await Generate(scheduler, request)).Tokens, newTokens);
            sequential = Math.Min(sequential, clock.Elapsed.TotalSeconds);
            clock.Restart();
            var together = await Task.WhenAll(requests.Select(r => Generate(scheduler, r)));
            concurrent = Math.Min(concurrent, clock.Elapsed.TotalSeconds);
            foreach (var t in together) Check(t.Tokens, newTokens);
        }
        return (sequential, concurrent, tokens);
    }

    private static async Task<LayoutRow> MeasureLayout(IInferenceSchedulerGrain scheduler, string layout, string shards, int newTokens)
    {
        double prefill = 0, decode1 = 0, decode8 = 0;
        for (int run = 0; run < 5; run++)
        {
            var t = await Generate(scheduler, Request(Context - 1, newTokens: 1, salt: 100 + run));
            Check(t.Tokens, 1);
            prefill = Math.Max(prefill, (Context - 1) / Stopwatch.GetElapsedTime(t.Start, t.Last).TotalSeconds);
        }
        for (int run = 0; run < 3; run++)
        {
            var one = await Generate(scheduler, Request(16, newTokens, salt: 200 + run));
            Check(one.Tokens, newTokens);
            decode1 = Math.Max(decode1, (one.Tokens - 1) / Stopwatch.GetElapsedTime(one.First, one.Last).TotalSeconds);
            var eight = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Generate(scheduler, Request(16, newTokens, salt: 300 + 10 * run + i))));
            foreach (var t in eight) Check(t.Tokens, newTokens);
            double span = Stopwatch.GetElapsedTime(eight.Min(t => t.First), eight.Max(t => t.Last)).TotalSeconds;
            decode8 = Math.Max(decode8, eight.Sum(t => t.Tokens - 1) / span);
        }
        return new LayoutRow(layout, shards, prefill, decode1, decode8);
    }

    /// <summary>A greedy request with a prompt of <paramref name="promptTokens"/> token ids (BOS first), never stopping early.</summary>
    private static GenerationRequest Request(int promptTokens, int newTokens, int salt) => new()
    {
        PromptTokens = [1, .. Enumerable.Range(0, promptTokens - 1).Select(i => 259 + (int)(((long)i * 7919 + (long)salt * 104729) % (Vocabulary - 259)))],
        MaxTokens = newTokens,
        Temperature = 0,
        StopAtEos = false,
    };

    private static async Task<Timing> Generate(IInferenceSchedulerGrain scheduler, GenerationRequest request)
    {
        long start = Stopwatch.GetTimestamp(), first = 0, last = 0;
        int tokens = 0;
        await foreach (var _ in scheduler.Generate(request))
        {
            last = Stopwatch.GetTimestamp();
            if (tokens++ == 0) first = last;
        }
        return new Timing(start, first, last, tokens);
    }

    private static int Check(int tokens, int expected) =>
        tokens == expected ? tokens : throw new InvalidOperationException($"a request generated {tokens} tokens, not {expected}");
}
