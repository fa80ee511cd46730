// A project's built program run as a child process for the process-level tests (Redis clustering, gateway start-up):
// its output collected, ready when a line contains a marker, killed with its tree on dispose.
using System.Diagnostics;
using System.Net;
using System.Reflection;
using System.Text;
using System.Text.Json;

namespace Cluster.Tests.AppHost;

public sealed class ChildProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<(string Marker, TaskCompletionSource Seen)> _awaited = [];

    private ChildProcess(string name, Process process, string? readyMarker)
    {
        _process = process;
        void Line(string? text)
        {
            if (text is null) return;
            lock (_output)
            {
                _output.AppendLine($"[{name}] {text}");
                foreach (var (marker, seen) in _awaited)
                    if (text.Contains(marker, StringComparison.Ordinal)) seen.TrySetResult();
            }
            if (readyMarker is not null && text.Contains(readyMarker, StringComparison.Ordinal)) _ready.TrySetResult();
        }
        _process.OutputDataReceived += (_, e) => Line(e.Data);
        _process.ErrorDataReceived += (_, e) => Line(e.Data);
        _process.Exited += (_, _) => _ready.TrySetException(new Exception($"{name} exited with {_process.ExitCode} before it was ready"));
    }

    public static ChildProcess Start(string name, string file, string[] args, Dictionary<string, string> environment, string? readyMarker)
    {
        var start = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (key, value) in environment) start.Environment[key] = value;
        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        var child = new ChildProcess(name, process, readyMarker);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    /// <summary>Done when a line of output contains the ready marker; failed when the process exits first.</summary>
    public Task Ready => _ready.Task;
    public bool HasExited => _process.HasExited;

    /// <summary>Done when a line of output (one printed already, or a later one) contains <paramref name="marker"/>.</summary>
    public Task Line(string marker)
    {
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_output)
        {
            if (_output.ToString().Contains(marker, StringComparison.Ordinal)) seen.SetResult();
            else _awaited.Add((marker, seen));
        }
        return seen.Task;
    }
    public string Output { get { lock (_output) return _output.ToString(); } }

    /// <summary>SIGKILL: the process ends at once, without a word to its peers.</summary>
    public void Kill() => _process.Kill();

    public void Dispose()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.WaitForExit(10_000);
        _process.Dispose();
    }

    /// <summary>The path of a project's built program, as the test project's assembly metadata names it (SiloAssembly, GatewayAssembly).</summary>
    public static string Assembly(string key)
    {
        string path = typeof(ChildProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == key).Value!;
        Assert.True(File.Exists(path), $"{path} missing (the test project builds it first)");
        return path;
    }

    /// <summary>A greedy completion of "Once upon a time" through the gateway: it succeeds with <paramref name="tokens"/> tokens.</summary>
    public static async Task AssertCompletes(HttpClient client, int tokens, CancellationToken cancel)
    {
        using var response = await client.PostAsync("v1/completions", new StringContent(
            $$"""{"model":"default","prompt":"Once upon a time","max_tokens":{{tokens}},"temperature":0}""", Encoding.UTF8, "application/json"), cancel);
        string body = await response.Content.ReadAsStringAsync(cancel);
        Assert.True(response.IsSuccessStatusCode, body);
        using var json = JsonDocument.Parse(body);
        Assert.Equal(tokens, json.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    /// <summary>Polls the gateway's readiness probe until it answers 200 (2 minutes at most), failing if the gateway exits.</summary>
    public static async Task WaitForReady(HttpClient client, ChildProcess gateway, CancellationToken cancel)
    {
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (true)
        {
            Assert.False(gateway.HasExited, "the gateway exited");
            try
            {
                using var ready = await client.GetAsync("health/ready", cancel);
                if (ready.StatusCode == HttpStatusCode.OK) return;
            }
            catch (HttpRequestException) { }   // not listening yet
            Assert.True(DateTime.UtcNow < deadline, "the gateway never became ready");
            await Task.Delay(250, cancel);
        }
    }
}
