// A fixed set of worker threads that run one parallel-for at a time. The calling thread is worker 0,
// so a pool of 1 runs everything inline with no synchronisation (the world-size-1 fast path).
// Workers spin briefly before sleeping, because GEMMs during decode arrive microseconds apart.
namespace Cluster.Compute.Cpu;

public sealed class WorkerPool : IDisposable
{
    private readonly Thread[] _threads;
    private readonly ManualResetEventSlim[] _wake;
    private Action<int>? _work;
    private int _pending;
    private Exception? _failure;
    private volatile bool _disposed;

    public WorkerPool(int threads)
    {
        if (threads < 1) throw new ArgumentOutOfRangeException(nameof(threads), threads, "a pool needs at least one thread");
        Threads = threads;
        _threads = new Thread[threads - 1];
        _wake = new ManualResetEventSlim[threads - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            int worker = i + 1;
            _wake[i] = new ManualResetEventSlim(false, spinCount: 2000);
            _threads[i] = new Thread(() => WorkerLoop(worker)) { IsBackground = true, Name = $"cpu-worker-{worker}" };
            _threads[i].Start();
        }
    }

    public int Threads { get; }

    /// <summary>Runs work(worker) for worker = 0..Threads-1 concurrently and returns when all are done.</summary>
    public void Run(Action<int> work)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Threads == 1)
        {
            work(0);
            return;
        }
        _work = work;
        _failure = null;
        Volatile.Write(ref _pending, Threads - 1);
        foreach (var wake in _wake) wake.Set();
        try
        {
            work(0);
        }
        finally
        {
            var spinner = new SpinWait();
            while (Volatile.Read(ref _pending) != 0) spinner.SpinOnce(sleep1Threshold: -1);
            _work = null;
        }
        if (_failure is { } failure) throw new AggregateException("a worker failed", failure);
    }

    /// <summary>Splits [0, count) into one contiguous range per worker and runs body(start, end) on each.</summary>
    public void For(int count, Action<int, int> body)
    {
        if (count <= 0) return;
        int workers = Math.Min(Threads, count);
        if (workers == 1)
        {
            body(0, count);
            return;
        }
        Run(worker =>
        {
            if (worker >= workers) return;
            body((int)((long)count * worker / workers), (int)((long)count * (worker + 1) / workers));
        });
    }

    private void WorkerLoop(int worker)
    {
        var wake = _wake[worker - 1];
        while (true)
        {
            wake.Wait();
            wake.Reset();
            if (_disposed) return;
            try
            {
                _work!(worker);
            }
            catch (Exception e)
            {
                _failure = e;
            }
            Interlocked.Decrement(ref _pending);
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var wake in _wake) wake.Set();
        foreach (var thread in _threads) thread.Join();
        foreach (var wake in _wake) wake.Dispose();
    }
}
