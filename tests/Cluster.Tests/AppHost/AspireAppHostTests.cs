// The app host under Aspire.Hosting.Testing, as `dotnet run --project src/AppHost` starts it on a fresh machine: with an
// empty data directory it first trains the English story model (the storyteller resource), then starts two silos and
// the gateway, waits until the gateway is healthy, and runs the training demo. The tests talk to it as users do: the
// official OpenAI client gets English from the default model, the demo's trained "adder" answers 23+19=42, and a
// headless browser sees the resources Running and the Cluster meter's instruments in the Aspire dashboard.
using System.ClientModel;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Cluster.Model;
using TempDirectory = Cluster.Tests.Formats.TempDirectory;
using OpenAI;
using OpenAI.Chat;

namespace Cluster.Tests.AppHost;

public sealed class AppHostFixture : IAsyncLifetime
{
    private readonly TempDirectory _folder = new();

    public DistributedApplication App { get; private set; } = null!;
    public Uri Gateway { get; private set; } = null!;
    public Uri Dashboard { get; private set; } = null!;
    public string BrowserToken { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        var cancel = TestContext.Current.CancellationToken;
        int[] ports = FreePorts.Take(5);
        Gateway = new Uri($"http://127.0.0.1:{ports[0]}/");
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.AppHost>(
            ["--port", $"{ports[0]}", "--silo-port", $"{ports[1]}", "--gateway-port", $"{ports[3]}",
             "--data-dir", _folder.File("data"), "--training-root", _folder.File("training")],
            (options, _) => options.DisableDashboard = false, cancel);   // the testing builder turns the dashboard off by default
        BrowserToken = builder.Configuration["AppHost:BrowserToken"]!;
        // The app host's own log (every dashboard gRPC call, each resource's console) would bury the test run's output;
        // warnings still show, and a failure message carries the resources' logs (Logs()).
        builder.Services.PostConfigure<LoggerFilterOptions>(filters => { filters.Rules.Clear(); filters.MinLevel = LogLevel.Warning; });
        App = await builder.BuildAsync(cancel);
        _ = CollectLogs(App.Services.GetRequiredService<ResourceLoggerService>());
        await App.StartAsync(cancel);   // returns once every resource started: after the storyteller's training
        Dashboard = App.GetEndpoint("aspire-dashboard", "http");
        // The silos and the gateway have started; the gateway is healthy once the cluster serves the default model. Any
        // resource that exits with an error stops the wait at once (the gateway would never become healthy).
        var healthy = App.ResourceNotifications.WaitForResourceHealthyAsync("gateway", cancel);
        var failed = Task.WhenAny(Watched.Select(name =>
            App.ResourceNotifications.WaitForResourceAsync(name, e => e.Snapshot.ExitCode is { } code && code != 0, cancel)));
        var first = await Task.WhenAny(healthy, failed, Task.Delay(TimeSpan.FromMinutes(5), cancel));
        if (first != healthy)
            throw new InvalidOperationException($"the gateway did not become healthy ({(first == failed ? "a resource failed" : "5 minutes")}); "
                + $"resources: {States()}; resource logs:\n{Logs()}");
    }

    private static readonly string[] Watched = ["storyteller", "silo-1", "silo-2", "gateway"];

    /// <summary>Each watched resource's state and exit code now (for failure messages).</summary>
    private string States() => string.Join(", ", Watched.Select(name =>
        App.ResourceNotifications.TryGetCurrentState(name, out var e)
            ? $"{name} {e.Snapshot.State?.Text ?? "?"}{(e.Snapshot.ExitCode is { } code ? $" (exit {code})" : "")}{(e.Snapshot.HealthStatus is { } health ? $" {health}" : "")}"
            : $"{name} unknown"));

    private readonly System.Text.StringBuilder _logs = new();

    /// <summary>The last 300 lines of the resources' console output so far (for failure messages).</summary>
    public string Logs()
    {
        lock (_logs) return string.Join('\n', _logs.ToString().Split('\n').TakeLast(300));
    }

    private readonly CancellationTokenSource _stopWatching = new();

    /// <summary>
    /// Collects the watched resources' console output. The logs are kept under each resource instance's id (its DCP
    /// name: the resource's name and a suffix, known once it starts), so each instance is watched as it appears.
    /// </summary>
    private async Task CollectLogs(ResourceLoggerService logs)
    {
        var watching = new HashSet<string>();
        try
        {
            await foreach (var e in App.ResourceNotifications.WatchAsync(_stopWatching.Token))
                if (Watched.Contains(e.Resource.Name) && watching.Add(e.ResourceId))
                    _ = Collect(logs, e.Resource.Name, e.ResourceId);
        }
        catch (OperationCanceledException) { }
    }

    private async Task Collect(ResourceLoggerService logs, string name, string instance)
    {
        try
        {
            await foreach (var batch in logs.WatchAsync(instance).WithCancellation(_stopWatching.Token))
                lock (_logs)
                    foreach (var line in batch) _logs.Append('[').Append(name).Append("] ").AppendLine(line.Content);
        }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopWatching.CancelAsync();
        await App.DisposeAsync();
        _folder.Dispose();
    }
}

