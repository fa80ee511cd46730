// Sharded forward = one device: every layout's logits (prefill and decode steps of several sequences in one batch)
// within 1e-5 of the whole model on one device, for Llama (GQA, uneven head and hidden splits) and GPT-2 (biases),
// stories260K's greedy continuation token for token under tp=2 × pp=2, and sampled text from a layout's shards in
// one process (LocalPipeline, what `cluster generate --layout` runs) equal to one device's.
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Parallel;

namespace Cluster.Tests.Parallel;

public sealed class ShardedForwardTests
{
    [Theory]
    [InlineData("tp=2")]
    [InlineData("pp=2")]
    [InlineData("pp=3")]
    [InlineData("tp=2,pp=2")]
    [InlineData("tp=3,pp=2,layers=1+4")]   // 4 KV heads over 3 ranks, 172 hidden units over 3: uneven slices
    [InlineData("tp=4,pp=5")]
    public void LlamaLayoutEqualsOneDevice(string layout)
    {
        var model = RandomModel.Create("tiny", seed: 3);
        AssertLayoutEqualsOneDevice(model.Config, model.Weights, ParallelLayout.Parse(layout));
    }

    [Theory]
    [InlineData("tp=2,pp=2")]
    [InlineData("tp=3,pp=3")]
    public void Stories15MShapeLayoutEqualsOneDevice(string layout)
    {
        var model = RandomModel.Create("stories15M", seed: 3);   // dim 288, 6 layers, 6 heads, vocab 32000
        AssertLayoutEqualsOneDevice(model.Config, model.Weights, ParallelLayout.Parse(layout));
    }

    [Theory]
    [InlineData("pp=2")]
    [InlineData("pp=4")]
    [InlineData("ep=2")]
    [InlineData("ep=3")]          // 8 experts over 3 ranks: 3 + 3 + 2
    [InlineData("ep=4")]
    [InlineData("ep=2,pp=2")]
    [InlineData("tp=2,ep=2")]     // attention split by heads, experts by rank, on the same two ranks
    public void MoeLayoutEqualsOneDevice(string layout)
    {
        var model = RandomModel.Create("moe-tiny", seed: 3);   // 4 layers of 8 experts, 2 per token
        AssertLayoutEqualsOneDevice(model.Config, model.Weights, ParallelLayout.Parse(layout));
    }

    [Theory]
    [InlineData("ep=2")]
    [InlineData("ep=3,pp=2")]     // 128 shared hidden units over 3 ranks: 43 + 43 + 42
    [InlineData("tp=2,ep=2")]
    public void SharedExpertLayoutEqualsOneDevice(string layout)
    {
        var model = RandomModel.Create("qwen-moe-tiny", seed: 3);   // 8 experts, 2 per token, and a gated shared expert cut by hidden units
        AssertLayoutEqualsOneDevice(model.Config, TestModels.WithAttentionBiases(model.Config, model.Weights, 4), ParallelLayout.Parse(layout));
    }

    [Theory]
    [InlineData("moe-tiny", "tp=2", "ep = tp")]            // tensor parallelism would cut experts
    [InlineData("moe-tiny", "tp=2,ep=4", "ep = tp")]
    [InlineData("moe-tiny", "ep=9", "more ranks than the 8 experts")]
    [InlineData("tiny", "ep=2", "needs a mixture-of-experts model")]
    public void ExpertParallelLayoutsThatDoNotFitAreRefused(string preset, string layout, string reason)
    {
        var error = Assert.Throws<ArgumentException>(() => ShardingPlan.Create(RandomModel.Preset(preset), ParallelLayout.Parse(layout)));
        Assert.Contains(reason, error.Message);
    }

    [Fact]
    public void ExpertParallelRanksHoldTheirExpertsAndEveryHead()
    {
        var config = RandomModel.Preset("moe-tiny");
        var plan = ShardingPlan.Create(config, ParallelLayout.Parse("ep=3,pp=2"));
        Assert.Equal("tp=1,pp=2,dp=1,ep=3", plan.Layout.ToString());
        Assert.Equal(6, plan.Shards.Count);
        foreach (int stage in new[] { 0, 1 })
        {
            var group = plan.TensorGroup(0, stage);
            Assert.Equal([new Slice(0, 3), new Slice(3, 3), new Slice(6, 2)], group.Select(s => s.Experts));
            Assert.All(group, s => Assert.Equal(config.Heads, s.QueryHeads.Count));
        }
    }

