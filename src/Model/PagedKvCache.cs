// The paged KV cache: per layer one K and one V buffer of fixed-size blocks on the device
// (blocks · blockSize slots of kvDim floats), per-sequence block tables, a free list, and a prefix cache.
// Sequences grow block by block; releasing a sequence returns its blocks. Continuous batching sits on this.
// Prefix caching: every block a sequence fills is keyed by a hash of all tokens up to its end (a chain over the
// blocks before it). A new sequence whose first tokens match takes those blocks as they are (shared, counted by
// reference, never written again: only full blocks are shared) and skips computing them. A block no sequence uses
// any more stays cached, on an LRU list, until a reservation needs it. Whoever drives several caches in step (the
// ranks and stages of one pipeline) gets the same prefix hits from each, as long as each sees the same calls in
// the same order: the hits depend only on that history.
using Cluster.Compute;

namespace Cluster.Model;

public sealed class KvCacheExhaustedException(string message) : Exception(message);

public sealed class PagedKvCache : IDisposable
{
    private readonly Stack<int> _free;
    private readonly int[] _references;                                  // sequences using each block
    private readonly Dictionary<ulong, int> _blockOfPrefix = [];         // prefix hash -> the block that ends it
    private readonly Dictionary<int, ulong> _prefixOfBlock = [];
    private readonly LinkedList<int> _unused = [];                        // cached blocks nobody uses, oldest first
    private readonly Dictionary<int, LinkedListNode<int>> _unusedNodes = [];
    private readonly Dictionary<int, Sequence> _sequences = [];
    private int _nextSequenceId;

    private sealed class Sequence
    {
        public readonly List<int> Blocks = [];
        public int Length;
        public ulong PrefixHash = FnvOffset;     // of the tokens in its full blocks
        public readonly List<int> OpenBlockTokens = [];   // tokens of its last, not yet full block
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
        _references = new int[blocks];
    }

    /// <summary>A cache big enough for <paramref name="sequences"/> sequences of <paramref name="tokens"/> tokens each.</summary>
    public static PagedKvCache ForSequences(IDevice device, ModelConfig config, int sequences, int tokens, int blockSize = 16) =>
        new(device, config, sequences * ((tokens + blockSize - 1) / blockSize), blockSize);

    public int Layers { get; }
    /// <summary>Floats of K (and of V) per token and layer.</summary>
    public int KvDim { get; }
    public int BlockSize { get; }
    public int TotalBlocks { get; }
    /// <summary>Blocks a reservation can take: never used, or cached with no sequence using them.</summary>
    public int FreeBlocks => _free.Count + _unused.Count;
    /// <summary>Blocks that hold a known prefix (used or not).</summary>
    public int CachedBlocks => _prefixOfBlock.Count;
    /// <summary>Prompt tokens that <see cref="AttachPrefix"/> found cached so far.</summary>
    public long PrefixHitTokens { get; private set; }
    public DeviceBuffer[] Keys { get; }
    public DeviceBuffer[] Values { get; }
    public int ActiveSequences => _sequences.Count;

    public int CreateSequence()
    {
        int id = _nextSequenceId++;
        _sequences.Add(id, new Sequence());
        return id;
    }

    /// <summary>
    /// For a new, empty sequence about to take <paramref name="tokens"/>: attaches the cached blocks of their longest
    /// cached prefix of whole blocks (never all of them: the last token is left to compute), at most
    /// <paramref name="maxTokens"/> tokens, and returns how many tokens they hold.
    /// </summary>
    public int AttachPrefix(int sequence, ReadOnlySpan<int> tokens, int maxTokens = int.MaxValue)
    {
        var s = Get(sequence);
        if (s.Length != 0) throw new InvalidOperationException($"sequence {sequence} already holds {s.Length} tokens");
        int blocks = Math.Min((tokens.Length - 1) / BlockSize, maxTokens / BlockSize);
        ulong hash = s.PrefixHash;
        for (int b = 0; b < blocks; b++)
        {
            hash = Extend(hash, tokens.Slice(b * BlockSize, BlockSize));
            if (!_blockOfPrefix.TryGetValue(hash, out int block)) break;
            if (_references[block]++ == 0) Unlist(block);
            s.Blocks.Add(block);
            s.Length += BlockSize;
            s.PrefixHash = hash;
        }
        PrefixHitTokens += s.Length;
        return s.Length;
    }

