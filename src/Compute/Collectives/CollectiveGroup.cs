// The eight collectives (NCCL / MPI semantics, sum as the reduction) over float32 data, written as plain
// algorithms over an ICollectiveTransport: binomial trees for Broadcast / Reduce, rings for AllGather /
// ReduceScatter / AllReduce, direct sends for Scatter / Gather / AllToAll.
using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Cluster.Compute.Collectives;

/// <summary>
/// One rank's handle on a group of <see cref="WorldSize"/> ranks. Every rank must call the same collectives,
/// in the same order, with matching arguments (same root, same lengths where the shapes say so): each call
/// takes the next operation number, and the operation number is what keeps the messages of successive calls
/// apart. One caller at a time per rank. With a world of one rank every collective is a local copy or nothing.
/// </summary>
/// <remarks>
/// Wire format: a message is [int32 float count][floats], little-endian, cut into chunks of at most
/// <c>maxMessageBytes</c> bytes (rounded down to whole floats); chunk c travels as its own message with tag
/// (operation, step, c). The count lets the receiver size its buffer and catch ranks that disagree on lengths.
/// </remarks>
public sealed class CollectiveGroup(ICollectiveTransport transport, int maxMessageBytes = 1 << 20)
{
    /// <summary>Tag layout (63 bits, always positive): operation number (mod 2^29) | step (14 bits) | chunk (20 bits).</summary>
    private const int ChunkBits = 20, StepBits = 14, OperationBits = 63 - StepBits - ChunkBits;
    private const int HeaderBytes = sizeof(int);

    /// <summary>AllReduce uses 2(N-1) steps, and steps must fit their 14 bits.</summary>
    public const int MaxWorldSize = 1 << (StepBits - 1);

    private readonly ICollectiveTransport _transport = ValidTransport(transport);
    private readonly int _floatsPerChunk = maxMessageBytes >= sizeof(float)
        ? maxMessageBytes / sizeof(float)
        : throw new ArgumentOutOfRangeException(nameof(maxMessageBytes), maxMessageBytes, "a message must hold at least one float");
    private int _nextOperation;
    private string _operationName = "";   // of the collective under way, for telemetry (one caller at a time)

    /// <summary>Names the collective under way and records its duration when disposed (cluster.collective.*).</summary>
    private OperationTiming Measure([System.Runtime.CompilerServices.CallerMemberName] string operation = "")
    {
        _operationName = operation;
        return new OperationTiming(operation, WorldSize, System.Diagnostics.Stopwatch.GetTimestamp());
    }

    private readonly record struct OperationTiming(string Operation, int Members, long Started) : IDisposable
    {
        public void Dispose() => ClusterTelemetry.CollectiveDuration.Record(System.Diagnostics.Stopwatch.GetElapsedTime(Started).TotalSeconds,
            new KeyValuePair<string, object?>("op", Operation), new KeyValuePair<string, object?>("members", Members));
    }

    public int Rank => _transport.Rank;
    public int WorldSize => _transport.WorldSize;

    /// <summary>
    /// Splits <paramref name="length"/> elements into <paramref name="parts"/> contiguous pieces, in order; the first
    /// length % parts pieces get one extra element. When length &lt; parts the last pieces are empty.
    /// </summary>
    public static (int Offset, int Count) Partition(int length, int parts, int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfLessThan(parts, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, parts);
        int smallCount = length / parts, bigPieces = length % parts;
        return (index * smallCount + Math.Min(index, bigPieces), smallCount + (index < bigPieces ? 1 : 0));
    }

    /// <summary>
    /// Copies the root's <paramref name="data"/> into <paramref name="data"/> on every other rank (same length on all ranks).
    /// Binomial tree: log2(N) rounds, each rank that has the data forwards it to one new rank per round.
    /// </summary>
    public async Task Broadcast(float[] data, int root, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        ArgumentNullException.ThrowIfNull(data);
        CheckRoot(root);
        int relative = RelativeTo(root);
        // The parent differs from this rank in the lowest set bit of the rank relative to the root.
        int bit = 1;
        while (bit < WorldSize && (relative & bit) == 0) bit <<= 1;
        if (relative != 0) await ReceiveIntoAsync(AbsoluteFrom(relative - bit, root), operation, 0, data, accumulate: false, cancellation);
        // The children are this rank plus each lower bit: the subtree under the highest one is the largest, so it goes first.
        var sends = new List<Task>();
        for (bit >>= 1; bit > 0; bit >>= 1)
            if (relative + bit < WorldSize) sends.Add(SendAsync(AbsoluteFrom(relative + bit, root), operation, 0, data, cancellation));
        await Task.WhenAll(sends);
    }

