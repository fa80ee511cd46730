// A generation stream that outlives its scheduler: when the silo running the model's scheduler dies mid-stream, the
// request goes again with the tokens delivered so far (GenerationRequest.Resume), and the scheduler, activated anew
// on a live silo, carries on after them with exactly the tokens it would have produced (its sampler skips ahead).
// A call pending on a silo that died is never answered (the Orleans client breaks it only at its response timeout), so
// while no chunk comes the stream asks the scheduler for its incarnation every ProbeInterval (every ProbeTimeout +
// ProbeRetryDelay while a probe goes unanswered): an answer from another activation than the stream's means the
// stream's is gone, and it resumes at once. The same activation answering while
// it has generated tokens this stream never received (StreamProgress), on two probes in a row, means the pending call
// lost its response (it was to come back through a gateway silo that died): the stream resumes too, rather than wait
// for Orleans' response timeout.
using Cluster.Contracts;

namespace Cluster.Gateway;

public sealed class ResumableGeneration(
    IInferenceSchedulerGrain scheduler, GenerationRequest generation, TimeSpan patience, CancellationToken cancellation) : IAsyncDisposable
{
    private readonly GenerationRequest _request = generation.Stream == Guid.Empty ? generation with { Stream = Guid.NewGuid() } : generation;

    /// <summary>How long a chunk may be awaited before the scheduler is asked whether it is still the stream's, and between two probes it answered.</summary>
    public static readonly TimeSpan ProbeInterval = TimeSpan.FromSeconds(2);

    /// <summary>
    /// A probe not answered this soon is sent again (after <see cref="ProbeRetryDelay"/>): one sent to a silo that just
    /// died hangs, while the scheduler's next activation, once the directory lets it start, answers the next one at once.
    /// </summary>
    private static readonly TimeSpan ProbeTimeout = TimeSpan.FromMilliseconds(500), ProbeRetryDelay = TimeSpan.FromMilliseconds(250);

    private readonly List<int> _delivered = [];
    private IAsyncEnumerator<GeneratedChunk>? _chunks;
    private Guid _incarnation;   // the activation the current enumeration runs on

    public GeneratedChunk Current => _chunks?.Current ?? throw new InvalidOperationException("no chunk yet");

    /// <summary>The next chunk; gives up on a lost scheduler after <c>patience</c> without one.</summary>
    public async Task<bool> MoveNextAsync()
    {
        var deadline = DateTime.UtcNow + patience;
        while (true)
        {
            try
            {
                if (_chunks is null)
                {
                    _incarnation = await scheduler.Incarnation().WaitAsync(ProbeInterval, cancellation);
                    _chunks = scheduler.Generate(_request with { Resume = [.. _delivered] }, cancellation).GetAsyncEnumerator(cancellation);
                }
                if (!await NextChunk(_chunks)) return false;
                _delivered.Add(_chunks.Current.TokenId);
                return true;
            }
            catch (Exception e) when (IsLostScheduler(e) && DateTime.UtcNow < deadline && !cancellation.IsCancellationRequested)
            {
                await DropChunks();
                await Task.Delay(TimeSpan.FromMilliseconds(250), cancellation);
            }
        }
    }

    /// <summary>
    /// The enumerator's next chunk, or a SiloUnavailableException once another activation answers for the scheduler, or
    /// once the same one has twice in a row generated tokens that did not arrive.
    /// </summary>
    private async Task<bool> NextChunk(IAsyncEnumerator<GeneratedChunk> chunks)
    {
        var next = chunks.MoveNextAsync().AsTask();
        int missing = 0;   // probes in a row that found tokens generated for this stream that never reached it
        var wait = ProbeInterval;
        while (await Task.WhenAny(next, Task.Delay(wait, cancellation)) != next)
        {
            try
            {
                if (await scheduler.Incarnation().WaitAsync(ProbeTimeout, cancellation) != _incarnation)
                    throw Lost(next, $"the scheduler of this stream was replaced (activation {_incarnation} gone)");
                // Still the stream's scheduler: a long prompt or a queue, unless it generated tokens that never came.
                int generated = await scheduler.StreamProgress(_request.Stream).WaitAsync(ProbeTimeout, cancellation);
                missing = generated > _delivered.Count ? missing + 1 : 0;
                if (missing >= 2)
                    throw Lost(next, $"the scheduler generated {generated} tokens of this stream, {_delivered.Count} arrived: the call lost its response");
                wait = ProbeInterval;
            }
            catch (TimeoutException) { wait = ProbeRetryDelay; }   // no answer yet: the silo may be dying; ask again soon
        }
        return await next;
    }

    private static SiloUnavailableException Lost(Task<bool> pending, string why)
    {
        _ = pending.ContinueWith(t => t.Exception, TaskScheduler.Default);   // the lost call's late end is observed, not awaited
        return new SiloUnavailableException(why);
    }

    private static bool IsLostScheduler(Exception e) =>
        e is SiloUnavailableException or OrleansMessageRejectionException or EnumerationAbortedException or TimeoutException;

    private async Task DropChunks()
    {
        if (_chunks is null) return;
        // The enumerator lived on the lost silo: there may be nothing left to dispose, and no answer to wait for.
        try { await _chunks.DisposeAsync().AsTask().WaitAsync(ProbeInterval); }
        catch (Exception) { }
        _chunks = null;
    }

    /// <summary>Ends the generation on the scheduler (a stream left early frees its sequence at once); idempotent.</summary>
    public async ValueTask DisposeAsync()
    {
        var chunks = _chunks;
        _chunks = null;
        if (chunks is not null) await chunks.DisposeAsync();
    }
}
