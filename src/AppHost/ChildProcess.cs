// One child of the app host: a `dotnet <assembly>` process with its own environment, its output prefixed with
// its name, a signal when a chosen line appears, and a graceful stop (SIGTERM, then a kill after a grace period).
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Cluster.AppHost;

public sealed partial class ChildProcess : IDisposable
{
    private readonly Process _process;
    private readonly TaskCompletionSource _readyLine = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ChildProcess(string name, string assembly, IReadOnlyDictionary<string, string> environment, string? readyMarker)
    {
        Name = name;
        var start = new ProcessStartInfo("dotnet", [assembly])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(assembly)!,
        };
        foreach (var (key, value) in environment) start.Environment[key] = value;
        _process = new Process { StartInfo = start, EnableRaisingEvents = true };
        _process.OutputDataReceived += (_, e) => Line(e.Data, readyMarker);
        _process.ErrorDataReceived += (_, e) => Line(e.Data, readyMarker: null);
        _process.Exited += (_, _) => _readyLine.TrySetException(new InvalidOperationException($"{Name} exited with code {_process.ExitCode} before it was ready"));
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public string Name { get; }
    public int Id => _process.Id;
    public bool HasExited => _process.HasExited;

    /// <summary>Completes when the ready marker has been printed; faults if the process exits first.</summary>
    public Task ReadyLine => _readyLine.Task;

    private void Line(string? text, string? readyMarker)
    {
        if (text is null) return;
        Console.WriteLine($"[{Name}] {text}");
        if (readyMarker is not null && text.Contains(readyMarker, StringComparison.Ordinal)) _readyLine.TrySetResult();
    }

    /// <summary>SIGTERM (the .NET host shuts down gracefully on it), then a hard kill if it has not exited in time.</summary>
    public async Task StopAsync(TimeSpan grace)
    {
        if (_process.HasExited) return;
        if (OperatingSystem.IsWindows()) _process.CloseMainWindow();
        else SendSignal(_process.Id, SignalTerminate);
        using var timeout = new CancellationTokenSource(grace);
        try { await _process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            Console.WriteLine($"[{Name}] did not stop within {grace.TotalSeconds:F0} s: killing it");
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
    }

    private const int SignalTerminate = 15;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SendSignal(int pid, int signal);

    public void Dispose() => _process.Dispose();
}
