// A soak through the real gateway over HTTP: a 2-silo in-process cluster serves stories15M (random weights, pp=2, one
// stage per silo, 1 device thread each) behind the gateway pipeline, and N clients send completions for the given
// minutes: prompts of 1-60 words, 8-48 new tokens, a third streamed; one request in ten is hostile (bad JSON, wrong
// content type, a path outside the model roots) and must be a 4xx; one in twenty is abandoned after its first bytes.
// Reports requests served, errors (any 5xx, or a hostile one not 4xx), p50/p99 latency of the served ones, this
// process's resident memory at start, at each minute and at the end, and the KV blocks free once the load stops.
// Run: dotnet run -c Release --project bench/Cluster.Bench -- soak --minutes 10 --concurrency 32
using System.Diagnostics;
using System.Text;
using Cluster.Contracts;

namespace Cluster.Bench;

public static class SoakBench
{
    private static readonly string[] Words = ["once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily", "she", "liked", "to", "play"];

    public static async Task Run(double minutes, int concurrency)
    {
        await using var cluster = await BenchCluster.StartAsync(2, shards => (shards.DeviceThreads, shards.KvSequences) = (1, 16));
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("soak");
        await scheduler.Serve(new ModelServing(ModelSource.Random("stories15M"), "pp=2", cluster.SiloNames()));

        await using var gateway = await cluster.StartGatewayAsync();
        using var http = new HttpClient { BaseAddress = gateway.Address, Timeout = TimeSpan.FromMinutes(2) };

        long startMemory = Process.GetCurrentProcess().WorkingSet64;
        var latencies = new List<double>();
        int served = 0, refused = 0, abandoned = 0, errors = 0;
        var deadline = DateTime.UtcNow.AddMinutes(minutes);
        var clock = Stopwatch.StartNew();
        var residentByMinute = new List<long>();
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                await Task.Delay(TimeSpan.FromMinutes(1), sampling.Token).ContinueWith(_ => { });
                if (!sampling.IsCancellationRequested) residentByMinute.Add(Process.GetCurrentProcess().WorkingSet64 >> 20);
            }
        });
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(client => Task.Run(async () =>
        {
            var random = new Random(client);
            while (DateTime.UtcNow < deadline)
            {
                int kind = random.Next(20);
                var started = Stopwatch.GetTimestamp();
                try
                {
                    if (kind < 2)
                    {
                        using var hostile = await http.SendAsync(Hostile(random), HttpCompletionOption.ResponseContentRead);
                        if ((int)hostile.StatusCode is >= 400 and < 500) Interlocked.Increment(ref refused);
                        else Interlocked.Increment(ref errors);
                        continue;
                    }
                    string prompt = string.Join(' ', Enumerable.Range(0, random.Next(1, 61)).Select(_ => Words[random.Next(Words.Length)]));
                    bool stream = kind % 3 == 0;
                    string body = $$"""{"model":"soak","prompt":"{{prompt}}","max_tokens":{{random.Next(8, 49)}},"temperature":0.8,"seed":{{random.Next()}},"stream":{{(stream ? "true" : "false")}}}""";
                    using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
                    if (kind == 2)
                    {
                        using var cancel = new CancellationTokenSource();
                        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
                        cancel.Cancel();   // the client goes away as soon as the answer starts
                        Interlocked.Increment(ref abandoned);
                        continue;
                    }
                    using var answer = await http.SendAsync(request, HttpCompletionOption.ResponseContentRead);
                    string text = await answer.Content.ReadAsStringAsync();
                    if (!answer.IsSuccessStatusCode || (stream && !text.EndsWith("data: [DONE]\n\n", StringComparison.Ordinal)))
                    {
                        Interlocked.Increment(ref errors);
                        continue;
                    }
                    double ms = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                    lock (latencies) latencies.Add(ms);
                    Interlocked.Increment(ref served);
                }
                catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException)
                {
                    if (kind == 2) Interlocked.Increment(ref abandoned);
                    else Interlocked.Increment(ref errors);
                }
            }
        })));
        double seconds = clock.Elapsed.TotalSeconds;
        sampling.Cancel();
        await sampler;
        long endMemory = Process.GetCurrentProcess().WorkingSet64;

        var shards = (await scheduler.Status()).Shards;
        await Task.Delay(TimeSpan.FromSeconds(2));   // the last releases ride the next step
        var descriptions = await Task.WhenAll(shards.Select(s => cluster.Client.GetGrain<IShardGrain>(s).Describe()));
        latencies.Sort();
        double Percentile(double p) => latencies.Count == 0 ? 0 : latencies[Math.Min(latencies.Count - 1, (int)(p * latencies.Count))];

        Console.WriteLine($"Soak through the gateway over HTTP, CPU: {TokenizerBench.CpuModel()}, {Environment.ProcessorCount} logical cores; stories15M " +
            $"(random weights) pp=2 over a 2-silo in-process cluster, 1 device thread per shard; {concurrency} clients for {minutes:0.#} min");
        Console.WriteLine();
        Console.WriteLine("| served | served/s | hostile refused 4xx | abandoned | errors | p50 ms | p99 ms | RSS start MiB | RSS end MiB | KV blocks free at end |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        Console.WriteLine($"| {served} | {served / seconds:F1} | {refused} | {abandoned} | {errors} | {Percentile(0.5):F0} | {Percentile(0.99):F0} | " +
            $"{startMemory >> 20} | {endMemory >> 20} | {string.Join(", ", descriptions.Select(d => $"{d!.FreeKvBlocks}/{d.TotalKvBlocks}"))} |");
        Console.WriteLine();
        Console.WriteLine($"Resident MiB at each minute: {string.Join(", ", residentByMinute)}");
        await gateway.App.StopAsync();
    }

    private static HttpRequestMessage Hostile(Random random) => random.Next(3) switch
    {
        0 => new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent("{\"model\":\"soak\",\"prompt\":", Encoding.UTF8, "application/json") },
        1 => new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent("""{"model":"soak","prompt":"a"}""", Encoding.UTF8, "text/plain") },
        _ => new HttpRequestMessage(HttpMethod.Post, "v1/jobs") { Content = new StringContent("""{"model_path":"/etc/passwd","steps":1}""", Encoding.UTF8, "application/json") },
    };
}
