// Failover with real silo processes, as the issue measured it: three silos on localhost clustering serve the tiny model
// pp=2, and the silo holding stage 1 is killed with SIGKILL while 8 streams run (no goodbye: its peers must find out by
// probing it, SiloSettings.ConfigureMembership). Orleans' response timeout and the scheduler's step timeouts are 10
// minutes, so a stream that waited for either would miss the limit: every stream must complete, with the tokens of an
// undisturbed run, within 2 minutes of the kill.
using System.Diagnostics;
using System.Reflection;
using System.Text;
using Cluster.Contracts;
using Cluster.Tests.AppHost;
using Cluster.Tests.Formats;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;

namespace Cluster.Tests.Grains;

[Collection(nameof(ClusterCollection))]   // one cluster test at a time: the machine has few cores
public sealed class SiloProcessFailoverTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromMinutes(10);

    [Fact(Timeout = 300_000)]
    public async Task StreamsSurviveASigkilledStageSiloWithinTwoMinutes()
    {
        var cancel = TestContext.Current.CancellationToken;
        using var training = new TempDirectory();
        string[] names = ["a", "b", "c"];
        int[] siloPorts = FreePorts.Take(names.Length), gatewayPorts = FreePorts.Take(names.Length);
        var silos = new Dictionary<string, SiloProcess>();
        try
        {
            for (int i = 0; i < names.Length; i++)
                silos[names[i]] = SiloProcess.Start(names[i], new()
                {
                    ["DOTNET_ENVIRONMENT"] = "Development",
                    ["Cluster__SiloName"] = names[i],
                    ["Orleans__Endpoints__SiloPort"] = $"{siloPorts[i]}",
                    ["Orleans__Endpoints__GatewayPort"] = $"{gatewayPorts[i]}",
                    ["Cluster__PrimarySiloEndpoint"] = $"127.0.0.1:{siloPorts[0]}",
                    ["Cluster__Model__Serve"] = "false",
                    ["Cluster__DeviceThreads"] = "1",
                    ["Cluster__Training__Root"] = training.Path,
                    ["Orleans__Messaging__ResponseTimeout"] = Patience.ToString(),
                    ["Cluster__Scheduler__StepTimeout"] = Patience.ToString(),
                    ["Cluster__Scheduler__MinStepTimeout"] = Patience.ToString(),
                });
            foreach (var silo in silos.Values) await silo.Ready.WaitAsync(TimeSpan.FromMinutes(2), cancel);

            // The client's gateway is silo a, which is never killed.
            var clientHost = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
            clientHost.UseOrleansClient(client => client.UseLocalhostClustering(gatewayPorts[0])
                .Configure<ClientMessagingOptions>(o => o.ResponseTimeout = Patience));
            using var host = clientHost.Build();
            await host.StartAsync(cancel);
            var scheduler = host.Services.GetRequiredService<IClusterClient>().GetGrain<IInferenceSchedulerGrain>("sigkill");
            string schedulerSilo = (await scheduler.Status()).Silo;
            string victim = names.Skip(1).First(n => n != schedulerSilo);
            await scheduler.Serve(new ModelServing(TestClusters.Tiny, "pp=2", ["a", victim]));   // stage 1 on the victim
            var requests = ShardedServingTests.MixedRequests(8).Select(r => r with { MaxTokens = 120 }).ToArray();
            var undisturbed = await Task.WhenAll(requests.Select(r => scheduler.GenerateAsync(r, cancel)));

            var started = requests.Select(_ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
            var runs = requests.Select(async (request, i) =>
            {
                var chunks = new List<GeneratedChunk>();
                await foreach (var chunk in scheduler.Generate(request, cancel))
                {
                    chunks.Add(chunk);
                    if (chunks.Count == 2) started[i].SetResult();
                }
                started[i].TrySetResult();
                return chunks;
            }).ToArray();
            await Task.WhenAll(started.Select(s => s.Task));
            Assert.Contains(runs, r => !r.IsCompleted);   // the kill lands mid-stream
            silos[victim].Kill();
            var sinceKill = Stopwatch.StartNew();
            var disturbed = await Task.WhenAll(runs).WaitAsync(TimeSpan.FromMinutes(2), cancel);
            TestContext.Current.TestOutputHelper?.WriteLine($"the streams completed {sinceKill.Elapsed.TotalSeconds:0.0} s after the kill");

            for (int i = 0; i < requests.Length; i++) Assert.Equal(undisturbed[i], disturbed[i]);
            await host.StopAsync(cancel);
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new Exception($"silo output:\n{string.Join("\n", silos.Values.Select(s => s.Output))}", e);
        }
        finally
        {
            foreach (var silo in silos.Values) silo.Dispose();
        }
    }

    /// <summary>A silo process (src/Silo) with its output collected; ready once it logs "ready:".</summary>
    private sealed class SiloProcess : IDisposable
    {
        private readonly Process _process;
        private readonly StringBuilder _output = new();
        private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private SiloProcess(string name, Process process)
        {
            _process = process;
            void Line(string? text)
            {
                if (text is null) return;
                lock (_output) _output.AppendLine($"[{name}] {text}");
                if (text.Contains("ready:", StringComparison.Ordinal)) _ready.TrySetResult();
            }
            _process.OutputDataReceived += (_, e) => Line(e.Data);
            _process.ErrorDataReceived += (_, e) => Line(e.Data);
            _process.Exited += (_, _) => _ready.TrySetException(new Exception($"silo {name} exited with {_process.ExitCode} before it was ready"));
        }

        public static SiloProcess Start(string name, Dictionary<string, string> environment)
        {
            string silo = typeof(SiloProcessFailoverTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "SiloAssembly").Value!;
            Assert.True(File.Exists(silo), $"{silo} missing (the test project builds it first)");
            var start = new ProcessStartInfo("dotnet", [silo]) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var (key, value) in environment) start.Environment[key] = value;
            var process = new Process { StartInfo = start, EnableRaisingEvents = true };
            var child = new SiloProcess(name, process);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            return child;
        }

        public Task Ready => _ready.Task;
        public string Output { get { lock (_output) return _output.ToString(); } }

        /// <summary>SIGKILL: the process ends at once, without a word to its peers.</summary>
        public void Kill() => _process.Kill();

        public void Dispose()
        {
            if (!_process.HasExited) _process.Kill(entireProcessTree: true);
            _process.WaitForExit(10_000);
            _process.Dispose();
        }
    }
}