    [Theory]
    [InlineData("tp=2")]
    [InlineData("tp=3,pp=2")]
    public void Gpt2LayoutEqualsOneDevice(string layout)
    {
        var config = TestModels.SmallConfig(Architecture.Gpt2);
        AssertLayoutEqualsOneDevice(config, TestModels.RandomWeights(config, seed: 5), ParallelLayout.Parse(layout));
    }

    private static void AssertLayoutEqualsOneDevice(ModelConfig config, ModelWeights weights, ParallelLayout layout)
    {
        using var device = new CpuDevice(1);
        using var whole = new TransformerModel(device, config, weights);
        using var wholeCache = whole.CreateCache(64, 4);
        using var pipeline = new LocalPipeline(config, weights, layout, () => new CpuDevice(1), kvBlocks: 64, blockSize: 4);
        var rng = new Random(11);
        int[] Tokens(int n) => [.. Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize))];
        int[] prompts = [7, 1, 13];
        var sequences = prompts.Select(_ => (Whole: wholeCache.CreateSequence(), Sharded: pipeline.CreateSequence())).ToArray();

        // Step 1: every prompt with all logits; steps 2-4: one decode token each, plus a late prompt in step 3.
        (int Sequence, int[] Tokens, bool All)[][] steps =
        [
            [.. prompts.Select((n, i) => (i, Tokens(n), true))],
            [.. prompts.Select((_, i) => (i, Tokens(1), false))],
            [(0, Tokens(1), false), (2, Tokens(5), true)],
            [.. prompts.Select((_, i) => (i, Tokens(1), false))],
        ];
        foreach (var step in steps)
        {
            float[] expected = whole.Forward([.. step.Select(c => new SequenceChunk(sequences[c.Sequence].Whole, c.Tokens, c.All))], wholeCache);
            float[] actual = pipeline.Forward([.. step.Select(c => new SequenceChunk(sequences[c.Sequence].Sharded, c.Tokens, c.All))]);
            Assert.True(Reference.MaxRelativeError(actual, expected) <= 1e-5, $"layout {layout}: max error {Reference.MaxRelativeError(actual, expected)}");
        }
        foreach (var (_, sharded) in sequences) pipeline.Release(sharded);
        Assert.All(pipeline.Caches, c => Assert.Equal(c.TotalBlocks, c.FreeBlocks));
    }

    [Fact]
    public void Stories260KGreedyUnderTp2Pp2MatchesRunC()
    {
        var loaded = ModelLoader.Load(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));
        int[] expected = File.ReadAllLines(SharedModels.Require("expected/greedy_empty_n200.token_ids.txt"))
            .Where(l => l.Length > 0).Select(int.Parse).Take(60).ToArray();
        using var pipeline = new LocalPipeline(loaded.Config, loaded.Weights, ParallelLayout.Parse("tp=2,pp=2"), () => new CpuDevice(1), kvBlocks: 32, blockSize: 16);
        var generated = new TextGenerator(pipeline, loaded.Tokenizer!).Generate("", expected.Length, SamplingOptions.Greedy).Select(t => t.Id);
        Assert.Equal(expected, generated);
        Assert.All(pipeline.Caches, c => Assert.Equal(c.TotalBlocks, c.FreeBlocks));   // the generator's sequence is released
    }

    /// <summary>What `cluster generate --layout` runs: a layout's shards in this process give one device's sampled text.</summary>
    [Theory]
    [InlineData("tiny", "tp=2,pp=2")]
    [InlineData("moe-tiny", "ep=2,pp=2")]
    public void TextFromALocalPipelineEqualsOneDevice(string preset, string layout)
    {
        var model = RandomModel.Create(preset, seed: 3);
        var sampling = new SamplingOptions(Temperature: 0.8f, TopP: 0.9f, TopK: 0, Seed: 42);
        using var device = new CpuDevice(1);
        using var whole = new TransformerModel(device, model.Config, model.Weights);
        using var pipeline = new LocalPipeline(model.Config, model.Weights, ParallelLayout.Parse(layout), () => new CpuDevice(1), kvBlocks: 16, blockSize: 16);
        int[] expected = [.. new TextGenerator(whole, model.Tokenizer!).Generate("Once upon a time", 40, sampling).Select(t => t.Id)];
        int[] actual = [.. new TextGenerator(pipeline, model.Tokenizer!).Generate("Once upon a time", 40, sampling).Select(t => t.Id)];
        Assert.NotEmpty(expected);
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void ALocalPipelineRefusesASequenceLongerThanItsCaches()
    {
        var model = RandomModel.Create("tiny", seed: 3);
        using var pipeline = new LocalPipeline(model.Config, model.Weights, ParallelLayout.Parse("pp=2"), () => new CpuDevice(1), kvBlocks: 2, blockSize: 4);
        Assert.Throws<ArgumentException>(() => pipeline.Start(9));
        using var fits = pipeline.Start(8);
    }
}

