// Continuous-batching invariant: a batch of sequences at different positions, with pages scattered by a
// shared free list, produces the same logits as running each sequence alone (Llama with GQA, and GPT-2).
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Model;

namespace Cluster.Tests;

public sealed class BatchedForwardTests
{
    public static TheoryData<Architecture> Architectures => new() { Architecture.Llama, Architecture.Gpt2 };

    [Theory]
    [MemberData(nameof(Architectures))]
    public void AModelThatReleasedItsHostWeightsGivesTheSameLogits(Architecture architecture)
    {
        var config = TestModels.SmallConfig(architecture);
        var weights = TestModels.RandomWeights(config, seed: 5);
        using var device = new CpuDevice(1);
        using var kept = new TransformerModel(device, config, weights);
        var slice = Cluster.Model.Parallel.ShardWeights.Slice(config, weights, Cluster.Model.Parallel.ShardSpec.Whole(config));
        using var released = new TransformerModel(device, config, slice, releaseHostWeights: true);
        Assert.All(slice.Layers, Assert.Null);   // handed to the device, layer by layer
        int[] tokens = [3, 1, 4, 1, 5, 9, 2, 6];
        using var a = PagedKvCache.ForSequences(device, config, 1, 16, blockSize: 4);
        using var b = PagedKvCache.ForSequences(device, config, 1, 16, blockSize: 4);
        Assert.Equal(kept.Forward([new SequenceChunk(a.CreateSequence(), tokens, AllLogits: true)], a),
            released.Forward([new SequenceChunk(b.CreateSequence(), tokens, AllLogits: true)], b));
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void BatchOfSequencesAtDifferentPositionsEqualsEachAlone(Architecture architecture)
    {
        var config = TestModels.SmallConfig(architecture);
        var weights = TestModels.RandomWeights(config, seed: 42);
        using var device = new CpuDevice(2);
        using var model = new TransformerModel(device, config, weights);
        int[] promptLengths = [1, 5, 17, 33];
        const int decodeSteps = 6;
        var rng = new Random(7);
        int[][] prompts = promptLengths.Select(n => Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize)).ToArray()).ToArray();
        int[][] continuations = prompts.Select(_ => Enumerable.Range(0, decodeSteps).Select(_ => rng.Next(config.VocabSize)).ToArray()).ToArray();

        // Each sequence alone: prefill with every position's logits, then one token per step.
        var alone = new List<float[]>[prompts.Length];
        for (int s = 0; s < prompts.Length; s++)
        {
            using var cache = PagedKvCache.ForSequences(device, config, 1, 64, blockSize: 4);
            int id = cache.CreateSequence();
            alone[s] = [model.Forward([new SequenceChunk(id, prompts[s], AllLogits: true)], cache)];
            foreach (int token in continuations[s]) alone[s].Add(model.Forward([new SequenceChunk(id, [token])], cache));
        }

        // All together in one cache: sequences join at different steps (staggered prefill), then decode as one batch.
        using var shared = new PagedKvCache(device, config, blocks: 64, blockSize: 4);
        int[] ids = prompts.Select(_ => shared.CreateSequence()).ToArray();
        var batched = prompts.Select(_ => new List<float[]>()).ToArray();
        int V = config.VocabSize;
        var first = model.Forward([new SequenceChunk(ids[2], prompts[2], AllLogits: true), new SequenceChunk(ids[0], prompts[0], AllLogits: true)], shared);
        batched[2].Add(first[..(prompts[2].Length * V)]);
        batched[0].Add(first[(prompts[2].Length * V)..]);
        var second = model.Forward([new SequenceChunk(ids[0], [continuations[0][0]]), new SequenceChunk(ids[2], [continuations[2][0]]),
                                    new SequenceChunk(ids[1], prompts[1], AllLogits: true), new SequenceChunk(ids[3], prompts[3], AllLogits: true)], shared);
        batched[0].Add(second[..V]);
        batched[2].Add(second[V..(2 * V)]);
        batched[1].Add(second[(2 * V)..((2 + prompts[1].Length) * V)]);
        batched[3].Add(second[((2 + prompts[1].Length) * V)..]);
        int[] next = [1, 0, 1, 0];   // index of each sequence's next continuation token
        for (int step = 0; step < decodeSteps; step++)
        {
            var chunks = Enumerable.Range(0, 4).Where(s => next[s] < decodeSteps).Select(s => (s, Chunk: new SequenceChunk(ids[s], [continuations[s][next[s]]]))).ToList();
            var logits = model.Forward(chunks.Select(c => c.Chunk).ToList(), shared);
            for (int i = 0; i < chunks.Count; i++)
            {
                batched[chunks[i].s].Add(logits[(i * V)..((i + 1) * V)]);
                next[chunks[i].s]++;
            }
        }

        for (int s = 0; s < prompts.Length; s++)
        {
            Assert.Equal(alone[s].Count, batched[s].Count);
            for (int step = 0; step < alone[s].Count; step++)
                Assert.True(Reference.MaxRelativeError(batched[s][step], alone[s][step]) <= 1e-5, $"sequence {s} step {step}");
        }

        foreach (int id in ids) shared.Release(id);
        Assert.Equal(shared.TotalBlocks, shared.FreeBlocks);
    }

    public static TheoryData<Architecture, RopeLayout> ArchitecturesAndLayouts => new()
    {
        { Architecture.Llama, RopeLayout.Interleaved }, { Architecture.Llama, RopeLayout.HalfSplit }, { Architecture.Gpt2, RopeLayout.Interleaved },
    };

    [Theory]
    [MemberData(nameof(ArchitecturesAndLayouts))]
    public void ForwardMatchesPlainReferenceTransformer(Architecture architecture, RopeLayout ropeLayout)
    {
        var config = TestModels.SmallConfig(architecture) with { RopeLayout = ropeLayout };
        var weights = TestModels.RandomWeights(config, seed: 5);
        int[] tokens = Enumerable.Range(0, 21).Select(i => (i * 37 + 11) % config.VocabSize).ToArray();
        using var device = new CpuDevice(2);
        using var model = new TransformerModel(device, config, weights);
        using var cache = PagedKvCache.ForSequences(device, config, 1, tokens.Length, blockSize: 8);
        var logits = model.Forward([new SequenceChunk(cache.CreateSequence(), tokens, AllLogits: true)], cache);
        Assert.True(Reference.MaxRelativeError(logits, ReferenceTransformer.Forward(config, weights, tokens)) <= 1e-4);
    }

    [Fact]
    public void BadBatchesAreRejectedWithoutTouchingTheCache()
    {
        var config = TestModels.SmallConfig(Architecture.Llama);
        using var device = new CpuDevice(1);
        using var model = new TransformerModel(device, config, TestModels.RandomWeights(config, seed: 1));
        using var cache = new PagedKvCache(device, config, blocks: 2, blockSize: 4);
        int id = cache.CreateSequence();
        Assert.Throws<ArgumentOutOfRangeException>(() => model.Forward([new SequenceChunk(id, [config.VocabSize])], cache));
        Assert.Throws<ArgumentException>(() => model.Forward([new SequenceChunk(id, [])], cache));
        Assert.Throws<ArgumentException>(() => model.Forward([new SequenceChunk(id, [1]), new SequenceChunk(id, [2])], cache));
        Assert.Throws<KvCacheExhaustedException>(() => model.Forward([new SequenceChunk(id, new int[9])], cache));
        Assert.Equal(0, cache.Length(id));
        Assert.Equal(2, cache.FreeBlocks);
        model.Forward([new SequenceChunk(id, [1, 2, 3])], cache);
        Assert.Equal(3, cache.Length(id));
    }
}
