// Cluster.AppHost: `dotnet run -c Release --project src/AppHost [-- --model PATH [--tokenizer PATH] [--layout pp=2] [--port 8080]
// [--train-steps N] [--training-root DIR]]` starts a primary silo, a second silo and the gateway as separate processes,
// wires them with the Orleans__* and OTEL_* variables an Aspire app host would set, waits until all are ready, prints
// the URLs, runs the training demo (a job that teaches a small model additions across both silos, then serves it and
// asks it "23+19="), and on Ctrl+C stops them all.
using System.Runtime.InteropServices;
using Cluster.AppHost;

var options = AppHostOptions.Parse(args);
var children = new List<ChildProcess>();
var shutdown = new CancellationTokenSource();
// Ctrl+C (SIGINT) and SIGTERM only request the shutdown; the finally below stops every child before we exit.
void RequestShutdown(PosixSignalContext signal)
{
    signal.Cancel = true;
    shutdown.Cancel();
}
using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, RequestShutdown);
using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, RequestShutdown);

try
{
    var common = options.CommonEnvironment();
    var primary = new ChildProcess("silo-1", AppHostOptions.Assembly("SiloAssembly"), options.SiloEnvironment(common, 0, last: false), "ready:");
    children.Add(primary);
    await primary.ReadyLine.WaitAsync(options.StartTimeout, shutdown.Token);
    var second = new ChildProcess("silo-2", AppHostOptions.Assembly("SiloAssembly"), options.SiloEnvironment(common, 1, last: true), "ready:");
    children.Add(second);
    await second.ReadyLine.WaitAsync(options.StartTimeout, shutdown.Token);
    var gateway = new ChildProcess("gateway", AppHostOptions.Assembly("GatewayAssembly"), options.GatewayEnvironment(common), readyMarker: null);
    children.Add(gateway);
    await AppHostOptions.WaitForHttpReady(new Uri(options.GatewayUrl, "/health/ready"), gateway, options.StartTimeout, shutdown.Token);

    Console.WriteLine($$"""
        Cluster ready (child pids: {{string.Join(' ', children.Select(c => c.Id))}})
          OpenAI-compatible API: {{options.GatewayUrl}}v1  (GET /v1/models, POST /v1/completions, POST /v1/chat/completions)
          try: curl {{options.GatewayUrl}}v1/completions -H 'Content-Type: application/json' -d '{"model":"default","prompt":"Once upon a time","max_tokens":32}'
          Ctrl+C stops everything.
        """);
    if (options.TrainSteps > 0) await TrainingDemo.RunAsync(options, shutdown.Token);
    await Task.Delay(Timeout.Infinite, shutdown.Token);
    return 0;
}
catch (OperationCanceledException) when (shutdown.IsCancellationRequested)
{
    return 0;
}
catch (Exception e) when (e is InvalidOperationException or TimeoutException)
{
    Console.Error.WriteLine($"app host: {e.Message}");
    return 1;
}
finally
{
    Console.WriteLine("stopping...");
    // Gateway first, then the silos in reverse order, so clients never see a half-stopped cluster.
    for (int i = children.Count - 1; i >= 0; i--)
    {
        await children[i].StopAsync(TimeSpan.FromSeconds(15));
        children[i].Dispose();
    }
    Console.WriteLine("all processes stopped");
}
