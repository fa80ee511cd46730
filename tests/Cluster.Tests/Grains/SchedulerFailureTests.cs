// Failures that repeat do not loop: faults injected with an Orleans call filter on the shard grains of one model show
// that a step failing every time fails its request after SchedulerOptions.MaxStepFailures replays (and the model
// serves again once the fault is gone), and that a configured model whose first start failed starts on the next request
// instead of keeping the failed start. A stage that stops answering, on a silo that lives, is given up after the time
// its recent steps took, not after the 10-minute cap (or Orleans' response timeout, 10 minutes here too), and the
// request finishes with the tokens it would have had.
using Cluster.Contracts;
using Microsoft.Extensions.DependencyInjection;
using Orleans.Configuration;
using Orleans.TestingHost;

namespace Cluster.Tests.Grains;

public sealed class SchedulerFailureTests : IAsyncLifetime
{
    /// <summary>Fails (with Hold set, once it is released) calls to the named method of shard grains whose key starts with the model id, while armed.</summary>
    private sealed class ShardFault : IIncomingGrainCallFilter
    {
        public static volatile string? Model;
        public static volatile string? Method;
        public static volatile int Remaining;
        public static volatile TaskCompletionSource? Hold;
        public static int Failed;

        public async Task Invoke(IIncomingGrainCallContext context)
        {
            if (context.Grain is IShardGrain && Model is { } model && context.TargetId.Key.ToString()!.StartsWith(model + "/", StringComparison.Ordinal)
                && context.ImplementationMethod.Name == Method && Remaining > 0)
            {
                Remaining--;
                Interlocked.Increment(ref Failed);
                if (Hold is { } hold) await hold.Task;
                throw new InvalidOperationException($"injected fault in {Method}");
            }
            await context.Invoke();
        }
    }

    private InProcessTestCluster _cluster = null!;

    public async ValueTask InitializeAsync() => _cluster = await TestClusters.StartAsync(silos: 1,
        schedulers: o =>
        {
            o.StepTimeout = TimeSpan.FromMinutes(10);   // the cap: only a timeout measured from the steps can end a hung one in time
            o.MaxStepFailures = 2;
            o.ConfiguredModels["configured"] = new ModelServing(TestClusters.Tiny);
        },
        silo: (_, silo) =>
        {
            silo.Services.AddSingleton<IIncomingGrainCallFilter, ShardFault>();
            silo.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromMinutes(10));   // nor can Orleans' response timeout
        });

    public async ValueTask DisposeAsync()
    {
        ShardFault.Model = null;
        ShardFault.Hold?.TrySetResult();   // a held call ends, so the silo stops
        ShardFault.Hold = null;
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

    [Fact(Timeout = 120_000)]
    public async Task AStageThatStopsAnsweringIsGivenUpAfterItsMeasuredStepTime()
    {
        var cancel = TestContext.Current.CancellationToken;
        var scheduler = _cluster.Client.GetGrain<IInferenceSchedulerGrain>("hung");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny));
        var request = Request with { MaxTokens = 16 };
        var undisturbed = await scheduler.GenerateAsync(request, cancel);   // measures the epoch's steps
        (ShardFault.Model, ShardFault.Method, ShardFault.Remaining, ShardFault.Failed, ShardFault.Hold) =
            ("hung", nameof(IShardGrain.Forward), 1, 0, new(TaskCreationOptions.RunContinuationsAsynchronously));

        var disturbed = await scheduler.GenerateAsync(request, cancel);

        Assert.Equal(1, ShardFault.Failed);   // one step hung, was given up and replayed on a new epoch
        Assert.Equal(undisturbed, disturbed);
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
