// One dedicated OS thread that runs every piece of work for a device, in submission order.
// ILGPU binds the CUDA context to the thread that created the accelerator, so every accelerator
// call (allocation, copy, kernel launch, disposal) must happen on that same thread.
using System.Collections.Concurrent;

namespace Cluster.Compute.Ilgpu;

internal sealed class DeviceThread : IDisposable
{
    private readonly BlockingCollection<Action> queue = new();
    private readonly Thread thread;

    public DeviceThread(string name)
    {
        thread = new Thread(ProcessQueue) { IsBackground = true, Name = name };
        thread.Start();
    }

    public int ManagedThreadId => thread.ManagedThreadId;

    /// <summary>Runs work on the device thread and waits for it; its exception is rethrown here.</summary>
    public T Run<T>(Func<T> work)
    {
        // Work already on the device thread (a nested call) runs inline: queueing it would deadlock.
        if (Environment.CurrentManagedThreadId == thread.ManagedThreadId) return work();
        var completion = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            queue.Add(() =>
            {
                try { completion.SetResult(work()); }
                catch (Exception exception) { completion.SetException(exception); }
            });
        }
        catch (InvalidOperationException)
        {
            throw new ObjectDisposedException(nameof(DeviceThread), "the device has been disposed");
        }
        return completion.Task.GetAwaiter().GetResult();
    }

    public void Run(Action work) => Run<bool>(() => { work(); return true; });

    private void ProcessQueue()
    {
        foreach (var work in queue.GetConsumingEnumerable()) work();
    }

    /// <summary>Lets queued work finish, then ends the thread.</summary>
    public void Dispose()
    {
        queue.CompleteAdding();
        if (Environment.CurrentManagedThreadId == thread.ManagedThreadId) return;   // the loop ends after this work item
        thread.Join();
        queue.Dispose();
    }
}
