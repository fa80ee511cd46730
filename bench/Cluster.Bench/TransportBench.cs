// How fast bytes move between grains, to choose how activations and collective chunks travel between shards.
// On a 2-silo in-process cluster (silos talk over loopback TCP), a sender grain pinned to the first silo calls a
// receiver grain pinned to the same silo or to the other one, one call at a time, with the payload as byte[],
// Immutable<byte[]>, float[] or ArraySegment<byte> (same byte count; the last is how memory streams carry events
// between their queue grain and pulling agent); and Orleans memory streams carry events from a producer on the first
// silo to an (implicitly subscribed) consumer on the second, in order. MB/s = payload bytes / wall time.
// Run: dotnet run -c Release --project bench/Cluster.Bench -- transport
using System.Diagnostics;
using Cluster.Grains;
using Orleans.Concurrency;
using Orleans.Hosting;
using Orleans.Streams;
using Orleans.Streams.Core;

namespace Cluster.Bench;

public enum PayloadKind { Bytes, ImmutableBytes, Floats, ByteSegment }

[GenerateSerializer, Immutable]
public sealed record TransportSample([property: Id(0)] int Calls, [property: Id(1)] double Seconds, [property: Id(2)] string ReceiverSilo);

/// <summary>Sender and receiver of the grain-call measurement (key "name@silo" pins it).</summary>
public interface ITransportBenchGrain : IGrainWithStringKey
{
    Task<int> TakeBytes(byte[] data);
    Task<int> TakeImmutable(Immutable<byte[]> data);
    Task<int> TakeFloats(float[] data);
    Task<int> TakeSegment(ArraySegment<byte> data);
    Task<string> Silo();

    /// <summary>After 2 warm-up calls, sends payloads to the receiver one call at a time until both minimums (or the cap) are reached.</summary>
    Task<TransportSample> SendTo(string receiver, PayloadKind kind, int bytes, double minSeconds, long minBytes, double maxSeconds);
}

[PinnedShardPlacement]
public sealed class TransportBenchGrain(ILocalSiloDetails silo) : Grain, ITransportBenchGrain
{
    // The receiver only looks at the length: what is measured is getting the array there (copy or serialization).
    public Task<int> TakeBytes(byte[] data) => Task.FromResult(data.Length);
    public Task<int> TakeImmutable(Immutable<byte[]> data) => Task.FromResult(data.Value.Length);
    public Task<int> TakeFloats(float[] data) => Task.FromResult(data.Length * sizeof(float));
    public Task<int> TakeSegment(ArraySegment<byte> data) => Task.FromResult(data.Count);
    public Task<string> Silo() => Task.FromResult(silo.Name);

    public async Task<TransportSample> SendTo(string receiver, PayloadKind kind, int bytes, double minSeconds, long minBytes, double maxSeconds)
    {
        var target = GrainFactory.GetGrain<ITransportBenchGrain>(receiver);
        var payload = new byte[bytes];
        for (int i = 0; i < payload.Length; i++) payload[i] = (byte)(i * 31 + 7);
        var floats = new float[bytes / sizeof(float)];
        for (int i = 0; i < floats.Length; i++) floats[i] = i * 0.5f;
        Func<Task<int>> send = kind switch
        {
            PayloadKind.Bytes => () => target.TakeBytes(payload),
            PayloadKind.ImmutableBytes => () => target.TakeImmutable(new Immutable<byte[]>(payload)),
            PayloadKind.Floats => () => target.TakeFloats(floats),
            _ => () => target.TakeSegment(new ArraySegment<byte>(payload)),
        };
        for (int i = 0; i < 2; i++)
            if (await send() != bytes) throw new InvalidOperationException("the receiver got a payload of the wrong size");
        var clock = Stopwatch.StartNew();
        int calls = 0;
        do
        {
            await send();
            calls++;
        } while ((clock.Elapsed.TotalSeconds < minSeconds || (long)calls * bytes < minBytes) && clock.Elapsed.TotalSeconds < maxSeconds);
        return new TransportSample(calls, clock.Elapsed.TotalSeconds, await target.Silo());
    }
}

[GenerateSerializer, Immutable]
public sealed record BenchEvent([property: Id(0)] int Sequence, [property: Id(1)] byte[] Payload);