    /// <summary>
    /// The root holds <paramref name="length"/> floats in <paramref name="data"/> (ignored, may be null, elsewhere);
    /// rank i gets piece <see cref="Partition"/>(length, N, i). The root sends each rank its piece directly.
    /// </summary>
    public async Task<float[]> Scatter(float[]? data, int length, int root, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        CheckRoot(root);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var (offset, count) = Partition(length, WorldSize, Rank);
        if (Rank != root)
        {
            var piece = new float[count];
            await ReceiveIntoAsync(root, operation, 0, piece, accumulate: false, cancellation);
            return piece;
        }
        if (data is null || data.Length != length)
            throw new ArgumentException($"the root of a scatter must hold {length} floats, not {data?.Length.ToString() ?? "null"}", nameof(data));
        await Task.WhenAll(OtherRanks().Select(rank => SendAsync(rank, operation, 0, Piece(data, rank), cancellation)));
        return data.AsSpan(offset, count).ToArray();
    }

    /// <summary>
    /// The root gets every rank's <paramref name="part"/> concatenated in rank order (parts may differ in length);
    /// the other ranks get null. Each rank sends its part straight to the root.
    /// </summary>
    public async Task<float[]?> Gather(float[] part, int root, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        ArgumentNullException.ThrowIfNull(part);
        CheckRoot(root);
        if (Rank != root)
        {
            await SendAsync(root, operation, 0, part, cancellation);
            return null;
        }
        var parts = new float[WorldSize][];
        parts[Rank] = part;
        await Task.WhenAll(OtherRanks().Select(async rank => parts[rank] = await ReceiveAsync(rank, operation, 0, cancellation)));
        return Concatenate(parts);
    }

    /// <summary>
    /// The root's <paramref name="data"/> becomes the element-wise sum of every rank's data (same length on all ranks);
    /// the other ranks' data is left unchanged. Binomial tree: each rank adds its children's partial sums, in a fixed
    /// order, and passes the result to its parent.
    /// </summary>
    public async Task Reduce(float[] data, int root, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        ArgumentNullException.ThrowIfNull(data);
        CheckRoot(root);
        int relative = RelativeTo(root);
        // Only even relative ranks have children (relative + 1 first); a non-root sums them into a copy so its data stays intact.
        bool hasChildren = (relative & 1) == 0 && relative + 1 < WorldSize;
        float[] sum = relative != 0 && hasChildren ? (float[])data.Clone() : data;
        for (int bit = 1; bit < WorldSize; bit <<= 1)
        {
            if ((relative & bit) != 0)
            {
                await SendAsync(AbsoluteFrom(relative - bit, root), operation, 0, sum, cancellation);
                return;
            }
            if (relative + bit < WorldSize)
                await ReceiveIntoAsync(AbsoluteFrom(relative + bit, root), operation, 0, sum, accumulate: true, cancellation);
        }
    }

    /// <summary>
    /// Every rank gets every rank's <paramref name="part"/> concatenated in rank order (parts may differ in length).
    /// Ring: in N-1 steps each rank passes on the part it received last, so each rank sends (N-1) parts.
    /// </summary>
    public async Task<float[]> AllGather(float[] part, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        ArgumentNullException.ThrowIfNull(part);
        var parts = new float[WorldSize][];
        parts[Rank] = part;
        for (int step = 0; step < WorldSize - 1; step++)
        {
            var receive = ReceiveAsync(Previous, operation, step, cancellation);
            await Task.WhenAll(SendAsync(Next, operation, step, parts[Wrap(Rank - step)], cancellation), receive);
            parts[Wrap(Rank - step - 1)] = await receive;
        }
        return Concatenate(parts);
    }

    /// <summary>
    /// Rank i gets piece <see cref="Partition"/>(length, N, i) of the element-wise sum of every rank's
    /// <paramref name="data"/> (same length on all ranks; data is left unchanged). Ring, N-1 steps: a running sum
    /// of each piece travels once around the ring, collecting every rank's contribution, and ends at its owner.
    /// </summary>
    public async Task<float[]> ReduceScatter(float[] data, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        ArgumentNullException.ThrowIfNull(data);
        if (WorldSize == 1) return (float[])data.Clone();
        // Step s: send the running sum of piece (rank - s - 1), receive piece (rank - s - 2) and add this rank's share.
        // After step N-2 the piece received is (rank - N) = rank, now summed over all ranks.
        ReadOnlyMemory<float> outgoing = Piece(data, Wrap(Rank - 1));
        float[] sum = [];
        for (int step = 0; step < WorldSize - 1; step++)
        {
            sum = Piece(data, Wrap(Rank - step - 2)).ToArray();
            await Task.WhenAll(
                SendAsync(Next, operation, step, outgoing, cancellation),
                ReceiveIntoAsync(Previous, operation, step, sum, accumulate: true, cancellation));
            outgoing = sum;
        }
        return sum;
    }