    /// <summary>Tokens of <paramref name="sequence"/> already in the cache (the position its next token takes).</summary>
    public int Length(int sequence) => Get(sequence).Length;

    public IReadOnlyList<int> BlockTable(int sequence) => Get(sequence).Blocks;

    /// <summary>Makes room for <paramref name="extraTokens"/> more tokens; all or nothing.</summary>
    public void Reserve(int sequence, int extraTokens)
    {
        var s = Get(sequence);
        int needed = (s.Length + extraTokens + BlockSize - 1) / BlockSize - s.Blocks.Count;
        if (needed > FreeBlocks)
            throw new KvCacheExhaustedException($"KV cache full: sequence {sequence} needs {needed} more blocks of {BlockSize} tokens, {FreeBlocks} of {TotalBlocks} free");
        for (int i = 0; i < needed; i++) s.Blocks.Add(Take());
    }

    /// <summary>Records that the next reserved slots now hold the K and V of <paramref name="tokens"/>; full blocks join the prefix cache.</summary>
    public void Advance(int sequence, ReadOnlySpan<int> tokens)
    {
        var s = Get(sequence);
        if (s.Length + tokens.Length > s.Blocks.Count * BlockSize) throw new InvalidOperationException($"sequence {sequence} advanced past its reserved blocks");
        foreach (int token in tokens)
        {
            s.OpenBlockTokens.Add(token);
            s.Length++;
            if (s.OpenBlockTokens.Count < BlockSize) continue;
            s.PrefixHash = Extend(s.PrefixHash, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.OpenBlockTokens));
            s.OpenBlockTokens.Clear();
            int block = s.Blocks[s.Length / BlockSize - 1];
            if (!_prefixOfBlock.ContainsKey(block) && _blockOfPrefix.TryAdd(s.PrefixHash, block)) _prefixOfBlock[block] = s.PrefixHash;
        }
    }

    /// <summary>Frees the sequence: its blocks go back to the free list, or stay cached on the LRU list if they hold a prefix.</summary>
    public void Release(int sequence)
    {
        var s = Get(sequence);
        foreach (int block in s.Blocks)
        {
            if (--_references[block] > 0) continue;
            if (_prefixOfBlock.ContainsKey(block)) _unusedNodes[block] = _unused.AddLast(block);
            else _free.Push(block);
        }
        _sequences.Remove(sequence);
    }

    /// <summary>A never-used block if there is one, else the least recently used cached one (forgetting its prefix).</summary>
    private int Take()
    {
        int block;
        if (_free.Count > 0) block = _free.Pop();
        else
        {
            block = _unused.First!.Value;
            Unlist(block);
            _blockOfPrefix.Remove(_prefixOfBlock[block]);
            _prefixOfBlock.Remove(block);
        }
        _references[block] = 1;
        return block;
    }

    private void Unlist(int block)
    {
        if (_unusedNodes.Remove(block, out var node)) _unused.Remove(node);
    }

    private const ulong FnvOffset = 14695981039346656037, FnvPrime = 1099511628211;

    /// <summary>The prefix hash after one more block of tokens (64-bit FNV-1a over the previous hash and the token ids).</summary>
    private static ulong Extend(ulong hash, ReadOnlySpan<int> tokens)
    {
        foreach (int token in tokens)
            for (int shift = 0; shift < 32; shift += 8)
                hash = (hash ^ (byte)(token >> shift)) * FnvPrime;
        return hash;
    }

    private Sequence Get(int sequence) =>
        _sequences.TryGetValue(sequence, out var s) ? s : throw new ArgumentException($"sequence {sequence} is not in the cache");

    public void Dispose()
    {
        foreach (var b in Keys) b.Dispose();
        foreach (var b in Values) b.Dispose();
    }
}
