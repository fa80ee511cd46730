// LoRA: a fresh adapter leaves the model exactly as it was; the adapters' gradients agree with finite differences of
// the loss (base frozen, dropout included); a LoRA run sharded pp=2 × dp=2 equals one device; a LoRA fine-tune of the
// real stories260K lowers its loss on a small generated text set, and the saved PEFT adapter, merged into the base by
// the serving path's loader, gives the fine-tuned model's logits. QLoRA: NF4 rounds to its nearest level per block; a
// QLoRA model computes exactly what the fp32 model with NF4-rounded projections does while holding them in ~1/7 of
// the bytes, and its fine-tune of stories260K lowers the loss too.
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class LoraTests
{
    private static readonly ModelConfig Config = TestModels.SmallConfig(Architecture.Llama);
    private static readonly LoraOptions Lora = new() { Rank = 4, Alpha = 8, Targets = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] };

    private static TrainableModel Model(ModelWeights weights, LoraOptions lora) =>
        new(Config, ShardWeights.Slice(Config, weights, ShardSpec.Whole(Config)), mode: new TrainingMode { Lora = lora });

    [Fact]
    public void AFreshAdapterChangesNothing()
    {
        var weights = TestModels.RandomWeights(Config, 1);
        int[] tokens = [3, 14, 15, 92, 65, 35, 89, 79];
        using var plain = new TrainableModel(Config, weights);
        using var adapted = Model(weights, Lora);
        Assert.Equal(plain.Logits(tokens), adapted.Logits(tokens));   // B starts at zero
        Assert.All(adapted.Parameters(), p => Assert.Contains(".lora_", p.Name));
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(0.3f)]
    public void AdapterGradientsAgreeWithFiniteDifferences(float dropout)
    {
        var weights = TestModels.RandomWeights(Config, 2);
        var lora = Lora with { Dropout = dropout };
        using var model = Model(weights, lora);
        var rng = new Random(3);
        foreach (var p in model.Parameters().Where(p => p.Name.EndsWith("lora_b")))   // B away from zero, so A's gradient is not zero too
            for (int i = 0; i < p.Parameter.Length; i++) p.Parameter[i] = (rng.NextSingle() * 2 - 1) * 0.3f;
        TrainingSequence[] batch = [new([.. Enumerable.Range(0, 9).Select(_ => rng.Next(Config.VocabSize))], [.. Enumerable.Range(0, 9).Select(_ => rng.Next(Config.VocabSize))])];
        double Loss()
        {
            model.ZeroGradients();   // also forgets the packed copies of the adapters, which the probes change in place
            return model.Backward(model.Forward(batch, dropoutSeed: 5), null, 1f).Loss;
        }
        Loss();
        Reference.AssertGradientsMatchFiniteDifferences([.. model.Parameters().Select(p => (p.Name, p.Parameter, (float[])p.Gradient.Clone()))], Loss);
    }

    /// <summary>
    /// LoRA on a mixture of experts adapts its attention: the adapters' gradients through the routed layers agree with
    /// finite differences, and adapting the experts' projections (or QLoRA's 4-bit base) is refused with a reason.
    /// </summary>
    [Fact]
    public void AnMoeModelsAttentionAdaptersAgreeWithFiniteDifferences()
    {
        var config = TestModels.SmallMoeConfig(new MoeConfig(4, 2, AuxLossCoefficient: 0));
        var lora = new LoraOptions { Rank = 4, Alpha = 8, Targets = ["wq", "wk", "wv", "wo"] };
        using var model = new TrainableModel(config, ShardWeights.Slice(config, TestModels.RandomWeights(config, 2), ShardSpec.Whole(config)),
            mode: new TrainingMode { Lora = lora });
        var rng = new Random(3);
        foreach (var p in model.Parameters().Where(p => p.Name.EndsWith("lora_b")))
            for (int i = 0; i < p.Parameter.Length; i++) p.Parameter[i] = (rng.NextSingle() * 2 - 1) * 0.3f;
        TrainingSequence[] batch = [new([.. Enumerable.Range(0, 9).Select(_ => rng.Next(config.VocabSize))], [.. Enumerable.Range(0, 9).Select(_ => rng.Next(config.VocabSize))])];
        double Loss()
        {
            model.ZeroGradients();
            return model.Backward(model.Forward(batch), null, 1f).Loss;
        }
        Loss();
        Reference.AssertGradientsMatchFiniteDifferences([.. model.Parameters().Select(p => (p.Name, p.Parameter, (float[])p.Gradient.Clone()))], Loss);

        Assert.Contains("attention", Assert.Throws<ArgumentException>(() => (lora with { Targets = ["wq", "w2"] }).Validate(config)).Message);
        Assert.Contains("QLoRA", Assert.Throws<ArgumentException>(() => (lora with { QuantizeBase = true }).Validate(config)).Message);
    }

    [Fact]
    public void ALoraRunShardedEqualsOneDevice()
    {
        var weights = TestModels.RandomWeights(Config, 4);
        var options = new OptimizerOptions { LearningRate = 1e-2f, WarmupSteps = 1, TotalSteps = 5, Eps = 1e-6f };
        var lora = Lora;   // no dropout: its masks follow (step, micro-batch) and so differ between layouts
        var batch = Enumerable.Range(0, 8).Select(i => new TrainingSequence([.. Enumerable.Range(0, 12).Select(t => (i * 13 + t * 7) % Config.VocabSize)],
            [.. Enumerable.Range(0, 12).Select(t => (i * 5 + t * 3) % Config.VocabSize)])).ToArray();
        using var single = LocalTrainingRun.Create(Config, weights, ParallelLayout.Single, options, mode: new TrainingMode { Lora = lora });
        using var sharded = LocalTrainingRun.Create(Config, weights, ParallelLayout.Parse("pp=2,dp=2"), options, zeroStage: 1, mode: new TrainingMode { Lora = lora });
        for (int step = 0; step < 3; step++)
        {
            float expected = single.TrainStep(batch, 1).LossShare;
            Assert.Equal(expected, sharded.TrainStep(batch, 1).LossShare, 1e-5);
        }
        var a = single.Adapters().SelectMany(x => x.A.Concat(x.B)).ToArray();
        var b = sharded.Adapters().SelectMany(x => x.A.Concat(x.B)).ToArray();
        Assert.True(Reference.MaxRelativeError(b, a) <= 1e-5, $"max error {Reference.MaxRelativeError(b, a)}");
    }

    [Fact]
    public void Nf4KeepsEachValueAtItsNearestLevel()
    {
        float[] values = Reference.Random(1000, 9);
        values[5] = 0;
        var tensor = Nf4Tensor.Quantize(values);
        float[] back = tensor.Dequantize();
        Assert.Equal(500 + 16 * 4, tensor.Bytes);   // two indices a byte, one fp32 scale per 64
        for (int i = 0; i < values.Length; i++)
        {
            int block = i / Nf4Tensor.BlockSize;
            float scale = values.Skip(block * Nf4Tensor.BlockSize).Take(Nf4Tensor.BlockSize).Max(Math.Abs);
            float nearest = Nf4Tensor.Levels.Select(level => level * scale).MinBy(v => Math.Abs(v - values[i]));
            Assert.Equal(nearest, back[i], 1e-6);
        }
        Assert.Equal(0f, back[5]);
        Assert.Equal(back, Nf4Tensor.Quantize(back).Dequantize());   // levels times the scale are kept exactly
    }

    [Fact]
    public void QloraComputesWithTheNf4BaseAndHoldsItInFourBits()
    {
        var weights = TestModels.RandomWeights(Config, 8);
        int[] tokens = [3, 14, 15, 92, 65, 35, 89, 79];
        using var qlora = Model(weights, Lora with { QuantizeBase = true });
        var rounded = TestModels.RandomWeights(Config, 8);
        foreach (var layer in rounded.Layers)
            foreach (var w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3! })
                Nf4Tensor.Quantize(w).Dequantize().CopyTo(w, 0);
        using var plain = new TrainableModel(Config, rounded);
        using var full = new TrainableModel(Config, TestModels.RandomWeights(Config, 8));
        float[] expected = plain.Logits(tokens);
        Assert.True(Reference.MaxRelativeError(qlora.Logits(tokens), expected) <= 1e-6);
        Assert.NotEqual(full.Logits(tokens), expected);                                   // the rounding is real
        Assert.True(qlora.ProjectionBytes() * 7 <= full.ProjectionBytes(), $"{qlora.ProjectionBytes()} vs {full.ProjectionBytes()} bytes");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]   // QLoRA
    public void FineTuningStories260KLowersItsLossAndTheSavedAdapterServes(bool quantized)
    {
        var model = ModelLoader.Load(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));
        var tokenizer = model.Tokenizer!;
        string[] names = ["Mia", "Leo", "Ava", "Max", "Zoe", "Sam"];
        string[] pets = ["cat", "dog", "bird", "fish"];
        var rng = new Random(7);
        string[] texts = [.. Enumerable.Range(0, 48).Select(_ =>
        {
            string name = names[rng.Next(names.Length)], pet = pets[rng.Next(pets.Length)];
            return $"{name} had a {pet}. Every day {name} fed the {pet} and the {pet} was happy.";
        })];
        var data = new PackedDataset(Datasets.Text(texts, tokenizer), 64, seed: 1);
        var lora = new LoraOptions { Rank = 4, Alpha = 8, Targets = ["wq", "wv", "w2"], QuantizeBase = quantized };
        using var run = LocalTrainingRun.Create(model.Config, model.Weights, ParallelLayout.Single,
            new OptimizerOptions { LearningRate = 1e-2f, MinLearningRate = 1e-3f, WarmupSteps = 2, TotalSteps = 40, WeightDecay = 0 }, mode: new TrainingMode { Lora = lora });
        var (evaluation, _) = data.Take(8, default);
        float Evaluate()
        {
            var shard = run.Shards[0].Model;
            shard.ZeroGradients();
            return shard.Backward(shard.Forward(evaluation), null, 1f).Loss;
        }
        float before = Evaluate();
        var cursor = default(DataCursor);
        for (int step = 0; step < 40; step++)
        {
            (var batch, cursor) = data.Take(8, cursor);
            run.TrainStep(batch);
        }
        float after = Evaluate();
        Assert.True(after < 0.8f * before, $"loss on the set went from {before} to {after}");

        if (quantized) return;   // served on the fp32 base, a QLoRA adapter meets other weights than it was trained on
        using var dir = new Formats.TempDirectory();
        PeftAdapter.Save(dir.Path, model.Config, lora.Peft, run.Adapters(), "stories260K");
        var merged = ModelLoader.Load(SharedModels.Require("stories260K.bin"), SharedModels.Require("tok512.bin"));
        PeftAdapter.Merge(merged.Weights, merged.Config, dir.Path);
        int[] tokens = tokenizer.Encode(texts[0], addBos: true);
        using var device = new CpuDevice(1);
        using var inference = new TransformerModel(device, merged.Config, merged.Weights);
        using var cache = inference.CreateCache(1, tokens.Length, 4);
        float[] served = inference.Forward([new SequenceChunk(cache.CreateSequence(), tokens, AllLogits: true)], cache);
        float[] trained = run.Shards[0].Model.Logits(tokens);
        Assert.True(Reference.MaxRelativeError(served, trained) <= 1e-4, $"max error {Reference.MaxRelativeError(served, trained)}");
    }
}
