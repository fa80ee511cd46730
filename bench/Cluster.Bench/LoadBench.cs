// Load over HTTP against any OpenAI-compatible server (the gateway, or llama.cpp's llama-server, with the same load):
// at each concurrency C, C clients send streamed completions back to back until N requests are done, each a prompt of
// P tokens (" the" repeated: one token in the llama2 / stories vocabulary; the server's own count is reported) and M new
// tokens at temperature 0 (ignore_eos where the server honours it). Reports throughput (generated tokens per second of
// wall time), time to first token and inter-token latency p50/p99 (each streamed chunk is a token), and errors.
// Without --url it first starts a one-silo in-process cluster serving random stories15M behind the gateway.
// Run: dotnet run -c Release --project bench/Cluster.Bench -- load --concurrency 1,8,32 --requests 64 --prompt-tokens 32 --max-tokens 64 [--url http://127.0.0.1:8080 --model default]
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Cluster.Contracts;

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
        await using var cluster = await BenchCluster.StartAsync(1, shards => (shards.DeviceThreads, shards.KvSequences) = (Environment.ProcessorCount, 64));
        await cluster.Client.GetGrain<IInferenceSchedulerGrain>("load").Serve(new ModelServing(ModelSource.Random("stories15M"), "tp=1", cluster.SiloNames()));
        await using var gateway = await cluster.StartGatewayAsync();
        Console.WriteLine($"Load on the gateway of a one-silo in-process cluster serving stories15M (random weights, one shard, " +
            $"{Environment.ProcessorCount} device threads), CPU: {TokenizerBench.CpuModel()}, {Environment.ProcessorCount} logical cores");
        await Measure(gateway.Address, "load", concurrencies, requests, promptTokens, maxTokens);
        await gateway.App.StopAsync();
    }

    private static async Task Measure(Uri server, string model, int[] concurrencies, int requests, int promptTokens, int maxTokens)
    {
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
            long generated = 0;
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
                    }
                }
            })));
            double seconds = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"| {concurrency} | {requests} | {promptCount} | {generated} | {generated / seconds:F1} | {Percentile(firstTokens, 0.5):F0} | " +
                $"{Percentile(firstTokens, 0.99):F0} | {Percentile(gaps, 0.5):F1} | {Percentile(gaps, 0.99):F1} | {errors} |");
        }
    }

    private sealed record StreamResult(double FirstTokenMs, List<double> GapsMs, int Tokens, int PromptTokens);

    /// <summary>One streamed completion: when each chunk with text arrived, and the server's usage counts.</summary>
    private static async Task<StreamResult> Stream(HttpClient http, string body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
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
}
