// Where a transport puts arrived messages until a receive asks for them: keyed by (sender, tag), so the
// order messages arrive in does not matter. Thread-safe; every message is consumed exactly once.
namespace Cluster.Compute.Collectives;

public sealed class CollectiveMailbox
{
    private readonly Lock _lock = new();
    private readonly Dictionary<(int From, long Tag), byte[]> _arrived = [];
    private readonly Dictionary<(int From, long Tag), TaskCompletionSource<byte[]>> _waiting = [];
    private Exception? _failure;

    /// <summary>Messages that arrived and were not received yet.</summary>
    public int Pending { get { lock (_lock) return _arrived.Count; } }

    /// <summary>Stores a message, or completes the receive already waiting for it. Dropped after <see cref="Fail"/>.</summary>
    public void Deliver(int from, long tag, byte[] data)
    {
        ArgumentNullException.ThrowIfNull(data);
        lock (_lock)
        {
            if (_failure is not null) return;   // the group is gone; a late message has nobody to go to
            // Waiters complete inside the lock: they run their continuations asynchronously, and this way a
            // concurrent cancellation either finds the waiter still registered or finds it already completed.
            if (_waiting.Remove((from, tag), out var waiter)) waiter.SetResult(data);
            else if (!_arrived.TryAdd((from, tag), data))
                throw new InvalidOperationException($"a message from rank {from} with tag {tag:X} arrived while an earlier one with the same tag is still undelivered");
        }
    }

    /// <summary>Completes with the message from rank <paramref name="from"/> with <paramref name="tag"/>, consuming it.</summary>
    public Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default)
    {
        TaskCompletionSource<byte[]> waiter;
        lock (_lock)
        {
            if (_failure is not null) return Task.FromException<byte[]>(_failure);
            if (_arrived.Remove((from, tag), out var data)) return Task.FromResult(data);
            if (cancellation.IsCancellationRequested) return Task.FromCanceled<byte[]>(cancellation);
            waiter = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
            if (!_waiting.TryAdd((from, tag), waiter))
                throw new InvalidOperationException($"a receive from rank {from} with tag {tag:X} is already waiting");
        }
        return cancellation.CanBeCanceled ? WaitCancellable(from, tag, waiter, cancellation) : waiter.Task;
    }

    /// <summary>Faults every waiting and every future receive with <paramref name="failure"/> (the group is torn down).</summary>
    public void Fail(Exception failure)
    {
        ArgumentNullException.ThrowIfNull(failure);
        lock (_lock)
        {
            _failure ??= failure;
            foreach (var waiter in _waiting.Values) waiter.SetException(_failure);
            _waiting.Clear();
            _arrived.Clear();
        }
    }

    private async Task<byte[]> WaitCancellable(int from, long tag, TaskCompletionSource<byte[]> waiter, CancellationToken cancellation)
    {
        using var registration = cancellation.Register(() =>
        {
            lock (_lock)
                if (_waiting.Remove((from, tag), out var registered))
                    registered.SetCanceled(cancellation);
        });
        return await waiter.Task;
    }
}
