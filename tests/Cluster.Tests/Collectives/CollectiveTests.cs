// The eight collectives, every rank of an InProcessTransport group running concurrently, against plain
// reference loops: world sizes 1-4, odd lengths, 64-byte messages so everything is chunked, successive
// operations on one group, a transport that delivers out of order, bad arguments, and the mailbox itself.
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Cluster.Compute.Collectives;

namespace Cluster.Tests.Collectives;

public sealed class CollectiveTests
{
    private const double SumTolerance = 1e-5;

    /// <summary>(world size, length, maxMessageBytes): 7 and 1001 divide by none of 2-4, 1 is shorter than the world.</summary>
    public static TheoryData<int, int, int> Shapes
    {
        get
        {
            var shapes = new TheoryData<int, int, int>();
            foreach (int worldSize in new[] { 1, 2, 3, 4 })
                foreach (int length in new[] { 1, 7, 1000, 1001 })
                    foreach (int maxMessageBytes in new[] { 64, 1 << 20 })
                        shapes.Add(worldSize, length, maxMessageBytes);
            return shapes;
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task BroadcastCopiesTheRootsData(int worldSize, int length, int maxMessageBytes)
    {
        int root = (length + 1) % worldSize;
        var source = Reference.Random(length, seed: length);
        var results = await RunGroup(worldSize, maxMessageBytes, async group =>
        {
            var data = group.Rank == root ? (float[])source.Clone() : new float[length];
            await group.Broadcast(data, root, Token);
            return data;
        });
        foreach (var data in results) Assert.Equal(source, data);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task ScatterHandsEachRankItsPartition(int worldSize, int length, int maxMessageBytes)
    {
        int root = length % worldSize;
        var source = Reference.Random(length, seed: length);
        var results = await RunGroup(worldSize, maxMessageBytes, group =>
            group.Scatter(group.Rank == root ? source : null, length, root, Token));
        for (int rank = 0; rank < worldSize; rank++)
        {
            var (offset, count) = CollectiveGroup.Partition(length, worldSize, rank);
            Assert.Equal(source.AsSpan(offset, count).ToArray(), results[rank]);
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task GatherConcatenatesPartsOfDifferentLengthsAtTheRoot(int worldSize, int length, int maxMessageBytes)
    {
        int root = (length + 2) % worldSize;
        var parts = UnevenParts(worldSize, length);
        var results = await RunGroup(worldSize, maxMessageBytes, group => group.Gather(parts[group.Rank], root, Token));
        for (int rank = 0; rank < worldSize; rank++)
            Assert.Equal(rank == root ? parts.SelectMany(part => part).ToArray() : null, results[rank]);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task ReduceSumsAtTheRootAndLeavesOthersAlone(int worldSize, int length, int maxMessageBytes)
    {
        int root = (length + 3) % worldSize;
        var inputs = EqualInputs(worldSize, length);
        var results = await RunGroup(worldSize, maxMessageBytes, async group =>
        {
            var data = (float[])inputs[group.Rank].Clone();
            await group.Reduce(data, root, Token);
            return data;
        });
        for (int rank = 0; rank < worldSize; rank++)
            if (rank == root) Assert.True(Reference.MaxRelativeError(results[rank], Sum(inputs)) < SumTolerance);
            else Assert.Equal(inputs[rank], results[rank]);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task AllGatherConcatenatesPartsOfDifferentLengthsEverywhere(int worldSize, int length, int maxMessageBytes)
    {
        var parts = UnevenParts(worldSize, length);
        var results = await RunGroup(worldSize, maxMessageBytes, group => group.AllGather(parts[group.Rank], Token));
        var expected = parts.SelectMany(part => part).ToArray();
        foreach (var gathered in results) Assert.Equal(expected, gathered);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task ReduceScatterHandsEachRankItsPartitionOfTheSum(int worldSize, int length, int maxMessageBytes)
    {
        var inputs = EqualInputs(worldSize, length);
        var originals = inputs.Select(input => (float[])input.Clone()).ToArray();
        var results = await RunGroup(worldSize, maxMessageBytes, group => group.ReduceScatter(inputs[group.Rank], Token));
        var sum = Sum(inputs);
        for (int rank = 0; rank < worldSize; rank++)
        {
            var (offset, count) = CollectiveGroup.Partition(length, worldSize, rank);
            Assert.True(Reference.MaxRelativeError(results[rank], sum.AsSpan(offset, count)) < SumTolerance);
            Assert.Equal(originals[rank], inputs[rank]);
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task AllReduceSumsEverywhereBitwiseIdentically(int worldSize, int length, int maxMessageBytes)
    {
        var inputs = EqualInputs(worldSize, length);
        var results = await RunGroup(worldSize, maxMessageBytes, async group =>
        {
            var data = (float[])inputs[group.Rank].Clone();
            await group.AllReduce(data, Token);
            return data;
        });
        Assert.True(Reference.MaxRelativeError(results[0], Sum(inputs)) < SumTolerance);
        foreach (var result in results) AssertBitwiseEqual(results[0], result);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task AllToAllDeliversEveryPairsPart(int worldSize, int length, int maxMessageBytes)
    {
        // sent[from][to], lengths anywhere in 0..length+1 so some parts are empty.
        var sent = Enumerable.Range(0, worldSize).Select(from => Enumerable.Range(0, worldSize)
            .Select(to => Reference.Random((length * (from + 1) + to) % (length + 2), seed: 100 * from + to)).ToArray()).ToArray();
        var results = await RunGroup(worldSize, maxMessageBytes, group => group.AllToAll(sent[group.Rank], Token));
        for (int to = 0; to < worldSize; to++)
            for (int from = 0; from < worldSize; from++)
                Assert.Equal(sent[from][to], results[to][from]);
    }

    [Fact]
    public async Task SuccessiveCollectivesOnOneGroupDoNotMix()
    {
        const int worldSize = 3, length = 50;
        var inputs = EqualInputs(worldSize, length);
        var results = await RunGroup(worldSize, maxMessageBytes: 64, async group =>
        {
            // Rank 0 is the root of the broadcast and the reduce, so without operation numbers in the tags its
            // messages would run ahead into the collectives that follow.
            var broadcast = group.Rank == 0 ? (float[])inputs[0].Clone() : new float[length];
            await group.Broadcast(broadcast, root: 0, Token);
            var reduced = (float[])inputs[group.Rank].Clone();
            await group.Reduce(reduced, root: 0, Token);
            var summed = (float[])inputs[group.Rank].Clone();
            await group.AllReduce(summed, Token);
            var gathered = await group.AllGather(inputs[group.Rank], Token);
            await group.AllReduce(broadcast, Token);
            return (broadcast, reduced, summed, gathered);
        });
        var sum = Sum(inputs);
        Assert.True(Reference.MaxRelativeError(results[0].reduced, sum) < SumTolerance);
        foreach (var (broadcast, _, summed, gathered) in results)
        {
            Assert.True(Reference.MaxRelativeError(broadcast, inputs[0].Select(x => x * worldSize).ToArray()) < SumTolerance);
            Assert.True(Reference.MaxRelativeError(summed, sum) < SumTolerance);
            Assert.Equal(inputs.SelectMany(input => input).ToArray(), gathered);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task EveryCollectiveSurvivesATransportThatReordersMessages(int worldSize)
    {
        const int length = 301;
        var inputs = EqualInputs(worldSize, length);
        var parts = UnevenParts(worldSize, length);
        var delayed = new ConcurrentBag<Task>();
        var results = await RunGroup(worldSize, maxMessageBytes: 64, wrap: transport => new ReorderingTransport(transport, delayed), body: async group =>
        {
            int rank = group.Rank, root = worldSize - 1;
            var broadcast = rank == root ? (float[])inputs[root].Clone() : new float[length];
            await group.Broadcast(broadcast, root, Token);
            var scattered = await group.Scatter(rank == root ? inputs[root] : null, length, root, Token);
            var gathered = await group.Gather(parts[rank], root, Token);
            var reduced = (float[])inputs[rank].Clone();
            await group.Reduce(reduced, root, Token);
            var allGathered = await group.AllGather(parts[rank], Token);
            var reduceScattered = await group.ReduceScatter(inputs[rank], Token);
            var allReduced = (float[])inputs[rank].Clone();
            await group.AllReduce(allReduced, Token);
            var exchanged = await group.AllToAll(parts.Select(part => part.Skip(rank).ToArray()).ToArray(), Token);
            return (broadcast, scattered, gathered, reduced, allGathered, reduceScattered, allReduced, exchanged);
        });
        await Task.WhenAll(delayed);

        var sum = Sum(inputs);
        var concatenated = parts.SelectMany(part => part).ToArray();
        for (int rank = 0; rank < worldSize; rank++)
        {
            var result = results[rank];
            bool isRoot = rank == worldSize - 1;
            var (offset, count) = CollectiveGroup.Partition(length, worldSize, rank);
            Assert.Equal(inputs[worldSize - 1], result.broadcast);
            Assert.Equal(inputs[worldSize - 1].AsSpan(offset, count).ToArray(), result.scattered);
            Assert.Equal(isRoot ? concatenated : null, result.gathered);
            if (isRoot) Assert.True(Reference.MaxRelativeError(result.reduced, sum) < SumTolerance);
            Assert.Equal(concatenated, result.allGathered);
            Assert.True(Reference.MaxRelativeError(result.reduceScattered, sum.AsSpan(offset, count)) < SumTolerance);
            Assert.True(Reference.MaxRelativeError(result.allReduced, sum) < SumTolerance);
            AssertBitwiseEqual(results[0].allReduced, result.allReduced);
            for (int from = 0; from < worldSize; from++) Assert.Equal(parts[rank].Skip(from).ToArray(), result.exchanged[from]);
        }
    }

    [Fact]
    public async Task BadArgumentsThrowArgumentException()
    {
        var group = new CollectiveGroup(InProcessTransport.CreateGroup(2)[0]);
        var data = new float[4];
        await Assert.ThrowsAnyAsync<ArgumentException>(() => group.Broadcast(data, root: 2, Token));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => group.Reduce(data, root: -1, Token));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => group.Gather(data, root: 5, Token));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => group.Scatter(null, 4, root: 0, Token));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => group.Scatter(data, 5, root: 0, Token));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => group.AllToAll([data], Token));
        Assert.ThrowsAny<ArgumentException>(() => new CollectiveGroup(InProcessTransport.CreateGroup(2)[0], maxMessageBytes: 3));
        Assert.ThrowsAny<ArgumentException>(() => CollectiveGroup.Partition(10, 0, 0));
        Assert.ThrowsAny<ArgumentException>(() => CollectiveGroup.Partition(10, 3, 3));
    }

    [Fact]
    public async Task MismatchedLengthsAcrossRanksThrowArgumentException()
    {
        var transports = InProcessTransport.CreateGroup(2);
        var groups = transports.Select(transport => new CollectiveGroup(transport, maxMessageBytes: 64)).ToArray();
        var allReduce = Task.WhenAll(groups[0].AllReduce(new float[10], Token), groups[1].AllReduce(new float[12], Token));
        await Assert.ThrowsAsync<ArgumentException>(() => allReduce.WaitAsync(TimeSpan.FromSeconds(30), Token));
        var broadcast = groups[1].Broadcast(new float[6], root: 0, Token);
        await groups[0].Broadcast(new float[5], root: 0, Token);
        await Assert.ThrowsAsync<ArgumentException>(() => broadcast.WaitAsync(TimeSpan.FromSeconds(30), Token));
    }

    [Fact]
    public void PartitionSplitsIntoContiguousNearEqualPieces()
    {
        for (int length = 0; length <= 12; length++)
            for (int parts = 1; parts <= 5; parts++)
            {
                int next = 0;
                for (int index = 0; index < parts; index++)
                {
                    var (offset, count) = CollectiveGroup.Partition(length, parts, index);
                    Assert.Equal(next, offset);
                    Assert.Equal(length / parts + (index < length % parts ? 1 : 0), count);
                    next += count;
                }
                Assert.Equal(length, next);
            }
    }

    [Fact]
    public async Task MailboxMatchesByTagAndConsumesOnce()
    {
        var mailbox = new CollectiveMailbox();
        var waiting = mailbox.ReceiveAsync(from: 1, tag: 7, Token);
        mailbox.Deliver(1, 8, [8]);
        mailbox.Deliver(1, 7, [7]);
        Assert.Equal(new byte[] { 7 }, await waiting);
        Assert.Equal(1, mailbox.Pending);
        Assert.Equal(new byte[] { 8 }, await mailbox.ReceiveAsync(1, 8, Token));
        Assert.Equal(0, mailbox.Pending);
        Assert.False(mailbox.ReceiveAsync(1, 8, Token).IsCompleted);   // consumed: a second receive waits for a second message
    }

    [Fact]
    public void MailboxRejectsADuplicateUndeliveredMessage()
    {
        var mailbox = new CollectiveMailbox();
        mailbox.Deliver(2, 5, [1]);
        Assert.Throws<InvalidOperationException>(() => mailbox.Deliver(2, 5, [2]));
        mailbox.Deliver(3, 5, [3]);   // same tag, other sender: a different message
        Assert.Equal(2, mailbox.Pending);
    }

    [Fact]
    public async Task MailboxFailFaultsWaitingAndFutureReceives()
    {
        var mailbox = new CollectiveMailbox();
        var waiting = mailbox.ReceiveAsync(0, 1, Token);
        mailbox.Deliver(0, 2, [2]);
        mailbox.Fail(new ObjectDisposedException("group"));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => waiting);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => mailbox.ReceiveAsync(0, 2, Token));
        Assert.Equal(0, mailbox.Pending);
    }

    [Fact]
    public async Task MailboxCancelledReceiveLeavesTheMessageForLater()
    {
        var mailbox = new CollectiveMailbox();
        using var cancellation = CancellationTokenSource.CreateLinkedTokenSource(Token);
        var waiting = mailbox.ReceiveAsync(0, 1, cancellation.Token);
        await cancellation.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
        mailbox.Deliver(0, 1, [1]);
        Assert.Equal(1, mailbox.Pending);
        Assert.Equal(new byte[] { 1 }, await mailbox.ReceiveAsync(0, 1, Token));
    }

    private static CancellationToken Token => TestContext.Current.CancellationToken;

    /// <summary>Runs <paramref name="body"/> on every rank of a new in-process group at once; afterwards no message may be left over.</summary>
    private static async Task<T[]> RunGroup<T>(int worldSize, int maxMessageBytes, Func<CollectiveGroup, Task<T>> body,
        Func<ICollectiveTransport, ICollectiveTransport>? wrap = null)
    {
        var transports = InProcessTransport.CreateGroup(worldSize);
        var ranks = transports.Select(transport => Task.Run(() => body(new CollectiveGroup(wrap?.Invoke(transport) ?? transport, maxMessageBytes)), Token));
        var results = await Task.WhenAll(ranks).WaitAsync(TimeSpan.FromSeconds(30), Token);
        foreach (var transport in transports) Assert.Equal(0, ((InProcessTransport)transport).Mailbox.Pending);
        return results;
    }

    private static float[][] EqualInputs(int worldSize, int length) =>
        Enumerable.Range(0, worldSize).Select(rank => Reference.Random(length, seed: 1000 * rank + length)).ToArray();

    /// <summary>Rank r's part has length - r floats (empty once r ≥ length).</summary>
    private static float[][] UnevenParts(int worldSize, int length) =>
        Enumerable.Range(0, worldSize).Select(rank => Reference.Random(Math.Max(0, length - rank), seed: 1000 * rank + length + 1)).ToArray();

    private static float[] Sum(float[][] inputs)
    {
        var sum = new float[inputs[0].Length];
        for (int i = 0; i < sum.Length; i++)
        {
            double total = 0;
            foreach (var input in inputs) total += input[i];
            sum[i] = (float)total;
        }
        return sum;
    }

    private static void AssertBitwiseEqual(float[] expected, float[] actual) =>
        Assert.Equal(MemoryMarshal.Cast<float, int>(expected).ToArray(), MemoryMarshal.Cast<float, int>(actual).ToArray());

    /// <summary>Delivers every message after a random delay of 0-3 ms, so messages overtake each other, chunks of one message included.</summary>
    private sealed class ReorderingTransport(ICollectiveTransport inner, ConcurrentBag<Task> deliveries) : ICollectiveTransport
    {
        private readonly Random _random = new(inner.Rank);

        public int Rank => inner.Rank;
        public int WorldSize => inner.WorldSize;

        public Task SendAsync(int to, long tag, byte[] data, CancellationToken cancellation = default)
        {
            int delay;
            lock (_random) delay = _random.Next(4);
            deliveries.Add(DeliverLater(delay, to, tag, data, cancellation));
            return Task.CompletedTask;
        }

        public Task<byte[]> ReceiveAsync(int from, long tag, CancellationToken cancellation = default) => inner.ReceiveAsync(from, tag, cancellation);

        private async Task DeliverLater(int delay, int to, long tag, byte[] data, CancellationToken cancellation)
        {
            await Task.Delay(delay, cancellation);
            await inner.SendAsync(to, tag, data, cancellation);
        }
    }
}
