// A generation stream that outlives its scheduler: when the silo running the model's scheduler dies mid-stream, the
// request goes again with the tokens delivered so far (GenerationRequest.Resume), and the scheduler, activated anew
// on a live silo, carries on after them with exactly the tokens it would have produced (its sampler skips ahead).
using Cluster.Contracts;

namespace Cluster.Gateway;

public sealed class ResumableGeneration(
    IInferenceSchedulerGrain scheduler, GenerationRequest request, TimeSpan patience, CancellationToken cancellation) : IAsyncDisposable
{
    private readonly List<int> _delivered = [];
    private IAsyncEnumerator<GeneratedChunk>? _chunks;

    public GeneratedChunk Current => _chunks?.Current ?? throw new InvalidOperationException("no chunk yet");

    /// <summary>The next chunk; gives up on a lost scheduler after <c>patience</c> without one.</summary>
    public async Task<bool> MoveNextAsync()
    {
        var deadline = DateTime.UtcNow + patience;
        while (true)
        {
            _chunks ??= scheduler.Generate(request with { Resume = [.. _delivered] }, cancellation).GetAsyncEnumerator(cancellation);
            try
            {
                if (!await _chunks.MoveNextAsync()) return false;
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

    private static bool IsLostScheduler(Exception e) =>
        e is SiloUnavailableException or OrleansMessageRejectionException or EnumerationAbortedException or TimeoutException;

    private async Task DropChunks()
    {
        try { await _chunks!.DisposeAsync(); }
        catch (Exception) { }   // the enumerator lived on the lost silo: there is nothing left to dispose
        _chunks = null;
    }

    public async ValueTask DisposeAsync()
    {
        if (_chunks is not null) await _chunks.DisposeAsync();
    }
}
