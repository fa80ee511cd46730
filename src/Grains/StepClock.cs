// A replica's measured step times, and the timeout they give its next step: a step may take StepTimeoutFactor times
// what the slowest of the last Window steps suggests for its size (that step's time, or the slowest time per token
// times the step's tokens when it carries more: a prompt chunk after decode steps), never less than MinStepTimeout nor
// more than StepTimeout. A new epoch starts unmeasured (its shards may sit on other devices, and a first step warms
// up): until one of its steps is measured, StepTimeout applies.
namespace Cluster.Grains;

public sealed class StepClock
{
    public const int Window = 64;

    private readonly (double Seconds, int Tokens)[] _recent = new (double, int)[Window];
    private int _count, _next;

    public void Record(TimeSpan elapsed, int tokens)
    {
        _recent[_next] = (elapsed.TotalSeconds, tokens);
        _next = (_next + 1) % Window;
        _count = Math.Min(_count + 1, Window);
    }

    public void Reset() => _count = _next = 0;

    public TimeSpan TimeoutFor(int tokens, SchedulerOptions options)
    {
        if (_count == 0) return options.StepTimeout;
        double slowest = 0, slowestPerToken = 0;
        for (int i = 0; i < _count; i++)
        {
            var (seconds, n) = _recent[i];
            slowest = Math.Max(slowest, seconds);
            slowestPerToken = Math.Max(slowestPerToken, seconds / Math.Max(1, n));
        }
        double expected = Math.Max(slowest, slowestPerToken * tokens);
        double timeout = Math.Max(options.MinStepTimeout.TotalSeconds, options.StepTimeoutFactor * expected);
        return timeout < options.StepTimeout.TotalSeconds ? TimeSpan.FromSeconds(timeout) : options.StepTimeout;
    }
}
