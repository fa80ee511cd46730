// The paged KV cache: per layer one K and one V buffer of fixed-size blocks on the device
// (blocks · blockSize slots of kvDim values: float32, float16 or int8 with a scale per token and KV head), per-sequence
// block tables, a free list, and a prefix cache.
// Sequences grow block by block; releasing a sequence returns its blocks. Continuous batching sits on this.
// Prefix caching: every block a sequence fills is keyed by SHA-256 over its parent's key and its own tokens (a chain
// from the first block, so the key stands for all tokens up to the block's end). A new sequence whose first tokens
// match takes those blocks as they are (shared, counted by reference, never written again: only full blocks are
// shared) and skips computing them. A key only finds a block: the block is used after checking that it holds the
// prompt's tokens and follows the block attached just before it, so even two prefixes on one key (a collision,
// or a key function that makes them) never share a block; they only miss. A block no sequence uses any more stays
// cached, on an LRU list, until a reservation needs it. Whoever drives several caches in step (the ranks and stages
// of one pipeline) gets the same prefix hits from each, as long as each sees the same calls in the same order: the
// hits depend only on that history (keys are plain SHA-256, no per-process salt).
using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using Cluster.Compute;

namespace Cluster.Model;

public sealed class KvCacheExhaustedException(string message) : Exception(message);

