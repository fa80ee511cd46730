// Failures that repeat do not loop: faults injected with an Orleans call filter on the shard grains of one model show
// that a step failing every time fails its request after SchedulerOptions.MaxStepFailures replays (and the model
// serves again once the fault is gone), and that a configured model whose first start failed starts on the next request
// instead of keeping the failed start.
using Cluster.Contracts;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;

namespace Cluster.Tests.Grains;

public sealed class SchedulerFailureTests : IAsyncLifetime
{
    /// <summary>Fails calls to the named method of shard grains whose key starts with the model id, while armed.</summary>
    private sealed class ShardFault : IIncomingGrainCallFilter
    {
        public static volatile string? Model;
        public static volatile string? Method;
        public static volatile int Remaining;
        public static int Failed;

        public Task Invoke(IIncomingGrainCallContext context)
        {
            if (context.Grain is IShardGrain && Model is { } model && context.TargetId.Key.ToString()!.StartsWith(model + "/", StringComparison.Ordinal)
                && context.ImplementationMethod.Name == Method && Remaining > 0)
            {
                Remaining--;
                Interlocked.Increment(ref Failed);
                throw new InvalidOperationException($"injected fault in {Method}");
            }
            return context.Invoke();
        }
    }

    private InProcessTestCluster _cluster = null!;

    public async ValueTask InitializeAsync() => _cluster = await TestClusters.StartAsync(silos: 1,
        schedulers: o =>
        {
            o.MaxStepFailures = 2;
            o.ConfiguredModels["configured"] = new ModelServing(TestClusters.Tiny);
        },
        silo: (_, silo) => silo.Services.AddSingleton<IIncomingGrainCallFilter, ShardFault>());

    public async ValueTask DisposeAsync()
    {
        ShardFault.Model = null;
        await _cluster.StopAllSilosAsync();
        await _cluster.DisposeAsync();
    }

    private static GenerationRequest Request => new() { Prompt = "a", MaxTokens = 4, Temperature = 0, StopAtEos = false };

    [Fact]
    public async Task AStepThatFailsEveryTimeFailsItsRequestAfterItsReplays()
    {
        var cancel = TestContext.Current.CancellationToken;
        var scheduler = _cluster.Client.GetGrain<IInferenceSchedulerGrain>("faulty");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny));
        (ShardFault.Model, ShardFault.Method, ShardFault.Remaining, ShardFault.Failed) = ("faulty", nameof(IShardGrain.Forward), int.MaxValue, 0);

        var error = await Assert.ThrowsAsync<ModelUnavailableException>(() => scheduler.GenerateAsync(Request, cancel));
        Assert.Contains("failed 3 times", error.Message);
        Assert.Equal(3, ShardFault.Failed);   // the first try and MaxStepFailures replays, no more

        ShardFault.Remaining = 0;   // the fault is gone: the model serves again
        Assert.Equal(4, (await scheduler.GenerateAsync(Request, cancel)).Count);
    }

    [Fact]
    public async Task AConfiguredModelWhoseStartFailedStartsOnTheNextRequest()
    {
        var cancel = TestContext.Current.CancellationToken;
        (ShardFault.Model, ShardFault.Method, ShardFault.Remaining, ShardFault.Failed) = ("configured", nameof(IShardGrain.Load), 1, 0);
        var scheduler = _cluster.Client.GetGrain<IInferenceSchedulerGrain>("configured");

        await Assert.ThrowsAnyAsync<Exception>(() => scheduler.GenerateAsync(Request, cancel));
        Assert.Equal(1, ShardFault.Failed);
        Assert.Equal(4, (await scheduler.GenerateAsync(Request, cancel)).Count);
    }
}
