// Prefix caching in the paged KV cache: a prompt whose first blocks were computed before takes them as they are and
// gives the same logits as computing everything; blocks are shared by reference while in use, stay cached when
// unused, and the least recently used go first when a reservation needs room. Keys are SHA-256; a hit is used only
// after its tokens and its place in the chain check out, so prefixes forced onto one key share nothing.
using System.Buffers.Binary;
using System.Security.Cryptography;
using Cluster.Compute.Cpu;
using Cluster.Model;

namespace Cluster.Tests;

public sealed class PrefixCacheTests
{
    private const int Block = 4;

    [Fact]
    public void CachedPrefixGivesTheSameLogitsAsComputingIt()
    {
        var config = TestModels.SmallConfig(Architecture.Llama);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, config, TestModels.RandomWeights(config, seed: 2));
        var rng = new Random(4);
        int[] shared = [.. Enumerable.Range(0, 13).Select(_ => rng.Next(config.VocabSize))];
        int[] prompt = [.. shared, .. Enumerable.Range(0, 6).Select(_ => rng.Next(config.VocabSize))];

        using var fresh = model.CreateCache(32, Block);
        int alone = fresh.CreateSequence();
        float[] expected = model.Forward([new SequenceChunk(alone, prompt)], fresh);

        using var cache = model.CreateCache(32, Block);
        int first = cache.CreateSequence();
        model.Forward([new SequenceChunk(first, shared)], cache);
        cache.Release(first);
        Assert.Equal(3, cache.CachedBlocks);   // 13 tokens fill 3 blocks of 4
        int second = cache.CreateSequence();
        int hit = cache.AttachPrefix(second, prompt);
        float[] actual = model.Forward([new SequenceChunk(second, prompt[hit..])], cache);