    /// <summary>
    /// Replaces <paramref name="data"/> (same length on all ranks) by the element-wise sum over all ranks.
    /// Ring = reduce-scatter then all-gather, 2(N-1) steps; each rank sends 2(N-1)/N of the data. Each piece is
    /// summed once, by the ring, then copied, so the result is bitwise identical on every rank.
    /// </summary>
    public async Task AllReduce(float[] data, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        ArgumentNullException.ThrowIfNull(data);
        // Reduce-scatter in place (as in ReduceScatter): afterwards piece `rank` of data holds the full sum.
        for (int step = 0; step < WorldSize - 1; step++)
            await Task.WhenAll(
                SendAsync(Next, operation, step, Piece(data, Wrap(Rank - step - 1)), cancellation),
                ReceiveIntoAsync(Previous, operation, step, Piece(data, Wrap(Rank - step - 2)), accumulate: true, cancellation));
        // All-gather: pass the finished pieces around the ring, starting with this rank's own.
        for (int step = 0; step < WorldSize - 1; step++)
            await Task.WhenAll(
                SendAsync(Next, operation, WorldSize - 1 + step, Piece(data, Wrap(Rank - step)), cancellation),
                ReceiveIntoAsync(Previous, operation, WorldSize - 1 + step, Piece(data, Wrap(Rank - step - 1)), accumulate: false, cancellation));
    }

    /// <summary>
    /// Sends <paramref name="parts"/>[j] (any length) to rank j and returns received, where received[j] is what rank j
    /// sent to this rank (received[Rank] is a copy of parts[Rank]). Every pair exchanges its parts directly.
    /// </summary>
    public async Task<float[][]> AllToAll(float[][] parts, CancellationToken cancellation = default)
    {
        int operation = NextOperation();
        using var measured = Measure();
        ArgumentNullException.ThrowIfNull(parts);
        if (parts.Length != WorldSize)
            throw new ArgumentException($"all-to-all needs one part per rank: got {parts.Length} parts for a world of {WorldSize}", nameof(parts));
        if (Array.FindIndex(parts, part => part is null) is var missing and >= 0)
            throw new ArgumentException($"part {missing} is null", nameof(parts));
        var received = new float[WorldSize][];
        received[Rank] = (float[])parts[Rank].Clone();
        var sends = OtherRanks().Select(rank => SendAsync(rank, operation, 0, parts[rank], cancellation));
        var receives = OtherRanks().Select(async rank => received[rank] = await ReceiveAsync(rank, operation, 0, cancellation));
        await Task.WhenAll(sends.Concat(receives));
        return received;
    }

    private static ICollectiveTransport ValidTransport(ICollectiveTransport transport)
    {
        ArgumentNullException.ThrowIfNull(transport);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("collectives send floats as their in-memory bytes, which must be little-endian");
        if (transport.WorldSize is < 1 or > MaxWorldSize)
            throw new ArgumentException($"world size {transport.WorldSize} is outside 1..{MaxWorldSize}", nameof(transport));
        if (transport.Rank < 0 || transport.Rank >= transport.WorldSize)
            throw new ArgumentException($"rank {transport.Rank} is outside a world of {transport.WorldSize}", nameof(transport));
        return transport;
    }

    private int NextOperation() => _nextOperation++;

    private void CheckRoot(int root)
    {
        if (root < 0 || root >= WorldSize)
            throw new ArgumentOutOfRangeException(nameof(root), root, $"the root must be a rank in 0..{WorldSize - 1}");
    }

    private int Next => Wrap(Rank + 1);
    private int Previous => Wrap(Rank - 1);
    private int Wrap(int rank) => ((rank % WorldSize) + WorldSize) % WorldSize;
    private int RelativeTo(int root) => Wrap(Rank - root);
    private int AbsoluteFrom(int relative, int root) => Wrap(relative + root);
    private IEnumerable<int> OtherRanks() => Enumerable.Range(1, WorldSize - 1).Select(offset => Wrap(Rank + offset));

    /// <summary>This collective's piece <paramref name="index"/> of <paramref name="data"/> (Partition over the world size).</summary>
    private Memory<float> Piece(float[] data, int index)
    {
        var (offset, count) = Partition(data.Length, WorldSize, index);
        return data.AsMemory(offset, count);
    }

    private static float[] Concatenate(float[][] parts)
    {
        var all = new float[parts.Sum(part => (long)part.Length)];
        int offset = 0;
        foreach (var part in parts)
        {
            part.CopyTo(all, offset);
            offset += part.Length;
        }
        return all;
    }