public sealed class ShardingPlanTests
{
    [Fact]
    public void SlicesCoverEveryHeadHiddenUnitVocabRowAndLayerOnce()
    {
        var config = RandomModel.Preset("tiny");   // 5 layers, 8 heads over 4 KV heads, hidden 172, vocab 512
        var plan = ShardingPlan.Create(config, ParallelLayout.Parse("tp=3,pp=2,dp=2,layers=2+3"));
        Assert.Equal(12, plan.Shards.Count);
        for (int replica = 0; replica < 2; replica++)
        {
            Assert.Equal([0, 1, 2, 3, 4], Enumerable.Range(0, 2).SelectMany(s => Range(plan.Get(replica, s, 0).Layers)));
            for (int stage = 0; stage < 2; stage++)
            {
                var group = plan.TensorGroup(replica, stage);
                Assert.Equal(Enumerable.Range(0, 8), group.SelectMany(g => Range(g.QueryHeads)));
                Assert.Equal(Enumerable.Range(0, 4), group.SelectMany(g => Range(g.KvHeads)));
                Assert.Equal(Enumerable.Range(0, 172), group.SelectMany(g => Range(g.Hidden)));
                Assert.Equal(Enumerable.Range(0, 512), group.SelectMany(g => Range(g.Vocab)));
                Assert.All(group, g => Assert.Equal(stage == 0, g.IsFirstStage));
                Assert.All(group, g => Assert.Equal(stage == 1, g.IsLastStage));
                // Query heads follow their KV heads (GQA groups of 2 stay on one rank).
                Assert.All(group, g => Assert.Equal(g.KvHeads.Offset * 2, g.QueryHeads.Offset));
            }
        }

        static IEnumerable<int> Range(Slice s) => Enumerable.Range(s.Offset, s.Count);
    }

    [Theory]
    [InlineData("tp=5")]             // more ranks than KV heads
    [InlineData("pp=6")]             // more stages than layers
    [InlineData("layers=2+2")]       // does not add up to 5
    [InlineData("pp=2,layers=5+0")]  // an empty stage
    public void LayoutsThatDoNotFitAreRefused(string layout)
    {
        var config = RandomModel.Preset("tiny");
        Assert.ThrowsAny<Exception>(() => ShardingPlan.Create(config, ParallelLayout.Parse(layout)));
    }

    [Theory]
    [InlineData("tp")]
    [InlineData("tp=0")]
    [InlineData("tp=two")]
    [InlineData("xx=2")]
    [InlineData("pp=2,layers=1+1+3")]
    public void MalformedLayoutsGiveFormatErrors(string layout) => Assert.Throws<FormatException>(() => ParallelLayout.Parse(layout));

    [Fact]
    public void LayoutRoundTripsThroughText()
    {
        var layout = ParallelLayout.Parse(" TP=2 , pp=2, layers=3+2 ,dp=3");
        Assert.Equal("tp=2,pp=2,dp=3,layers=3+2", layout.ToString());
        Assert.Equal(layout, ParallelLayout.Parse(layout.ToString()));
    }
}