        Assert.Equal(12, hit);
        Assert.True(Reference.MaxRelativeError(actual, expected) <= 1e-5);
        Assert.Equal(prompt.Length, cache.Length(second));
    }

    [Fact]
    public void BlocksAreSharedWhileUsedAndEvictedLeastRecentlyUsedFirst()
    {
        var config = TestModels.SmallConfig(Architecture.Llama);
        using var device = new CpuDevice(1);
        using var cache = new PagedKvCache(device, config, blocks: 6, blockSize: Block);
        int[] a = [1, 2, 3, 4, 5, 6, 7, 8, 9], b = [11, 12, 13, 14, 15];

        int sa = Fill(cache, a);                      // 3 blocks, 2 of them full and cached
        int sb = cache.CreateSequence();
        Assert.Equal(8, cache.AttachPrefix(sb, [.. a[..8], 99]));   // shares a's two full blocks
        Assert.Equal(cache.BlockTable(sa).Take(2), cache.BlockTable(sb));
        cache.Release(sa);
        Assert.Equal(4, cache.FreeBlocks);            // a's open block came back; the shared two are still in use
        cache.Release(sb);
        Assert.Equal(6, cache.FreeBlocks);            // unused but still cached
        Assert.Equal(2, cache.CachedBlocks);

        int sc = Fill(cache, b);                      // takes the never-used blocks first
        Assert.Equal(3, cache.CachedBlocks);          // b's full block joins a's two
        int sd = cache.CreateSequence();
        cache.Reserve(sd, 3 * Block);                 // needs 3 of the 4 available: two never used, then the oldest cached
        cache.Release(sc);
        cache.Release(sd);
        int se = cache.CreateSequence();
        Assert.Equal(0, cache.AttachPrefix(se, [.. a[..8], 99]));   // a's first block was evicted, so its prefix chain is gone
        cache.Release(se);
        Assert.Equal(cache.TotalBlocks, cache.FreeBlocks);
    }

    [Fact]
    public void PrefixesForcedOntoOneKeyShareNoBlocks()
    {
        var config = TestModels.SmallConfig(Architecture.Llama);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, config, TestModels.RandomWeights(config, seed: 5));
        var rng = new Random(6);
        int[] RandomBlock() => [.. Enumerable.Range(0, Block).Select(_ => rng.Next(config.VocabSize))];
        int[] x = RandomBlock(), y = RandomBlock(), z = RandomBlock(), w = RandomBlock(), u = RandomBlock();
        var oneKey = new PrefixKey(1, 2, 3, 4);
        using var cache = new PagedKvCache(device, config, blocks: 32, Block, keyOfBlock: (_, _) => oneKey);

        float[] Run(int[] prompt, int expectedHit)
        {
            int sequence = cache.CreateSequence();
            int hit = cache.AttachPrefix(sequence, prompt);
            Assert.Equal(expectedHit, hit);
            float[] logits = model.Forward([new SequenceChunk(sequence, prompt[hit..])], cache);
            cache.Release(sequence);
            return logits;
        }
        float[] Fresh(int[] prompt)
        {
            using var fresh = model.CreateCache(32, Block);
            return model.Forward([new SequenceChunk(fresh.CreateSequence(), prompt)], fresh);
        }

        Run([.. x, .. y, .. z, 7], expectedHit: 0);
        Assert.Equal(1, cache.CachedBlocks);   // x's block took the one key; y's and z's could not join it
        int[] otherFirstBlock = [.. w, .. y, .. z, 7];
        Assert.True(Reference.MaxRelativeError(Run(otherFirstBlock, expectedHit: 0), Fresh(otherFirstBlock)) <= 1e-5);
        // x again at the second block: same key, same tokens, but it follows x, not the start: only the first block is shared.
        int[] repeated = [.. x, .. x, .. u, 7];
        Assert.True(Reference.MaxRelativeError(Run(repeated, expectedHit: Block), Fresh(repeated)) <= 1e-5);
    }

    [Fact]
    public void KeysAreSha256OfTheParentKeyAndTheTokens()
    {
        byte[] message = new byte[32 + 8];
        BinaryPrimitives.WriteInt32LittleEndian(message.AsSpan(32), 1);
        BinaryPrimitives.WriteInt32LittleEndian(message.AsSpan(36), -2);
        byte[] digest = SHA256.HashData(message);
        var first = PrefixKey.Sha256(PrefixKey.Empty, [1, -2]);
        Assert.Equal(BinaryPrimitives.ReadUInt64LittleEndian(digest), first.Bits0);
        Assert.Equal(BinaryPrimitives.ReadUInt64LittleEndian(digest.AsSpan(24)), first.Bits192);
        Assert.NotEqual(PrefixKey.Sha256(first, [1, -2]), first);
        Assert.Equal(PrefixKey.Sha256(first, [1, -2]), PrefixKey.Sha256(PrefixKey.Sha256(PrefixKey.Empty, [1, -2]), [1, -2]));
    }

    [Fact]
    public void BlocksOrphanedByAnEvictionGiveWayToTheirPrefixComputedAgain()
    {
        var config = TestModels.SmallConfig(Architecture.Llama);
        using var device = new CpuDevice(1);
        using var cache = new PagedKvCache(device, config, blocks: 6, blockSize: Block);
        int[] prompt = [.. Enumerable.Range(1, 3 * Block + 1)];

        cache.Release(Fill(cache, prompt));          // 3 full blocks cached
        int evictor = cache.CreateSequence();
        cache.Reserve(evictor, 4 * Block);            // the 3 never-used blocks, then the prompt's first block
        cache.Release(evictor);
        Assert.Equal(2, cache.CachedBlocks);          // the prompt's later blocks, now out of reach
        int probe = cache.CreateSequence();
        Assert.Equal(0, cache.AttachPrefix(probe, prompt));
        cache.Release(probe);

        cache.Release(Fill(cache, prompt));          // computed again: its blocks replace the orphans
        Assert.Equal(3, cache.CachedBlocks);
        int again = cache.CreateSequence();
        Assert.Equal(3 * Block, cache.AttachPrefix(again, prompt));
        cache.Release(again);
        Assert.Equal(cache.TotalBlocks, cache.FreeBlocks);
    }

    private static int Fill(PagedKvCache cache, int[] tokens)
    {
        int s = cache.CreateSequence();
        cache.Reserve(s, tokens.Length);
        cache.Advance(s, tokens);
        return s;
    }
}
