// The paged KV cache: per layer one K and one V buffer of fixed-size blocks on the device
// (blocks · blockSize slots of kvDim floats), per-sequence block tables, and a free list.
// Sequences grow block by block; releasing a sequence returns its blocks. Continuous batching sits on this.
using Cluster.Compute;

namespace Cluster.Model;

public sealed class KvCacheExhaustedException(string message) : Exception(message);

public sealed class PagedKvCache : IDisposable
{
    private readonly Stack<int> _free;
    private readonly Dictionary<int, Sequence> _sequences = [];
    private int _nextSequenceId;

    private sealed class Sequence
    {
        public readonly List<int> Blocks = [];
        public int Length;
    }

    /// <summary>A cache for every layer and KV head of <paramref name="config"/>.</summary>
    public PagedKvCache(IDevice device, ModelConfig config, int blocks, int blockSize = 16)
        : this(device, config.Layers, config.KvDim, blocks, blockSize) { }

    /// <summary>A cache for <paramref name="layers"/> layers of <paramref name="kvDim"/> floats per token (a shard's layers and KV heads).</summary>
    public PagedKvCache(IDevice device, int layers, int kvDim, int blocks, int blockSize = 16)
    {
        if (blocks <= 0) throw new ArgumentOutOfRangeException(nameof(blocks), blocks, "the cache needs at least one block");
        if (blockSize <= 0) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "blocks hold at least one token");
        long floats = (long)blocks * blockSize * kvDim;
        if (floats > Array.MaxLength) throw new ArgumentOutOfRangeException(nameof(blocks), blocks, $"{blocks} blocks of {blockSize} tokens exceed one buffer per layer");
        Layers = layers;
        KvDim = kvDim;
        BlockSize = blockSize;
        TotalBlocks = blocks;
        Keys = new DeviceBuffer[layers];
        Values = new DeviceBuffer[layers];
        for (int l = 0; l < layers; l++)
        {
            Keys[l] = device.Allocate((int)floats);     // (blocks·blockSize, kvDim)
            Values[l] = device.Allocate((int)floats);   // (blocks·blockSize, kvDim)
        }
        _free = new Stack<int>(Enumerable.Range(0, blocks).Reverse());
    }

    /// <summary>A cache big enough for <paramref name="sequences"/> sequences of <paramref name="tokens"/> tokens each.</summary>
    public static PagedKvCache ForSequences(IDevice device, ModelConfig config, int sequences, int tokens, int blockSize = 16) =>
        new(device, config, sequences * ((tokens + blockSize - 1) / blockSize), blockSize);

    public int Layers { get; }
    /// <summary>Floats of K (and of V) per token and layer.</summary>
    public int KvDim { get; }
    public int BlockSize { get; }
    public int TotalBlocks { get; }
    public int FreeBlocks => _free.Count;
    public DeviceBuffer[] Keys { get; }
    public DeviceBuffer[] Values { get; }
    public int ActiveSequences => _sequences.Count;

    public int CreateSequence()
    {
        int id = _nextSequenceId++;
        _sequences.Add(id, new Sequence());
        return id;
    }

    /// <summary>Tokens of <paramref name="sequence"/> already in the cache (the position its next token takes).</summary>
    public int Length(int sequence) => Get(sequence).Length;

    public IReadOnlyList<int> BlockTable(int sequence) => Get(sequence).Blocks;

    /// <summary>Makes room for <paramref name="extraTokens"/> more tokens; all or nothing.</summary>
    public void Reserve(int sequence, int extraTokens)
    {
        var s = Get(sequence);
        int needed = (s.Length + extraTokens + BlockSize - 1) / BlockSize - s.Blocks.Count;
        if (needed > _free.Count)
            throw new KvCacheExhaustedException($"KV cache full: sequence {sequence} needs {needed} more blocks of {BlockSize} tokens, {_free.Count} of {TotalBlocks} free");
        for (int i = 0; i < needed; i++) s.Blocks.Add(_free.Pop());
    }

    /// <summary>Records that <paramref name="tokens"/> reserved tokens now hold K and V.</summary>
    public void Advance(int sequence, int tokens)
    {
        var s = Get(sequence);
        if (s.Length + tokens > s.Blocks.Count * BlockSize) throw new InvalidOperationException($"sequence {sequence} advanced past its reserved blocks");
        s.Length += tokens;
    }

    /// <summary>Frees the sequence and returns its blocks to the free list.</summary>
    public void Release(int sequence)
    {
        var s = Get(sequence);
        foreach (int block in s.Blocks) _free.Push(block);
        _sequences.Remove(sequence);
    }

    private Sequence Get(int sequence) =>
        _sequences.TryGetValue(sequence, out var s) ? s : throw new ArgumentException($"sequence {sequence} is not in the cache");

    public void Dispose()
    {
        foreach (var b in Keys) b.Dispose();
        foreach (var b in Values) b.Dispose();
    }
}
