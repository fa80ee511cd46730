// Load over HTTP against any OpenAI-compatible server (the gateway, or llama.cpp's llama-server, with the same load):
// at each concurrency C, C clients send streamed completions back to back until N requests are done, each a prompt of
// P tokens (" the" repeated: one token in the llama2 / stories vocabulary; the server's own count is reported) and M new
// tokens at temperature 0 (ignore_eos where the server honours it). Reports throughput (generated tokens per second of
// wall time), time to first token and inter-token latency p50/p99 (each streamed chunk is a token), and errors.
// Without --url it first starts a one-silo in-process cluster serving random stories15M behind the gateway, and then
// measures the bare engine's batched decode at batch = each concurrency in the same run (served / engine ratios).
// Run: dotnet run -c Release --project bench/Cluster.Bench -- load --concurrency 1,8,32 --requests 64 --prompt-tokens 32 --max-tokens 64 [--url http://127.0.0.1:8080 --model default]
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Text;
using System.Text.Json;
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;

namespace Cluster.Bench;

public static class LoadBench
{
    public static async Task Run(string? url, string model, int[] concurrencies, int requests, int promptTokens, int maxTokens)
    {
        if (url is not null)
        {
            Console.WriteLine($"Load on {url} (model '{model}'), CPU of this client: {TokenizerBench.CpuModel()}");
            await Measure(new Uri(url), model, concurrencies, requests, promptTokens, maxTokens);
            return;
        }
        var served = await MeasureInProcess(concurrencies, requests, promptTokens, maxTokens);
        CompareWithEngine(served, promptTokens, maxTokens);   // after the cluster is gone: the engine gets the cores alone
    }

