// Mixture-of-experts layers: the host routing (top-k, renormalized weights, capacity drops, the balancing losses) and
// its gradient against finite differences; a whole MoE model's gradients (experts, router, through dropped tokens)
// against finite differences of its loss plus its router losses; serving's forward equals training's; it learns; and
// recomputing its activations gives bitwise the same step, reporting each step's expert loads and router losses. The same
// for a Qwen2-MoE layer: a shared expert gated by σ(x·g) beside the routed ones.
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class "*MixtureOfExpertsTests"
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class MixtureOfExpertsTests
{
    [Fact]
    public void RoutingTakesTheTopKRenormalizesAndDropsOverCapacity()
    {
        float[] logits =
        [
            1, 3, 2, 0,    // token 0: experts 1 then 2
            0, 0, 0, 0,    // token 1: a tie, taken by the lower ids 0 and 1
            5, -1, 5, 0,   // token 2: 0 then 2
        ];
        var routing = MoeRouting.Route(logits, 3, new MoeConfig(4, 2));
        Assert.Equal([1, 2, 0, 1, 0, 2], routing.Choices);
        float e = MathF.E;
        Assert.Equal(e / (e + 1), routing.Weights[0], 5);
        Assert.Equal(1 / (e + 1), routing.Weights[1], 5);
        Assert.Equal([0.5f, 0.5f, 0.5f, 0.5f], routing.Weights[2..]);
        Assert.Equal([2, 2, 2, 0], routing.Load);
        Assert.All(routing.Kept, Assert.True);
        Assert.Equal([1, 2], routing.ExpertTokens[0]);
        Assert.Empty(routing.ExpertTokens[3]);

        var plain = MoeRouting.Route(logits, 3, new MoeConfig(4, 2, NormalizeTopK: false));
        Assert.Equal(plain.Probabilities[1], plain.Weights[0]);     // w = the full softmax's probability
        Assert.Equal(0.25f, plain.Weights[2], 6);

        // Capacity ⌈0.5·3·2/4⌉ = 1 token per expert; first choices go first: token 2's expert 0 is full (token 1 took
        // it), then every second choice finds its expert full but token 0's expert 2.
        var capped = MoeRouting.Route(logits, 3, new MoeConfig(4, 2, CapacityFactor: 0.5f));
        Assert.Equal([true, true, true, false, false, false], capped.Kept);
        Assert.Equal(3, capped.Dropped);
        Assert.Equal([1], capped.ExpertTokens[0]);
        Assert.Equal([0], capped.ExpertTokens[2]);
        Assert.Equal([2, 2, 2, 0], capped.Load);                   // the balancing loss counts the choices, kept or not

        // Switch's balancing loss α·E·Σ f·P, and the z-loss β·mean(lse²).
        var lossy = MoeRouting.Route(logits, 3, new MoeConfig(4, 2, AuxLossCoefficient: 0.1f, ZLossCoefficient: 0.01f));
        double aux = 0, z = 0;
        for (int x = 0; x < 4; x++) aux += lossy.Load[x] / 6.0 * Enumerable.Range(0, 3).Average(t => lossy.Probabilities[t * 4 + x]);
        for (int t = 0; t < 3; t++) z += Math.Pow(Math.Log(Enumerable.Range(0, 4).Sum(x => Math.Exp(logits[t * 4 + x]))), 2) / 3;
        Assert.Equal(0.1 * 4 * aux, lossy.AuxLoss, 6);
        Assert.Equal(0.01 * z, lossy.ZLoss, 5);
    }

    [Theory]
    [InlineData(true, 0f)]
    [InlineData(false, 0f)]
    [InlineData(true, 0.7f)]
    public void TheRouterGradientMatchesFiniteDifferences(bool normalize, float capacity)
    {
        const int T = 6, E = 5, k = 2;
        var moe = new MoeConfig(E, k, normalize, capacity, AuxLossCoefficient: 0.2f, ZLossCoefficient: 0.05f);
        var rng = new Random(3);
        // Logits a whole unit apart within each token, so a small step never changes a choice.
        float[] logits = [.. Enumerable.Range(0, T).SelectMany(_ => Enumerable.Range(0, E).OrderBy(_ => rng.Next()).Select(r => r * 1f + rng.NextSingle() * 0.1f))];
        float[] upstream = [.. Enumerable.Range(0, T * k).Select(_ => rng.NextSingle() * 2 - 1)];   // ∂L/∂weight of each choice
        const float lossScale = 0.75f;
        var routing = MoeRouting.Route(logits, T, moe);
        if (capacity > 0) Assert.True(routing.Dropped > 0, "the capacity should drop some choices");
        float[] gradient = routing.RouterGradient([.. upstream.Select((g, c) => routing.Kept[c] ? g : 0)], lossScale);

        double Objective(float[] l)
        {
            var r = MoeRouting.Route(l, T, moe);
            double value = 0;
            for (int c = 0; c < T * k; c++) if (r.Kept[c]) value += upstream[c] * r.Weights[c];
            return value + lossScale * (r.AuxLoss + r.ZLoss);
        }
        for (int i = 0; i < logits.Length; i++)
        {
            float keep = logits[i];
            const float h = 1e-2f;
            logits[i] = keep + h; double up = Objective(logits);
            logits[i] = keep - h; double down = Objective(logits);
            logits[i] = keep;
            double numeric = (up - down) / (2 * h);
            Assert.True(Math.Abs(gradient[i] - numeric) <= 2e-3 + 1e-2 * Math.Abs(numeric), $"logit {i}: analytic {gradient[i]:E3}, numeric {numeric:E3}");
        }
    }

    [Theory]
    [InlineData(true, 0f, false)]
    [InlineData(false, 0f, false)]
    [InlineData(true, 1f, false)]
    [InlineData(false, 0f, true)]    // Qwen2-MoE: a gated shared expert beside the routed ones, and query/key/value biases
    [InlineData(false, 1f, true)]
    [InlineData(false, 0f, true, false)]   // DeepSeek-MoE's shared expert: ungated
    public void GradientsAgreeWithFiniteDifferencesOfTheLossAndRouterLosses(bool normalize, float capacity, bool qwen, bool gated = true)
    {
        var config = qwen ? TestModels.SmallSharedExpertConfig(capacity, gated)
            : TestModels.SmallMoeConfig(new MoeConfig(4, 2, normalize, capacity, AuxLossCoefficient: 0.1f, ZLossCoefficient: 0.01f));
        // (The ±1e-2 probes must flip no token's experts, top-k being discontinuous: the Qwen case's seed is one whose probes do not.)
        var weights = qwen ? TestModels.WithAttentionBiases(config, TestModels.RandomWeights(config, 6), 5) : TestModels.RandomWeights(config, 4);
        using var model = new TrainableModel(config, weights);
        var batch = TestModels.FiniteDifferenceBatch(config, seed: 5);
        model.ZeroGradients();
        model.ForwardBackward(batch);
        Assert.True(model.ExpertStats!.RouterLoss > 0);

        Reference.AssertGradientsMatchFiniteDifferences([.. model.Parameters().Select(p => (p.Name, p.Parameter, p.Gradient))], Loss);

        double Loss()
        {
            using var probe = new TrainableModel(config, weights);   // shares the parameters; its own gradients are thrown away
            double loss = probe.ForwardBackward(batch);
            return loss + probe.ExpertStats!.RouterLoss;   // one micro-batch of share 1: the router losses as they are
        }
    }

    [Theory]
    [InlineData("moe-tiny")]
    [InlineData("qwen-moe-tiny")]   // a gated shared expert beside the routed ones
    public void ServingLogitsEqualTrainingsWithMostExpertsUsed(string preset)
    {
        var model = RandomModel.Create(preset, 2);
        int[] tokens = [.. Enumerable.Range(0, 40).Select(i => (i * 37 + 3) % model.Config.VocabSize)];
        using var device = new CpuDevice(1);
        using var serving = new TransformerModel(device, model.Config, model.Weights);
        using var cache = serving.CreateCache(1, tokens.Length, 4);
        float[] expected = serving.Forward([new SequenceChunk(cache.CreateSequence(), tokens, AllLogits: true)], cache);

        using var trainable = new TrainableModel(model.Config, model.Weights);
        float[] actual = trainable.Logits(tokens);
        Assert.True(Reference.MaxRelativeError(actual, expected) <= 1e-5, $"max error {Reference.MaxRelativeError(actual, expected)}");

        var activations = trainable.Forward([new TrainingSequence(tokens, new int[tokens.Length])]);
        Assert.All(activations.Routings, routing => Assert.True(routing!.ExpertTokens.Count(rows => rows.Length > 0) > 4, "most experts take tokens"));
        activations.Dispose();
    }

    [Fact]
    public void AdamWStepsFitASmallSetAndRecomputingGivesTheSameSteps()
    {
        var config = TestModels.SmallMoeConfig(new MoeConfig(4, 2, CapacityFactor: 1.25f, AuxLossCoefficient: 0.01f));
        var weights = TestModels.RandomWeights(config, 6);
        var rng = new Random(7);
        TrainingSequence[] data = [.. Enumerable.Range(0, 4).Select(_ =>
        {
            int[] text = [.. Enumerable.Range(0, 12).Select(_ => rng.Next(config.VocabSize))];
            return new TrainingSequence(text[..^1], text[1..]);
        })];
        var options = new OptimizerOptions { LearningRate = 1e-2f, WarmupSteps = 1, TotalSteps = 40, WeightDecay = 0 };
        using var kept = LocalTrainingRun.Create(config, weights, ParallelLayout.Single, options);
        using var recomputed = LocalTrainingRun.Create(config, weights, ParallelLayout.Single, options, mode: new TrainingMode { ActivationCheckpointing = true });
        float first = 0, last = 0;
        for (int step = 1; step <= 40; step++)
        {
            var result = kept.TrainStep(data, 1);
            last = result.LossShare;
            Assert.Equal(last, recomputed.TrainStep(data, 1).LossShare);
            if (step == 1) first = last;
            // Every token chose 2 experts in each of the 2 layers; the router losses are reported with the step.
            var experts = result.Experts!;
            Assert.Equal(data.Sum(d => d.Tokens.Length) * 2 * config.Layers, experts.Load.Sum());
            Assert.True(experts.RouterLoss > 0 && experts.Imbalance >= 1, $"router loss {experts.RouterLoss}, imbalance {experts.Imbalance}");
        }
        Assert.True(last < 0.3f * first, $"loss went from {first} to {last}");
        foreach (var (a, b) in kept.Shards.SelectMany(s => s.Model.Parameters()).Zip(recomputed.Shards.SelectMany(s => s.Model.Parameters())))
            Assert.True(a.Parameter.AsSpan().SequenceEqual(b.Parameter), $"{a.Name} differs");
    }

    /// <summary>
    /// Aux-loss-free balancing: a router that starts skewed (a bias puts expert 0 first for every token) evens out as the
    /// bias moves against each step's loads, with no balancing loss at all; under dp=2 the replicas' loads are summed, so
    /// both replicas move their biases alike, and ZeRO-3 (the bias in its partitioned master copy) moves them as ZeRO-0 does.
    /// </summary>
    [Fact]
    public void TheAuxLossFreeBiasEvensOutASkewedRouter()
    {
        var config = TestModels.SmallMoeConfig(new MoeConfig(4, 2, AuxLossCoefficient: 0, BiasUpdateRate: 0.02f));
        var weights = TestModels.RandomWeights(config, 8);
        foreach (var layer in weights.Layers)
        {
            for (int i = 0; i < layer.Router!.Length; i++) layer.Router[i] *= 0.05f;   // small logits: the bias decides
            layer.RouterBias![0] = 1f;
        }
        var rng = new Random(9);
        TrainingSequence[] data = [.. Enumerable.Range(0, 4).Select(_ =>
        {
            int[] text = [.. Enumerable.Range(0, 13).Select(_ => rng.Next(config.VocabSize))];
            return new TrainingSequence(text[..^1], text[1..]);
        })];
        var options = new OptimizerOptions { LearningRate = 1e-5f, WarmupSteps = 1, TotalSteps = 60 };
        var finalBiases = new Dictionary<int, string[]>();   // by ZeRO stage, under dp=2
        foreach (var (layout, zeroStage) in new[] { ("tp=1", 0), ("dp=2", 0), ("dp=2", 3) })
        {
            using var run = LocalTrainingRun.Create(config, weights, ParallelLayout.Parse(layout), options, zeroStage);
            double[] imbalance = [.. Enumerable.Range(0, 60).Select(_ => run.TrainStep(data, 1).Experts!.Imbalance)];
            Assert.True(imbalance[0] >= 1.9, $"{layout}: the first step's busiest expert should take half the choices: {imbalance[0]:F2}");
            Assert.True(imbalance[^10..].Average() < 1.4, $"{layout}: still skewed after 60 steps: {string.Join(" ", imbalance.Select(i => i.ToString("F2")))}");
            var biases = run.WholeParameters().SelectMany(p => p).Where(p => p.Name.EndsWith("router_bias")).ToArray();
            Assert.All(biases, b => Assert.True(b.Parameter[0] < 1f, $"{b.Name}: expert 0's bias did not fall"));
            if (layout == "dp=2")
            {
                foreach (var pair in biases.GroupBy(b => b.Name))
                    Assert.Single(pair.Select(b => string.Join(",", b.Parameter)).Distinct());   // both replicas moved alike
                finalBiases[zeroStage] = [.. biases.Select(b => string.Join(",", b.Parameter))];
            }
        }
        Assert.Equal(finalBiases[0], finalBiases[3]);   // ZeRO-3 moves the biases in its partitioned master copy alike
    }
}
