// Prefix caching in the paged KV cache: a prompt whose first blocks were computed before takes them as they are and
// gives the same logits as computing everything; blocks are shared by reference while in use, stay cached when
// unused, and the least recently used go first when a reservation needs room.
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

    private static int Fill(PagedKvCache cache, int[] tokens)
    {
        int s = cache.CreateSequence();
        cache.Reserve(s, tokens.Length);
        cache.Advance(s, tokens);
        return s;
    }
}