    private static async Task<List<(int Concurrency, double TokensPerSecond)>> MeasureInProcess(int[] concurrencies, int requests, int promptTokens, int maxTokens)
    {
        await using var cluster = await BenchCluster.StartAsync(1, shards => (shards.DeviceThreads, shards.KvSequences) = (Environment.ProcessorCount, 64));
        await cluster.Client.GetGrain<IInferenceSchedulerGrain>("load").Serve(new ModelServing(ModelSource.Random("stories15M"), "tp=1", cluster.SiloNames()));
        await using var gateway = await cluster.StartGatewayAsync();
        Console.WriteLine($"Load on the gateway of a one-silo in-process cluster serving stories15M (random weights, one shard, " +
            $"{Environment.ProcessorCount} device threads), CPU: {TokenizerBench.CpuModel()}, {Environment.ProcessorCount} logical cores");
        using var profile = new StepProfile();
        var served = await Measure(gateway.Address, "load", concurrencies, requests, promptTokens, maxTokens, profile);
        await gateway.App.StopAsync();
        Console.WriteLine();
        Console.WriteLine("Where a served step's time goes (means per step, from the engine's own metrics): the shard's device work, the rest of the " +
            "scheduler's round trip (grain calls, copies, sampling), and the wall time per step that no step was in flight (the scheduler's turn, streaming)");
        Console.WriteLine();
        Console.WriteLine("| concurrency | steps | tokens per step | shard device ms | round trip ms | hops + sampling ms | wall ms per step | between steps ms |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var row in profile.Rows) Console.WriteLine(row);
        return served;
    }

    /// <summary>
    /// The bare engine's batched decode (ModelBench.BatchedDecode) on the same shape and threads, at batch = each
    /// concurrency, in this same run: the ceiling the served rows are measured against.
    /// </summary>
    private static void CompareWithEngine(IReadOnlyList<(int Concurrency, double TokensPerSecond)> served, int promptTokens, int maxTokens)
    {
        var loaded = RandomModel.Create("stories15M", seed: 1);
        using var device = new CpuDevice(Environment.ProcessorCount);
        using var model = new TransformerModel(device, loaded.Config, loaded.Weights);
        int[] prompt = ModelBench.Prompt(loaded.Config, promptTokens + 1);
        Console.WriteLine();
        Console.WriteLine($"Against the bare engine in this run: batch B = concurrency, {prompt.Length}-token prompt each, {maxTokens} decode steps of all B in one forward, best of 3");
        Console.WriteLine();
        Console.WriteLine("| concurrency | served tok/s | engine decode tok/s | served / engine |");
        Console.WriteLine("|---:|---:|---:|---:|");
        foreach (var (concurrency, tokensPerSecond) in served)
        {
            double engine = ModelBench.BatchedDecode(device, model, prompt, concurrency, maxTokens);
            Console.WriteLine($"| {concurrency} | {tokensPerSecond:F1} | {engine:F1} | {tokensPerSecond / engine:F2}x |");
        }
    }

    /// <summary>Prints a row per concurrency; returns each one's generated tokens per second.</summary>
    private static async Task<List<(int Concurrency, double TokensPerSecond)>> Measure(Uri server, string model, int[] concurrencies, int requests, int promptTokens,
        int maxTokens, StepProfile? profile = null)
    {
        var rows = new List<(int, double)>();
        using var http = new HttpClient { BaseAddress = server, Timeout = TimeSpan.FromMinutes(10) };
        string prompt = string.Concat(Enumerable.Repeat(" the", promptTokens)).TrimStart();
        string body = JsonSerializer.Serialize(new
        {
            model, prompt, max_tokens = maxTokens, temperature = 0, stream = true, ignore_eos = true,
            stream_options = new { include_usage = true },
        });
        await Stream(http, body);   // a warm-up request: the first one pays for loading and compiling
        Console.WriteLine($"{requests} requests per row, prompt {promptTokens} × \" the\", {maxTokens} new tokens each, streamed, temperature 0");
        Console.WriteLine();
        Console.WriteLine("| concurrency | requests | prompt tokens (server's count) | generated tokens | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (int concurrency in concurrencies)
        {
            var firstTokens = new List<double>();
            var gaps = new List<double>();
            int next = 0, errors = 0, promptCount = 0;
            string? firstError = null;
            long generated = 0;
            profile?.Start();
            var clock = Stopwatch.StartNew();
            await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
            {
                while (Interlocked.Increment(ref next) <= requests)
                {
                    try
                    {
                        var result = await Stream(http, body);
                        lock (gaps)
                        {
                            firstTokens.Add(result.FirstTokenMs);
                            gaps.AddRange(result.GapsMs);
                            generated += result.Tokens;
                            promptCount = result.PromptTokens;
                        }
                    }
                    catch (Exception e) when (e is HttpRequestException or IOException or TaskCanceledException or InvalidDataException)
                    {
                        Interlocked.Increment(ref errors);
                        Interlocked.CompareExchange(ref firstError, $"{e.GetType().Name}: {e.Message}", null);
                    }
                }
            })));
            double seconds = clock.Elapsed.TotalSeconds;
            rows.Add((concurrency, generated / seconds));
            profile?.Stop(concurrency, seconds);
            Console.WriteLine($"| {concurrency} | {requests} | {promptCount} | {generated} | {generated / seconds:F1} | {Percentile(firstTokens, 0.5):F0} | " +
                $"{Percentile(firstTokens, 0.99):F0} | {Percentile(gaps, 0.5):F1} | {Percentile(gaps, 0.99):F1} | {errors} |");
            if (firstError is not null) Console.Error.WriteLine($"concurrency {concurrency}, first error: {firstError}");
        }
        return rows;
    }

    private sealed record StreamResult(double FirstTokenMs, List<double> GapsMs, int Tokens, int PromptTokens);

    /// <summary>One streamed completion: when each chunk with text arrived, and the server's usage counts.</summary>
    private static async Task<StreamResult> Stream(HttpClient http, string body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        // A connection per request: llama-server closes idle keep-alive connections, and a request sent on one it just
        // closed fails before the server sees it. Every server gets the same treatment (a localhost connect costs ~0.1 ms).
        request.Headers.ConnectionClose = true;
        long started = Stopwatch.GetTimestamp();
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        if (!response.IsSuccessStatusCode) throw new HttpRequestException($"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        double? first = null;
        long last = 0;
        var gaps = new List<double>();
        int tokens = 0, promptTokens = 0;
        bool done = false;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            string data = line["data: ".Length..];
            if (data == "[DONE]")
            {
                done = true;
                break;
            }
            long now = Stopwatch.GetTimestamp();
            using var chunk = JsonDocument.Parse(data);
            var root = chunk.RootElement;
            if (root.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
            {
                promptTokens = usage.GetProperty("prompt_tokens").GetInt32();
                tokens = usage.GetProperty("completion_tokens").GetInt32();
            }
            if (!root.TryGetProperty("choices", out var choices) || choices.GetArrayLength() == 0) continue;
            if (choices[0].TryGetProperty("text", out var text) && text.GetString() is { Length: > 0 })
            {
                if (first is null) first = Stopwatch.GetElapsedTime(started, now).TotalMilliseconds;
                else gaps.Add(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
                last = now;
            }
        }
        if (!done || first is null) throw new InvalidDataException("the stream ended without tokens or without [DONE]");
        return new StreamResult(first.Value, gaps, tokens, promptTokens);
    }

    private static double Percentile(List<double> values, double p)
    {
        if (values.Count == 0) return 0;
        values.Sort();
        return values[Math.Min(values.Count - 1, (int)(p * values.Count))];
    }

    /// <summary>The serving metrics of one in-process row: the scheduler's step times, the shards' device times, tokens per step.</summary>
    private sealed class StepProfile : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly Lock _lock = new();
        private double _stepSeconds, _shardSeconds;
        private long _steps, _tokens;

        public List<string> Rows { get; } = [];

        public StepProfile()
        {
            // The instruments exist before the listener starts: were ClusterTelemetry initialised after, its instruments
            // would be published from its type initializer while its fields are still null.
            Instrument[] watched = [ClusterTelemetry.StepTime, ClusterTelemetry.ShardStepTime, ClusterTelemetry.StepTokens];
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (watched.Contains(instrument)) listener.EnableMeasurementEvents(instrument);
            };
            _listener.SetMeasurementEventCallback<double>((instrument, value, _, _) =>
            {
                lock (_lock)
                {
                    if (instrument == ClusterTelemetry.StepTime) { _stepSeconds += value; _steps++; }
                    else _shardSeconds += value;
                }
            });
            _listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref _tokens, value));
            _listener.Start();
        }

        public void Start()
        {
            lock (_lock) (_stepSeconds, _shardSeconds, _steps) = (0, 0, 0);
            Interlocked.Exchange(ref _tokens, 0);
        }

        public void Stop(int concurrency, double wallSeconds)
        {
            lock (_lock)
            {
                long steps = Math.Max(1, _steps);
                double round = _stepSeconds / steps * 1000, device = _shardSeconds / steps * 1000, wall = wallSeconds / steps * 1000;
                Rows.Add($"| {concurrency} | {_steps} | {(double)Interlocked.Read(ref _tokens) / steps:F1} | {device:F2} | {round:F2} | {round - device:F2} | {wall:F2} | {wall - round:F2} |");
            }
        }

        public void Dispose() => _listener.Dispose();
    }
}
