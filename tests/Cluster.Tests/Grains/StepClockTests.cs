// The measured step timeout: the cap until a step is measured, then a multiple of the slowest recent step scaled to the
// step's tokens, never under the floor nor over the cap; the window forgets old steps, and a new epoch starts unmeasured.
using Cluster.Grains;

namespace Cluster.Tests.Grains;

public sealed class StepClockTests
{
    private static readonly SchedulerOptions Options = new()
    {
        StepTimeout = TimeSpan.FromMinutes(1), MinStepTimeout = TimeSpan.FromSeconds(2), StepTimeoutFactor = 8,
    };

    [Fact]
    public void AnUnmeasuredEpochGetsTheCap() => Assert.Equal(TimeSpan.FromMinutes(1), new StepClock().TimeoutFor(8, Options));

    [Fact]
    public void AStepGetsAMultipleOfTheSlowestRecentStep()
    {
        var clock = new StepClock();
        clock.Record(TimeSpan.FromSeconds(0.3), 8);
        clock.Record(TimeSpan.FromSeconds(0.5), 8);
        clock.Record(TimeSpan.FromSeconds(0.4), 8);

        Assert.Equal(TimeSpan.FromSeconds(4), clock.TimeoutFor(8, Options));
        Assert.Equal(TimeSpan.FromSeconds(4), clock.TimeoutFor(1, Options));   // fewer tokens: still the slowest step's time
    }

    [Fact]
    public void AStepWithMoreTokensGetsTheSlowestTimePerTokenTimesItsTokens()
    {
        var clock = new StepClock();
        clock.Record(TimeSpan.FromSeconds(0.25), 8);   // decode steps: 31.25 ms a token

        Assert.Equal(TimeSpan.FromSeconds(8 * 0.03125 * 64), clock.TimeoutFor(64, Options));   // a prompt chunk of 64 tokens
        Assert.Equal(TimeSpan.FromMinutes(1), clock.TimeoutFor(256, Options));   // 64 s is over the cap
    }

    [Fact]
    public void FastStepsGetTheFloor()
    {
        var clock = new StepClock();
        clock.Record(TimeSpan.FromMilliseconds(3), 8);
        Assert.Equal(TimeSpan.FromSeconds(2), clock.TimeoutFor(8, Options));
    }

    [Fact]
    public void TheCapWinsOverTheFloor()
    {
        var clock = new StepClock();
        clock.Record(TimeSpan.FromMilliseconds(3), 8);
        Assert.Equal(TimeSpan.FromSeconds(1), clock.TimeoutFor(8, new SchedulerOptions { StepTimeout = TimeSpan.FromSeconds(1), MinStepTimeout = TimeSpan.FromSeconds(2) }));
    }

    [Fact]
    public void ASlowStepIsForgottenAfterAWindowOfOthers()
    {
        var clock = new StepClock();
        clock.Record(TimeSpan.FromSeconds(5), 8);
        for (int i = 0; i < StepClock.Window - 1; i++) clock.Record(TimeSpan.FromSeconds(0.5), 8);
        Assert.Equal(TimeSpan.FromSeconds(40), clock.TimeoutFor(8, Options));

        clock.Record(TimeSpan.FromSeconds(0.5), 8);
        Assert.Equal(TimeSpan.FromSeconds(4), clock.TimeoutFor(8, Options));
    }

    [Fact]
    public void ResetStartsUnmeasured()
    {
        var clock = new StepClock();
        clock.Record(TimeSpan.FromSeconds(0.5), 8);
        clock.Reset();
        Assert.Equal(TimeSpan.FromMinutes(1), clock.TimeoutFor(8, Options));
    }
}
