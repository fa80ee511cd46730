// Training data and optimizer: packing keeps documents whole and apart, shuffles by seed, resumes from a cursor;
// the schedule warms up and decays; clipping bounds the gradient; and the whole loop lowers the loss on the
// generated arithmetic data.
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class DataAndOptimizerTests
{
    private static TrainingDocument[] Documents(int count) => [.. Enumerable.Range(0, count).Select(i => new TrainingDocument(Enumerable.Range(100 * i, 2 + i % 5).ToArray()))];

    [Fact]
    public void PackingKeepsDocumentsWholeAndApart()
    {
        var data = new PackedDataset(Documents(20), sequenceLength: 16, seed: 1);
        var (batch, _) = data.Take(6, default);
        foreach (var sequence in batch)
        {
            Assert.Equal(16, sequence.Tokens.Length);
            for (int t = 0; t + 1 < 16; t++)
            {
                if (sequence.Targets[t] == CrossEntropy.Ignore) continue;
                Assert.Equal(sequence.Tokens[t + 1], sequence.Targets[t]);                 // next token ...
                Assert.Equal(sequence.Documents![t], sequence.Documents[t + 1]);           // ... of the same document
                Assert.Equal(sequence.Tokens[t] / 100, sequence.Tokens[t + 1] / 100);     // documents are whole (ids 100·i + j)
            }
            Assert.Equal(CrossEntropy.Ignore, sequence.Targets[^1]);
        }
    }

    [Fact]
    public void SameSeedSameOrderAndACursorResumesExactly()
    {
        var a = new PackedDataset(Documents(30), 12, seed: 7);
        var b = new PackedDataset(Documents(30), 12, seed: 7);
        var (straight, _) = a.Take(10, default);                       // crosses into the second epoch
        var (firstPart, cursor) = b.Take(4, default);
        var (secondPart, _) = new PackedDataset(Documents(30), 12, seed: 7).Take(6, cursor);

        Assert.Equal(straight.Select(s => s.Tokens), firstPart.Concat(secondPart).Select(s => s.Tokens));
        Assert.NotEqual(straight[0].Tokens, new PackedDataset(Documents(30), 12, seed: 8).Take(1, default).Batch[0].Tokens);
    }

    [Fact]
    public void ScheduleWarmsUpThenDecaysToTheFloor()
    {
        var options = new OptimizerOptions { LearningRate = 1e-3f, MinLearningRate = 1e-4f, WarmupSteps = 10, TotalSteps = 110 };
        Assert.Equal(1e-4f, options.LearningRateAt(1), 1e-9f);
        Assert.Equal(1e-3f, options.LearningRateAt(10), 1e-9f);
        Assert.Equal(5.5e-4f, options.LearningRateAt(60), 1e-7f);     // half way: the mean of top and floor
        Assert.Equal(1e-4f, options.LearningRateAt(110), 1e-9f);
        Assert.Equal(1e-4f, options.LearningRateAt(500), 1e-9f);
    }

    [Fact]
    public void ClippingBoundsTheGlobalNorm()
    {
        var config = TestModels.SmallConfig(Architecture.Llama);
        using var model = new TrainableModel(config, TestModels.RandomWeights(config, 3));
        foreach (var (_, _, gradient) in model.Parameters()) Array.Fill(gradient, 1f);
        double norm = Math.Sqrt(model.Parameters().Sum(p => (double)p.Gradient.Length));
        var optimizer = new Optimizer(model, new OptimizerOptions { ClipNorm = 1f });

        var (_, reported) = optimizer.Apply();

        Assert.Equal(norm, reported, 1e-2);
        double after = Math.Sqrt(model.Parameters().Sum(p => p.Gradient.Sum(g => (double)g * g)));
        Assert.Equal(1.0, after, 1e-4);
    }

    [Fact]
    public void TrainingOnGeneratedAdditionsLowersTheLoss()
    {
        var config = TestModels.SmallConfig(Architecture.Llama) with { VocabSize = 16, MaxSeqLen = 32 };
        using var model = new TrainableModel(config, TestModels.RandomWeights(config, 11));
        // Characters as tokens: digits 0-9, '+' 10, '=' 11, BOS 12.
        int Token(char ch) => ch switch { '+' => 10, '=' => 11, _ => ch - '0' };
        var documents = Datasets.Additions(400, seed: 1).Select(p => new TrainingDocument([12, .. (p.Prompt + p.Completion).Select(Token)]));
        var data = new PackedDataset(documents, sequenceLength: 32, seed: 1);
        var optimizer = new Optimizer(model, new OptimizerOptions { LearningRate = 1e-2f, MinLearningRate = 1e-3f, WarmupSteps = 5, TotalSteps = 60 });
        var cursor = default(DataCursor);
        float first = 0, last = 0;
        for (int step = 1; step <= 60; step++)
        {
            (var batch, cursor) = data.Take(4, cursor);
            model.ZeroGradients();
            last = model.ForwardBackward(batch);
            if (step == 1) first = last;
            optimizer.Apply();
        }
        Assert.True(last < 0.6f * first, $"loss went from {first} to {last}");
    }

    [Fact]
    public void ZeroSlicesTogetherMakeTheSameStepAsOneOptimizer()
    {
        var config = TestModels.SmallConfig(Architecture.Gpt2);   // biases and norms: the slices cut across decayed and undecayed tensors
        var options = new OptimizerOptions { LearningRate = 1e-2f, WarmupSteps = 1, TotalSteps = 5, WeightDecay = 0.1f, ClipNorm = 0.5f };
        using var whole = new TrainableModel(config, TestModels.RandomWeights(config, 21));
        using var sliced = new TrainableModel(config, TestModels.RandomWeights(config, 21));
        var optimizer = new Optimizer(whole, options);
        const int replicas = 3;
        var shards = Enumerable.Range(0, replicas).Select(r => new ShardedOptimizer(sliced.Parameters(), options, r, replicas, sliced.HostPool)).ToArray();
        Assert.Equal(shards[0].TotalLength, shards.Sum(z => z.Count));                                  // the slices cover everything once
        Assert.All(shards.Skip(1).Zip(shards), pair => Assert.Equal(pair.Second.Offset + pair.Second.Count, pair.First.Offset));

        for (int step = 1; step <= 3; step++)
        {
            float[] gradient = Reference.Random(shards[0].TotalLength, 40 + step);
            int offset = 0;
            foreach (var (_, _, g) in whole.Parameters()) { gradient.AsSpan(offset, g.Length).CopyTo(g); offset += g.Length; }
            double squares = whole.Parameters().Sum(p => (double)System.Numerics.Tensors.TensorPrimitives.SumOfSquares(p.Gradient));
            optimizer.Apply();

            float[] values = [.. sliced.Parameters().SelectMany(p => p.Parameter)];
            foreach (var shard in shards)
            {
                var slice = values.AsSpan(shard.Offset, shard.Count).ToArray();
                shard.Apply(slice, gradient.AsSpan(shard.Offset, shard.Count).ToArray(), (float)Math.Sqrt(squares));
                slice.CopyTo(values, shard.Offset);
            }
            offset = 0;
            foreach (var (_, p, _) in sliced.Parameters()) { values.AsSpan(offset, p.Length).CopyTo(p); offset += p.Length; }
        }
        foreach (var (a, b) in whole.Parameters().Zip(sliced.Parameters()))
            Assert.True(a.Parameter.AsSpan().SequenceEqual(b.Parameter), $"{a.Name} differs");
    }

    [Theory]
    [InlineData("tiny")]
    [InlineData("gpt2-tiny")]
    public void WeightDecayByShapeTakesTheMatricesAndLeavesNormsAndBiases(string preset)
    {
        var config = RandomModel.Preset(preset);
        using var model = new TrainableModel(config, RandomModel.Create(preset, seed: 1).Weights);
        foreach (var p in model.Parameters())
        {
            string last = p.Name[(p.Name.LastIndexOf('.') + 1)..];
            bool vector = p.Name.Contains("norm") || last is "bias" or "bq" or "bk" or "bv" or "bo" or "b1" or "b2";
            Assert.True(p.IsMatrix != vector, $"{p.Name} ({p.Rows} x {p.Columns}) IsMatrix {p.IsMatrix}");
        }
    }
}
