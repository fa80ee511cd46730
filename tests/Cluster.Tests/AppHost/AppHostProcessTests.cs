// The app host as a user runs it, a real process: it starts DCP, the Aspire dashboard, two silos and the gateway, and
// on SIGTERM (what Ctrl+C becomes for a service manager; a script's background SIGINT is ignored) it stops every one of
// them. Its children are found by a marker variable in their environment (DCP passes the app host's environment on).
using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Tests.Formats;

namespace Cluster.Tests.AppHost;

[Collection(nameof(AppHostCollection))]
public sealed partial class AppHostProcessTests
{
    [Fact]
    public async Task SigtermStopsTheDashboardTheSilosAndTheGateway()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("reads /proc and sends SIGTERM through libc: Linux only");
        var cancel = TestContext.Current.CancellationToken;
        string appHost = typeof(AppHostProcessTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .Single(a => a.Key == "AppHostAssembly").Value!;
        Assert.True(File.Exists(appHost), $"{appHost} missing (the test project builds the app host first)");
        using var folder = new TempDirectory();
        string model = folder.File("tiny.gguf");
        GgufWriter.Write(RandomModel.Create("tiny"), model, name: "tiny");
        string marker = Guid.NewGuid().ToString("N");
        var ports = FreePorts.Take(7);
        var start = new ProcessStartInfo("dotnet", [appHost, "--model", model, "--train-steps", "0", "--port", $"{ports[0]}",
            "--silo-port", $"{ports[1]}", "--gateway-port", $"{ports[3]}", "--data-dir", folder.File("data"), "--training-root", folder.File("training")])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            // What src/AppHost/Properties/launchSettings.json gives `dotnet run`, on ports of this test's own.
            Environment =
            {
                ["DOTNET_ENVIRONMENT"] = "Development",
                ["ASPNETCORE_URLS"] = $"http://127.0.0.1:{ports[5]}",
                ["ASPIRE_DASHBOARD_OTLP_ENDPOINT_URL"] = $"http://127.0.0.1:{ports[6]}",
                ["ASPIRE_ALLOW_UNSECURED_TRANSPORT"] = "true",
                ["Cluster__TestRun"] = marker,
            },
        };
        using var host = Process.Start(start)!;
        var output = new StringBuilder();
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (output) output.AppendLine(e.Data);
            if (e.Data.StartsWith("Cluster ready", StringComparison.Ordinal)) ready.TrySetResult();
        };
        host.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        host.BeginOutputReadLine();
        host.BeginErrorReadLine();
        try
        {
            await ready.Task.WaitAsync(TimeSpan.FromMinutes(4), cancel);
            var children = ProcessesWithMarker(marker).Where(p => p != host.Id).ToList();
            var names = children.Select(CommandLine).ToList();
            Assert.Equal(2, names.Count(n => n.Contains("Cluster.Silo", StringComparison.Ordinal) && !n.Contains("dotnet run", StringComparison.Ordinal)));
            Assert.Contains(names, n => n.Contains("Cluster.Gateway", StringComparison.Ordinal) && !n.Contains("dotnet run", StringComparison.Ordinal));
            Assert.Contains(names, n => n.Contains("Aspire.Dashboard", StringComparison.Ordinal));
            Assert.Contains(names, n => n.Contains("dcp", StringComparison.Ordinal));

            Assert.Equal(0, SendSignal(host.Id, SignalTerminate));
            await host.WaitForExitAsync(cancel).WaitAsync(TimeSpan.FromSeconds(90), cancel);
            // DCP stops the resources as the app host goes; give the last of them a moment to exit.
            for (int i = 0; i < 60 && ProcessesWithMarker(marker).Any(); i++) await Task.Delay(500, cancel);
            var left = ProcessesWithMarker(marker).Select(CommandLine).ToList();
            Assert.True(left.Count == 0, $"still running after the app host exited:\n{string.Join('\n', left)}");
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            lock (output) throw new Exception($"app host output:\n{output}", e);
        }
        finally
        {
            if (!host.HasExited) host.Kill(entireProcessTree: true);
            foreach (int pid in ProcessesWithMarker(marker)) try { Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { }
        }
    }

    /// <summary>Live (not zombie) processes whose environment holds Cluster__TestRun=<paramref name="marker"/>.</summary>
    private static IEnumerable<int> ProcessesWithMarker(string marker)
    {
        byte[] wanted = Encoding.UTF8.GetBytes($"Cluster__TestRun={marker}");
        foreach (string directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), out int pid)) continue;
            byte[] environment;
            string stat;
            try
            {
                environment = File.ReadAllBytes(Path.Combine(directory, "environ"));
                stat = File.ReadAllText(Path.Combine(directory, "stat"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            bool zombie = stat[(stat.LastIndexOf(')') + 2)..].StartsWith('Z');
            if (!zombie && environment.AsSpan().IndexOf(wanted) >= 0) yield return pid;
        }
    }

    private static string CommandLine(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' '); }
        catch (IOException) { return $"(pid {pid}, exited)"; }
    }

    private const int SignalTerminate = 15;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SendSignal(int pid, int signal);
}