[GenerateSerializer, Immutable]
public sealed record StreamProgress(
    [property: Id(0)] int Received, [property: Id(1)] long Bytes, [property: Id(2)] int OutOfOrder, [property: Id(3)] long LastTimestamp);

public interface IStreamProducerBenchGrain : IGrainWithStringKey
{
    /// <summary>Publishes events first..first+count-1 on the stream, awaiting each; returns Stopwatch timestamps before the first and after the last.</summary>
    Task<(long Start, long End)> Publish(string streamKey, int first, int count, int bytes);
}

public interface IStreamConsumerBenchGrain : IGrainWithStringKey
{
    /// <summary>Clears the counters and expects <paramref name="next"/> as the next sequence number; returns the silo it lives on.</summary>
    Task<string> Reset(int next);
    Task<StreamProgress> Progress();
}

[PinnedShardPlacement]
public sealed class StreamProducerBenchGrain : Grain, IStreamProducerBenchGrain
{
    public async Task<(long Start, long End)> Publish(string streamKey, int first, int count, int bytes)
    {
        var stream = this.GetStreamProvider(TransportBench.StreamProvider).GetStream<BenchEvent>(StreamId.Create(TransportBench.StreamNamespace, streamKey));
        var payload = new byte[bytes];
        for (int i = 0; i < payload.Length; i++) payload[i] = (byte)(i * 31 + 7);
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < count; i++) await stream.OnNextAsync(new BenchEvent(first + i, payload));
        return (start, Stopwatch.GetTimestamp());
    }
}

/// <summary>The consumer: one grain per stream (the stream's key is the grain's key, so "...@silo" pins it too).</summary>
[PinnedShardPlacement, ImplicitStreamSubscription(TransportBench.StreamNamespace)]
public sealed class StreamConsumerBenchGrain(ILocalSiloDetails silo) : Grain, IStreamConsumerBenchGrain, IStreamSubscriptionObserver, IAsyncObserver<BenchEvent>
{
    private int _next, _received, _outOfOrder;
    private long _bytes, _last;

    public Task<string> Reset(int next)
    {
        (_next, _received, _outOfOrder, _bytes, _last) = (next, 0, 0, 0, 0);
        return Task.FromResult(silo.Name);
    }

    public Task<StreamProgress> Progress() => Task.FromResult(new StreamProgress(_received, _bytes, _outOfOrder, _last));

    public Task OnSubscribed(IStreamSubscriptionHandleFactory handleFactory) => handleFactory.Create<BenchEvent>().ResumeAsync(this);

    public Task OnNextAsync(BenchEvent item, StreamSequenceToken? token = null)
    {
        // In the same process, Stopwatch timestamps of all silos share one clock.
        _last = Stopwatch.GetTimestamp();
        if (item.Sequence != _next) _outOfOrder++;
        _next = item.Sequence + 1;
        _received++;
        _bytes += item.Payload.Length;
        return Task.CompletedTask;
    }

    public Task OnCompletedAsync() => Task.CompletedTask;
    public Task OnErrorAsync(Exception ex) => Task.CompletedTask;
}

public static class TransportBench
{
    public const string StreamProvider = "bench-memory";
    public const string StreamNamespace = "bench-events";