/// <summary>The 256-bit key of a prefix of whole blocks; <see cref="Empty"/> is the empty prefix.</summary>
public readonly record struct PrefixKey(ulong Bits0, ulong Bits64, ulong Bits128, ulong Bits192)
{
    public static PrefixKey Empty => default;

    /// <summary>SHA-256 of <paramref name="parent"/>'s 32 bytes and then the block's token ids, all little-endian.</summary>
    public static PrefixKey Sha256(PrefixKey parent, ReadOnlySpan<int> blockTokens)
    {
        int length = 32 + 4 * blockTokens.Length;
        byte[]? rented = length > 1024 ? ArrayPool<byte>.Shared.Rent(length) : null;
        Span<byte> message = rented is null ? stackalloc byte[length] : rented.AsSpan(0, length);
        BinaryPrimitives.WriteUInt64LittleEndian(message, parent.Bits0);
        BinaryPrimitives.WriteUInt64LittleEndian(message[8..], parent.Bits64);
        BinaryPrimitives.WriteUInt64LittleEndian(message[16..], parent.Bits128);
        BinaryPrimitives.WriteUInt64LittleEndian(message[24..], parent.Bits192);
        for (int i = 0; i < blockTokens.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(message[(32 + 4 * i)..], blockTokens[i]);
        Span<byte> digest = stackalloc byte[32];
        SHA256.HashData(message, digest);
        if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        return new PrefixKey(BinaryPrimitives.ReadUInt64LittleEndian(digest), BinaryPrimitives.ReadUInt64LittleEndian(digest[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(digest[16..]), BinaryPrimitives.ReadUInt64LittleEndian(digest[24..]));
    }
}

public sealed class PagedKvCache : IDisposable
{
    private readonly Stack<int> _free;
    private readonly int[] _references;                                  // sequences using each block
    private readonly Func<PrefixKey, ReadOnlySpan<int>, PrefixKey> _keyOfBlock;
    private readonly Dictionary<PrefixKey, int> _blockOfKey = [];        // prefix key -> the block that ends it
    private readonly Dictionary<int, CachedBlock> _cached = [];          // block -> what it holds
    private readonly LinkedList<int> _unused = [];                        // cached blocks nobody uses, oldest first
    private readonly Dictionary<int, LinkedListNode<int>> _unusedNodes = [];
    private readonly Dictionary<int, Sequence> _sequences = [];
    private int _nextSequenceId;

    private sealed class Sequence
    {
        public readonly List<int> Blocks = [];
        public int Length;
        public PrefixKey PrefixKey = PrefixKey.Empty;   // of the tokens in its full blocks
        public CachedBlock? Chain;                      // the cached block that ends those tokens (null: none yet), or NotInCache
        public readonly List<int> OpenBlockTokens = [];   // tokens of its last, not yet full block
    }

    /// <summary>
    /// What a block in the prefix cache holds: its key, the cached block before it (null for a first block) and its
    /// tokens. An entry is never reused: a block evicted and filled again gets a new one, so following a parent by
    /// reference means following exactly the blocks whose K and V this block was computed after.
    /// </summary>
    private sealed class CachedBlock(PrefixKey key, CachedBlock? parent, int[] tokens)
    {
        public PrefixKey Key => key;
        public bool Forgotten { get; set; }

        /// <summary>Whether a lookup can reach it: it and every block before it are still cached.</summary>
        public bool Reachable
        {
            get
            {
                for (var block = this; block is not null; block = block.Parent)
                    if (block.Forgotten) return false;
                return true;
            }
        }

        private CachedBlock? Parent => parent;

        public bool Holds(CachedBlock? after, ReadOnlySpan<int> blockTokens) => parent == after && blockTokens.SequenceEqual(tokens);
    }

    /// <summary>The chain of a sequence whose full blocks are not all in the cache: nothing it fills can be found.</summary>
    private static readonly CachedBlock NotInCache = new(PrefixKey.Empty, null, []);

    /// <summary>A cache for every layer and KV head of <paramref name="config"/>.</summary>
    public PagedKvCache(IDevice device, ModelConfig config, int blocks, int blockSize = 16, Func<PrefixKey, ReadOnlySpan<int>, PrefixKey>? keyOfBlock = null,
        KvFormat format = KvFormat.F32)
        : this(device, config.Layers, config.KvDim, blocks, blockSize, keyOfBlock, format, config.HeadDim) { }

    /// <summary>A cache for <paramref name="layers"/> layers of <paramref name="kvDim"/> values per token (a shard's layers and KV heads).</summary>
    /// <param name="keyOfBlock">a prefix's key from its parent's key and its last block's tokens; <see cref="PrefixKey.Sha256"/>
    /// unless a test forces collisions.</param>
    /// <param name="format">How keys and values are kept (int8: one scale per token and KV head of <paramref name="headDim"/> values).</param>
    public PagedKvCache(IDevice device, int layers, int kvDim, int blocks, int blockSize = 16, Func<PrefixKey, ReadOnlySpan<int>, PrefixKey>? keyOfBlock = null,
        KvFormat format = KvFormat.F32, int headDim = 0)
    {
        if (blocks <= 0) throw new ArgumentOutOfRangeException(nameof(blocks), blocks, "the cache needs at least one block");
        if (blockSize <= 0) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "blocks hold at least one token");
        long floats = (long)blocks * blockSize * kvDim;
        if (floats > Array.MaxLength) throw new ArgumentOutOfRangeException(nameof(blocks), blocks, $"{blocks} blocks of {blockSize} tokens exceed one buffer per layer");
        Layers = layers;
        KvDim = kvDim;
        BlockSize = blockSize;
        TotalBlocks = blocks;
        Format = format;
        if (headDim <= 0) headDim = kvDim;   // one scale per token for int8 when the heads are not given
        _bytesPerToken = format.BytesPerToken(kvDim, headDim);
        Keys = new DeviceBuffer[layers];
        Values = new DeviceBuffer[layers];
        int slots = blocks * blockSize;
        for (int l = 0; l < layers; l++)
        {
            Keys[l] = device.AllocateKv(slots, kvDim, headDim, format);     // (blocks·blockSize, kvDim)
            Values[l] = device.AllocateKv(slots, kvDim, headDim, format);   // (blocks·blockSize, kvDim)
        }
        _free = new Stack<int>(Enumerable.Range(0, blocks).Reverse());
        _references = new int[blocks];
        _keyOfBlock = keyOfBlock ?? PrefixKey.Sha256;
    }

    /// <summary>A cache big enough for <paramref name="sequences"/> sequences of <paramref name="tokens"/> tokens each.</summary>
    public static PagedKvCache ForSequences(IDevice device, ModelConfig config, int sequences, int tokens, int blockSize = 16, KvFormat format = KvFormat.F32) =>
        new(device, config, sequences * ((tokens + blockSize - 1) / blockSize), blockSize, format: format);

    private readonly long _bytesPerToken;   // of K (or V) in one layer

    public int Layers { get; }
    /// <summary>Values of K (and of V) per token and layer.</summary>
    public int KvDim { get; }
    public int BlockSize { get; }
    public int TotalBlocks { get; }
    public KvFormat Format { get; }
    /// <summary>Device memory of the keys and values of every layer.</summary>
    public long Bytes => 2L * Layers * TotalBlocks * BlockSize * _bytesPerToken;
    /// <summary>Blocks a reservation can take: never used, or cached with no sequence using them.</summary>
    public int FreeBlocks => _free.Count + _unused.Count;
    /// <summary>Blocks that hold a known prefix (used or not).</summary>
    public int CachedBlocks => _cached.Count;
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
        for (int b = 0; b < blocks; b++)
        {
            var blockTokens = tokens.Slice(b * BlockSize, BlockSize);
            var key = _keyOfBlock(s.PrefixKey, blockTokens);
            if (!_blockOfKey.TryGetValue(key, out int block)) break;
            var cached = _cached[block];
            if (!cached.Holds(s.Chain, blockTokens)) break;   // another prefix on the same key
            if (_references[block]++ == 0) Unlist(block);
            s.Blocks.Add(block);
            s.Length += BlockSize;
            s.PrefixKey = key;
            s.Chain = cached;
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
            var blockTokens = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.OpenBlockTokens);
            s.PrefixKey = _keyOfBlock(s.PrefixKey, blockTokens);
            s.Chain = Cache(s.Blocks[s.Length / BlockSize - 1], s.PrefixKey, s.Chain, blockTokens);
            s.OpenBlockTokens.Clear();
        }
    }

    /// <summary>
    /// Caches a block just filled after the cached chain <paramref name="parent"/>; returns the entry that now ends the
    /// sequence's chain, or <see cref="NotInCache"/> when its prefix is not (all) in the cache.
    /// </summary>
    private CachedBlock Cache(int block, PrefixKey key, CachedBlock? parent, ReadOnlySpan<int> tokens)
    {
        if (parent == NotInCache) return NotInCache;   // nothing could reach the block: every lookup starts at the first block
        if (_blockOfKey.TryGetValue(key, out int existing))
        {
            var other = _cached[existing];
            if (other.Holds(parent, tokens)) return other;   // the same prefix computed twice (sequences that missed together): one copy is enough
            if (other.Reachable) return NotInCache;           // another prefix on the same key keeps it
            Forget(existing);                                 // an orphan (a block before it was evicted) gives way
        }
        var cached = new CachedBlock(key, parent, tokens.ToArray());
        _cached.Add(block, cached);
        _blockOfKey.Add(key, block);
        return cached;
    }

    /// <summary>Drops a block from the prefix cache; if no sequence uses it, it goes back to the free list.</summary>
    private void Forget(int block)
    {
        _cached.Remove(block, out var forgotten);
        forgotten!.Forgotten = true;
        _blockOfKey.Remove(forgotten.Key);
        if (_unusedNodes.ContainsKey(block))
        {
            Unlist(block);
            _free.Push(block);
        }
    }

    /// <summary>Frees the sequence: its blocks go back to the free list, or stay cached on the LRU list if they hold a prefix.</summary>
    public void Release(int sequence)
    {
        var s = Get(sequence);
        foreach (int block in s.Blocks)
        {
            if (--_references[block] > 0) continue;
            if (_cached.ContainsKey(block)) _unusedNodes[block] = _unused.AddLast(block);
            else _free.Push(block);
        }
        _sequences.Remove(sequence);
    }

    /// <summary>A never-used block if there is one, else the least recently used cached one (forgetting its prefix).</summary>
    private int Take()
    {
        if (_free.Count == 0) Forget(_unused.First!.Value);
        int block = _free.Pop();
        _references[block] = 1;
        return block;
    }

    private void Unlist(int block)
    {
        if (_unusedNodes.Remove(block, out var node)) _unused.Remove(node);
    }

    private Sequence Get(int sequence) =>
        _sequences.TryGetValue(sequence, out var s) ? s : throw new ArgumentException($"sequence {sequence} is not in the cache");

    public void Dispose()
    {
        foreach (var b in Keys) b.Dispose();
        foreach (var b in Values) b.Dispose();
    }
}
