// The app host's console part: once the gateway is healthy it prints the API's URL and a first request, then runs the
// training demo through the gateway's public API as any user would: POST /v1/jobs trains the "adder" preset (a
// character-level Llama) on generated additions with a pipeline × data-parallel layout (pp=2, dp=2) across the silos,
// the job's events stream as server-sent events (progress printed every 100 steps), and the finished job serves the
// trained model as "adder"; then POST /v1/completions asks it "23+19=". Its loss and tokens/s reach the dashboard
// through the silos' Cluster meter.
using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.Hosting;

namespace Cluster.AppHost;

public sealed class TrainingDemo(AppHostOptions options, ResourceNotificationService notifications) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken cancel)
    {
        try
        {
            await notifications.WaitForResourceHealthyAsync("gateway", cancel);
            Console.WriteLine($$"""
                Cluster ready: {{options.Silos}} silo(s) and the gateway.
                  OpenAI-compatible API: {{options.GatewayUrl}}v1  (GET /v1/models, POST /v1/completions, POST /v1/chat/completions)
                  try: curl {{options.GatewayUrl}}v1/completions -H 'Content-Type: application/json' -d '{"model":"default","prompt":"Once upon a time","max_tokens":32,"temperature":0}'
                  Ctrl+C stops everything.
                """);
            if (options.TrainSteps > 0) await RunAsync(cancel);
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested) { }
        catch (Exception e) when (e is HttpRequestException or InvalidOperationException or JsonException)
        {
            Console.Error.WriteLine($"Training demo: {e.Message}");
        }
    }

    private async Task RunAsync(CancellationToken cancel)
    {
        using var http = new HttpClient { BaseAddress = options.GatewayUrl, Timeout = Timeout.InfiniteTimeSpan };
        // With API keys set, the demo uses the first one (it needs the train and inference roles), as any client would.
        string? key = Environment.GetEnvironmentVariable("Cluster__ApiKeys")?.Split(',')[0].Trim() ?? Environment.GetEnvironmentVariable("Cluster__ApiKeys__0__Key");
        if (!string.IsNullOrEmpty(key)) http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        var spec = new Dictionary<string, object>
        {
            ["preset"] = "adder", ["dataset"] = "additions", ["steps"] = options.TrainSteps, ["batch_size"] = 16, ["sequence_length"] = 64,
            ["learning_rate"] = 3e-3, ["warmup_steps"] = Math.Min(20, options.TrainSteps / 10), ["layout"] = "pp=2,dp=2", ["micro_batches"] = 2,
            ["silos"] = Enumerable.Range(1, options.Silos).Select(i => $"silo-{i}").ToArray(), ["checkpoint_every"] = 250, ["serve_as"] = "adder",
        };
        using var created = await http.PostAsJsonAsync("v1/jobs", spec, cancel);
        string body = await created.Content.ReadAsStringAsync(cancel);
        if (!created.IsSuccessStatusCode) throw new InvalidOperationException($"training demo: POST /v1/jobs answered {(int)created.StatusCode}: {body}");
        string id = JsonDocument.Parse(body).RootElement.GetProperty("id").GetString()!;
        Console.WriteLine($"""
            Training demo: job {id} teaches the "adder" model additions ("23+19=" -> "42"), layout pp=2,dp=2 over {options.Silos} silo(s), {options.TrainSteps} steps.
              follow it: curl -N {options.GatewayUrl}v1/jobs/{id}/events     (checkpoints under {options.TrainingRoot})
            """);

        var clock = Stopwatch.StartNew();
        string state = "queued";
        using (var events = await http.GetStreamAsync($"v1/jobs/{id}/events", cancel))
        using (var reader = new StreamReader(events))
            while (await reader.ReadLineAsync(cancel) is { } line)
            {
                if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
                var e = JsonDocument.Parse(line["data: ".Length..]).RootElement;
                state = e.GetProperty("state").GetString()!;
                int step = e.GetProperty("step").GetInt32();
                string? note = e.GetProperty("note").GetString();
                if (note is not null) Console.WriteLine($"  [{clock.Elapsed:mm\\:ss}] {note}");
                else if (e.GetProperty("loss").ValueKind == JsonValueKind.Number && (step % 100 == 0 || step == options.TrainSteps))
                    Console.WriteLine($"  [{clock.Elapsed:mm\\:ss}] step {step}/{options.TrainSteps} loss {e.GetProperty("loss").GetSingle():F4} " +
                                      $"{e.GetProperty("tokens_per_second").GetSingle():F0} tok/s");
            }
        if (state != "completed")
        {
            Console.WriteLine($"Training demo: the job ended {state}: {await http.GetStringAsync($"v1/jobs/{id}", cancel)}");
            return;
        }
        using var completion = await http.PostAsJsonAsync("v1/completions",
            new { model = "adder", prompt = "23+19=", max_tokens = 4, temperature = 0 }, cancel);
        string answer = await completion.Content.ReadAsStringAsync(cancel);
        string text = completion.IsSuccessStatusCode
            ? JsonDocument.Parse(answer).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()! : $"(HTTP {(int)completion.StatusCode}: {answer})";
        Console.WriteLine($$"""
            Training demo: trained in {{clock.Elapsed.TotalSeconds:F0}} s and served as "adder". 23+19={{text}}
              try: curl {{options.GatewayUrl}}v1/completions -H 'Content-Type: application/json' -d '{"model":"adder","prompt":"57+38=","max_tokens":4,"temperature":0}'
            """);
    }
}