    public static async Task Run(int[] payloadBytes, int[] eventBytes, double minSeconds, long minBytes)
    {
        await using var cluster = await BenchCluster.StartAsync(2, configure: silo => silo.AddMemoryStreams(StreamProvider, streams =>
        {
            streams.ConfigureStreamPubSub(StreamPubSubType.ImplicitOnly);
            // A dequeue answer holds up to MaxAddCount events (default 100): 16 keeps one under Orleans' 100 MB message limit with ~1 MiB events.
            streams.ConfigureCache(cache => cache.Configure(o => o.MaxAddCount = 16));
        }));
        var grains = cluster.Client;
        string[] silos = cluster.SiloNames();
        string local = silos[0], remote = silos[1];
        var sender = grains.GetGrain<ITransportBenchGrain>($"sender@{local}");
        if (await sender.Silo() != local) throw new InvalidOperationException("the sender grain did not activate on its pinned silo");

        Console.WriteLine($"Grain calls on a 2-silo in-process cluster (loopback TCP): a sender grain on {local} awaits one call at a time to a receiver " +
            $"on the same silo or on {remote}; MB/s = payload bytes / wall time, after 2 warm-up calls, over at least {minSeconds:0.#} s and {minBytes >> 20} MiB per cell");
        Console.WriteLine();
        Console.WriteLine("| payload | type | same silo MB/s | cross silo MB/s |");
        Console.WriteLine("|---:|---|---:|---:|");
        (PayloadKind Kind, string Name)[] kinds =
            [(PayloadKind.Bytes, "byte[]"), (PayloadKind.ImmutableBytes, "Immutable<byte[]>"), (PayloadKind.Floats, "float[]"), (PayloadKind.ByteSegment, "ArraySegment<byte>")];
        foreach (int bytes in payloadBytes)
            foreach (var (kind, name) in kinds)
            {
                var same = await sender.SendTo($"receiver@{local}", kind, bytes, minSeconds, minBytes, maxSeconds: 10);
                var cross = await sender.SendTo($"receiver@{remote}", kind, bytes, minSeconds, minBytes, maxSeconds: 10);
                if (same.ReceiverSilo != local || cross.ReceiverSilo != remote) throw new InvalidOperationException("a receiver did not activate on its pinned silo");
                Console.WriteLine($"| {Size(bytes)} | {name} | {MegabytesPerSecond(same.Calls * (long)bytes, same.Seconds):F0} | {MegabytesPerSecond(cross.Calls * (long)bytes, cross.Seconds):F0} |");
            }

        Console.WriteLine();
        Console.WriteLine($"Orleans memory streams (AddMemoryStreams, implicit subscription): a producer grain on {local} publishes events one " +
            $"OnNextAsync at a time to a consumer grain on {remote}; sustained MB/s = event payload bytes / (last delivery - first publish), " +
            $"at least {minBytes >> 20} MiB per row after 4 warm-up events; publish-side MB/s = bytes / time the awaited OnNextAsync calls took. " +
            "The stream's queue grain and pulling agent land on either silo, so runs differ");
        Console.WriteLine();
        Console.WriteLine("| event payload | events | delivered MB/s | delivered events/s | publish-side MB/s | out of order |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|");
        var producer = grains.GetGrain<IStreamProducerBenchGrain>($"producer@{local}");
        foreach (int bytes in eventBytes)
        {
            var consumer = grains.GetGrain<IStreamConsumerBenchGrain>($"events-{bytes}@{remote}");
            if (await consumer.Reset(0) != remote) throw new InvalidOperationException("the stream consumer did not activate on its pinned silo");
            const int warmup = 4;
            await producer.Publish($"events-{bytes}@{remote}", 0, warmup, bytes);
            await WaitForEvents(consumer, warmup);
            await consumer.Reset(warmup);
            int count = (int)Math.Max(16, (minBytes + bytes - 1) / bytes);
            var (start, published) = await producer.Publish($"events-{bytes}@{remote}", warmup, count, bytes);
            var done = await WaitForEvents(consumer, count);
            double seconds = Stopwatch.GetElapsedTime(start, done.LastTimestamp).TotalSeconds;
            double publishing = Stopwatch.GetElapsedTime(start, published).TotalSeconds;
            Console.WriteLine($"| {Size(bytes)} | {count} | {MegabytesPerSecond(done.Bytes, seconds):F0} | {count / seconds:F0} | " +
                $"{MegabytesPerSecond((long)count * bytes, publishing):F0} | {done.OutOfOrder} |");
        }
    }

    private static async Task<StreamProgress> WaitForEvents(IStreamConsumerBenchGrain consumer, int count)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var progress = await consumer.Progress();
            if (progress.Received >= count) return progress;
            if (deadline.Elapsed > TimeSpan.FromSeconds(120))
                throw new TimeoutException($"the stream consumer got {progress.Received} of {count} events in 2 minutes (events over ~1 MiB are dropped by the memory stream cache)");
            await Task.Delay(5);
        }
    }

    public static double MegabytesPerSecond(long bytes, double seconds) => bytes / 1e6 / seconds;

    public static string Size(long bytes) =>
        bytes % (1 << 20) == 0 ? $"{bytes >> 20} MiB" : bytes % 1024 == 0 ? $"{bytes >> 10} KiB" : $"{bytes} B";
}