    private static long Tag(int operation, int step, int chunk) =>
        ((long)(operation & ((1 << OperationBits) - 1)) << (StepBits + ChunkBits)) | ((long)step << ChunkBits) | (long)chunk;

    /// <summary>Chunks of a message of <paramref name="length"/> floats: the header takes one float's slot in chunk 0.</summary>
    private int ChunkCount(int length) => (int)(((long)length + _floatsPerChunk) / _floatsPerChunk);

    /// <summary>Which floats of the message chunk <paramref name="chunk"/> carries.</summary>
    private (int First, int Count) ChunkRange(int length, int chunk)
    {
        int first = chunk == 0 ? 0 : chunk * _floatsPerChunk - 1;
        int end = (int)Math.Min((chunk + 1L) * _floatsPerChunk - 1, length);
        return (first, end - first);
    }

    private async Task SendAsync(int to, int operation, int step, ReadOnlyMemory<float> data, CancellationToken cancellation)
    {
        ClusterTelemetry.CollectiveBytes.Add(HeaderBytes + data.Length * (long)sizeof(float), new KeyValuePair<string, object?>("op", _operationName));
        int chunks = ChunkCount(data.Length);
        if (chunks > 1 << ChunkBits)
            throw new ArgumentException($"a message of {data.Length} floats needs {chunks} chunks, over the limit of {1 << ChunkBits}: raise maxMessageBytes");
        for (int chunk = 0; chunk < chunks; chunk++)
            await _transport.SendAsync(to, Tag(operation, step, chunk), EncodeChunk(data.Span, chunk), cancellation);
    }

    private byte[] EncodeChunk(ReadOnlySpan<float> data, int chunk)
    {
        var (first, count) = ChunkRange(data.Length, chunk);
        int header = chunk == 0 ? HeaderBytes : 0;
        var bytes = new byte[header + count * sizeof(float)];
        if (chunk == 0) BinaryPrimitives.WriteInt32LittleEndian(bytes, data.Length);
        MemoryMarshal.AsBytes(data.Slice(first, count)).CopyTo(bytes.AsSpan(header));
        return bytes;
    }

    /// <summary>Receives a message of any length into a new array.</summary>
    private async Task<float[]> ReceiveAsync(int from, int operation, int step, CancellationToken cancellation)
    {
        var first = await _transport.ReceiveAsync(from, Tag(operation, step, 0), cancellation);
        var data = new float[ReadLength(first, from)];
        await ReceiveChunksAsync(first, from, operation, step, data, accumulate: false, cancellation);
        return data;
    }

    /// <summary>Receives a message that must have <paramref name="into"/>'s length, copying it there or adding it to what is there.</summary>
    private async Task ReceiveIntoAsync(int from, int operation, int step, Memory<float> into, bool accumulate, CancellationToken cancellation)
    {
        var first = await _transport.ReceiveAsync(from, Tag(operation, step, 0), cancellation);
        int length = ReadLength(first, from);
        if (length != into.Length)
            throw new ArgumentException($"rank {from} sent {length} floats where rank {Rank} expected {into.Length}: the ranks passed mismatched lengths");
        await ReceiveChunksAsync(first, from, operation, step, into, accumulate, cancellation);
    }

    private async Task ReceiveChunksAsync(byte[] first, int from, int operation, int step, Memory<float> into, bool accumulate, CancellationToken cancellation)
    {
        Absorb(first, 0, into, accumulate, from);
        for (int chunk = 1, chunks = ChunkCount(into.Length); chunk < chunks; chunk++)
            Absorb(await _transport.ReceiveAsync(from, Tag(operation, step, chunk), cancellation), chunk, into, accumulate, from);
    }

    private static int ReadLength(byte[] first, int from)
    {
        int length = first.Length >= HeaderBytes ? BinaryPrimitives.ReadInt32LittleEndian(first) : -1;
        if (length < 0) throw new InvalidOperationException($"the first chunk of a message from rank {from} has no valid length header");
        return length;
    }

    /// <summary>Copies (or adds) the floats of chunk <paramref name="chunk"/> into their place in <paramref name="into"/>.</summary>
    private void Absorb(byte[] message, int chunk, Memory<float> into, bool accumulate, int from)
    {
        var (first, count) = ChunkRange(into.Length, chunk);
        var payload = message.AsSpan(chunk == 0 ? HeaderBytes : 0);
        if (payload.Length != count * sizeof(float))
            throw new InvalidOperationException(
                $"chunk {chunk} from rank {from} has {payload.Length} payload bytes where {count * sizeof(float)} were expected: the ranks disagree on maxMessageBytes");
        var values = MemoryMarshal.Cast<byte, float>(payload);
        var destination = into.Span.Slice(first, count);
        if (accumulate) TensorPrimitives.Add(destination, values, destination);
        else values.CopyTo(destination);
    }
}
