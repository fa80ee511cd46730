// The app host as users run it: a real process that starts two silos and the gateway, serves a completion over
// HTTP, runs its training demo (additions, pp=2 × dp=2 across the two silos, 1500 steps) until the trained model is
// served and answers "23+19=" with "42" and its loss is below 0.1, and on SIGINT (Ctrl+C) stops every child it started.
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Cluster.Tests.AppHost;

public sealed partial class AppHostEndToEndTests
{
    [Fact]
    public async Task StartsServesTrainsTheDemoAndStopsEveryChildOnCtrlC()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("sends SIGINT through libc: Linux only");
        string appHost = typeof(AppHostEndToEndTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .Single(a => a.Key == "AppHostAssembly").Value!;
        Assert.True(File.Exists(appHost), $"{appHost} missing (the test project builds the app host first)");
        int http = FreePort(), silo = FreePort(), gateway = FreePort();
        var start = new ProcessStartInfo("dotnet", [appHost, "--port", $"{http}", "--silo-port", $"{silo}", "--gateway-port", $"{gateway}"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var host = Process.Start(start)!;
        var output = new StringBuilder();
        var ready = new TaskCompletionSource<int[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        var trained = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        host.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (output) output.AppendLine(e.Data);
            if (e.Data.StartsWith("Training demo: trained", StringComparison.Ordinal) || e.Data.StartsWith("Training demo: the job ended", StringComparison.Ordinal))
                trained.TrySetResult(e.Data);
            const string marker = "Cluster ready (child pids: ";
            int at = e.Data.IndexOf(marker, StringComparison.Ordinal);
            if (at >= 0) ready.TrySetResult(e.Data[(at + marker.Length)..].TrimEnd(')').Split(' ').Select(int.Parse).ToArray());
        };
        host.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        host.BeginOutputReadLine();
        host.BeginErrorReadLine();
        try
        {
            int[] children = await ready.Task.WaitAsync(TimeSpan.FromMinutes(3), TestContext.Current.CancellationToken);
            Assert.Equal(3, children.Length);

            using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{http}/") };
            using var response = await client.PostAsync("v1/completions",
                new StringContent("""{"model":"default","prompt":"Once upon a time","max_tokens":8,"temperature":0}""", Encoding.UTF8, "application/json"),
                TestContext.Current.CancellationToken);
            string body = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            Assert.True(response.IsSuccessStatusCode, body);
            using var json = JsonDocument.Parse(body);
            Assert.Equal("text_completion", json.RootElement.GetProperty("object").GetString());

            string demo = await trained.Task.WaitAsync(TimeSpan.FromMinutes(8), TestContext.Current.CancellationToken);
            Assert.EndsWith("23+19=42", demo);
            string finalStep;
            lock (output) finalStep = output.ToString().Split('\n').Last(l => l.Contains("step 1500/1500 loss"));
            float loss = float.Parse(finalStep.Split("loss ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            Assert.True(loss < 0.1f, $"final loss {loss}");

            Assert.Equal(0, SendSignal(host.Id, SignalInterrupt));
            await host.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
            Assert.Equal(0, host.ExitCode);
            foreach (int pid in children) Assert.False(IsRunning(pid), $"child {pid} still running after the app host exited");
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            lock (output) throw new Exception($"app host output:\n{output}", e);
        }
        finally
        {
            if (!host.HasExited) host.Kill(entireProcessTree: true);
        }
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException) { return false; }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private const int SignalInterrupt = 2;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SendSignal(int pid, int signal);
}