/// <summary>
/// The app host's tests run alone, after every other test: they keep both cores busy for minutes (training the story
/// model, then the demo), which would stretch the timing of the cluster tests running beside them, and theirs.
/// </summary>
[CollectionDefinition(nameof(AppHostCollection), DisableParallelization = true)]
public sealed class AppHostCollection;

[Collection(nameof(AppHostCollection))]
public sealed class AspireAppHostTests(AppHostFixture cluster) : IClassFixture<AppHostFixture>
{
    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    [Fact]
    public async Task TheDefaultModelAnswersInEnglishThroughTheOpenAIClient()
    {
        var chat = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(cluster.Gateway, "v1") })
            .GetChatClient("default");
        ChatCompletion completion = await chat.CompleteChatAsync([new UserChatMessage("Once upon a time")],
            new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 48 }, Cancel);
        string text = completion.Content[0].Text;
        Assert.DoesNotContain('\uFFFD', text);
        // English here means the story corpus's own words, spelled right: four in five words the model wrote are its words
        // (random weights write none). Not all, and not a fixed length: the model trains on this machine's CPU, whose
        // vector width changes the float sums, so one run's model may slip on a word, or end its story, where another's does not.
        var vocabulary = StoryCorpus.Stories(5000, seed: 1).SelectMany(Words).ToHashSet(StringComparer.Ordinal);
        string[] words = [.. Words(text)];
        Assert.True(words.Length >= 4, $"too few words: '{text}'");
        Assert.True(words.Count(vocabulary.Contains) >= 0.8 * words.Length,
            $"not the corpus's English: '{text}' ({string.Join(", ", words.Where(w => !vocabulary.Contains(w)))})");
    }

    [Fact]
    public async Task TheDemoTrainsAcrossTheSilosAndItsModelAnswers42()
    {
        using var http = new HttpClient { BaseAddress = cluster.Gateway };
        // The demo (1500 steps, pp=2 x dp=2 over both silos) publishes its model as "adder" when the job completes.
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(10);
        while (!(await http.GetStringAsync("v1/models", Cancel)).Contains("\"adder\"", StringComparison.Ordinal))
        {
            Assert.True(DateTime.UtcNow < deadline, "the demo's model was not served within 10 minutes");
            await Task.Delay(TimeSpan.FromSeconds(2), Cancel);
        }
        using var response = await http.PostAsJsonAsync("v1/completions", new { model = "adder", prompt = "23+19=", max_tokens = 4, temperature = 0 }, Cancel);
        string body = await response.Content.ReadAsStringAsync(Cancel);
        Assert.True(response.IsSuccessStatusCode, body);
        Assert.StartsWith("42", JsonDocument.Parse(body).RootElement.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    [Fact]
    public async Task TheDashboardShowsTheResourcesRunningAndTheClusterMeter()
    {
        string? chromium = AspireDashboard.Chromium();
        if (chromium is null)
            Assert.Skip("no Chromium (bash infra/install-test-deps.sh installs Debian's; or set CHROMIUM_PATH): the dashboard is not tested in a browser");
        // Traffic for the serving instruments; the demo's job, which starts once the gateway is healthy, gives the training ones.
        using var http = new HttpClient { BaseAddress = cluster.Gateway };
        using var response = await http.PostAsJsonAsync("v1/completions", new { model = "default", prompt = "Once upon a time", max_tokens = 8 }, Cancel);
        Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync(Cancel));

        await using var dashboard = await AspireDashboard.LoginAsync(chromium!, cluster.Dashboard, cluster.BrowserToken);
        foreach (string resource in new[] { "silo-1", "silo-2", "gateway" })
            await dashboard.WaitForResourceStateAsync(resource, "Running", TimeSpan.FromSeconds(60));
        await dashboard.WaitForResourceStateAsync("storyteller", "Finished", TimeSpan.FromSeconds(60));
        // The model's scheduler is activated by the last silo, but Orleans may place it on either one (default placement
        // weighs the silos' load), so its serving instruments are looked for on both. Shards are pinned to both silos;
        // training steps run on the trainers of both.
        foreach (string instrument in new[] { "cluster.serving.requests", "cluster.serving.generated_tokens", "cluster.serving.time_to_first_token" })
            await dashboard.WaitForInstrumentAsync(["silo-2", "silo-1"], "Cluster", instrument, TimeSpan.FromMinutes(2));
        await dashboard.WaitForInstrumentAsync(["silo-1"], "Cluster", "cluster.shard.step_time", TimeSpan.FromMinutes(2));
        await dashboard.WaitForInstrumentAsync(["silo-1"], "Cluster", "cluster.kv.blocks", TimeSpan.FromMinutes(2));
        // The job's grain lives on one of the silos, so either one's metrics carry the demo's loss curve.
        foreach (string instrument in new[] { "cluster.training.loss", "cluster.training.tokens_per_second" })
            await dashboard.WaitForInstrumentAsync(["silo-1", "silo-2"], "Cluster", instrument, TimeSpan.FromMinutes(5));
    }

    private static IEnumerable<string> Words(string text) => Regex.Matches(text, "[A-Za-z]+").Select(m => m.Value.ToLowerInvariant());
}
