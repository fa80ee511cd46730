// One training step of a random model under data, tensor and pipeline parallelism (GPipe and 1F1B), ZeRO-1, -2 and -3, and their
// products, inside one process: the shards' gradients and updated weights, put back together by logical tensor, equal
// a single device's with the same global batch within 1e-5 (the loss too).
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class ParallelTrainingTests
{
    // Eps 1e-6 rather than 1e-8: GPT-2's key bias has an analytically zero gradient, so both runs hold rounding noise
    // there, and Adam's first step turns noise / |noise| into a full learning-rate step; a larger eps damps that.
    private static readonly OptimizerOptions Options = new()
    {
        LearningRate = 1e-3f, MinLearningRate = 1e-4f, WarmupSteps = 1, TotalSteps = 10, WeightDecay = 0.1f, ClipNorm = 1f, Eps = 1e-6f,
    };

    public static TheoryData<string, int, PipelineSchedule, int, Architecture> Layouts => new()
    {
        { "dp=2", 1, PipelineSchedule.OneFOneB, 0, Architecture.Llama },
        { "dp=2", 1, PipelineSchedule.OneFOneB, 1, Architecture.Llama },
        { "tp=2", 1, PipelineSchedule.OneFOneB, 0, Architecture.Llama },
        { "tp=2", 1, PipelineSchedule.OneFOneB, 0, Architecture.Gpt2 },
        { "pp=2", 3, PipelineSchedule.GPipe, 0, Architecture.Llama },
        { "pp=2", 3, PipelineSchedule.OneFOneB, 0, Architecture.Llama },
        { "pp=2", 2, PipelineSchedule.OneFOneB, 0, Architecture.Gpt2 },      // tied head on the last stage, embedding on the first
        { "tp=2,pp=2", 2, PipelineSchedule.OneFOneB, 0, Architecture.Gpt2 },
        { "tp=2,pp=2,dp=2", 2, PipelineSchedule.GPipe, 1, Architecture.Llama },
        { "pp=2,dp=2", 2, PipelineSchedule.OneFOneB, 1, Architecture.Gpt2 },
        { "dp=2", 1, PipelineSchedule.OneFOneB, 2, Architecture.Llama },     // ZeRO-2: layer gradients reduced during the backward
        { "pp=2,dp=2", 3, PipelineSchedule.OneFOneB, 2, Architecture.Gpt2 },
        { "tp=2,dp=2", 2, PipelineSchedule.GPipe, 2, Architecture.Llama },
        { "dp=2", 2, PipelineSchedule.OneFOneB, 3, Architecture.Llama },     // ZeRO-3: each replica keeps a slice of every layer
        { "pp=2,dp=2", 2, PipelineSchedule.GPipe, 3, Architecture.Gpt2 },
        { "tp=2,dp=2", 1, PipelineSchedule.OneFOneB, 3, Architecture.Llama },
    };

    /// <summary>
    /// Mixture-of-experts layers under expert, pipeline and data parallelism. Where the batch is split (micro-batches,
    /// replicas) dropless and without the balancing losses, which are taken per micro-batch as in Megatron, so a split
    /// batch's differ from the whole batch's by design; expert parallelism alone splits no batch, so there with drops
    /// and both router losses.
    /// </summary>
    public static TheoryData<string, int, PipelineSchedule, int, bool> MoeLayouts => new()
    {
        { "pp=2", 2, PipelineSchedule.OneFOneB, 0, false },
        { "dp=2", 1, PipelineSchedule.OneFOneB, 1, false },
        { "pp=2,dp=2", 2, PipelineSchedule.GPipe, 3, false },
        { "ep=2", 1, PipelineSchedule.OneFOneB, 0, true },
        { "ep=4", 1, PipelineSchedule.OneFOneB, 0, true },
        { "tp=2,ep=2", 1, PipelineSchedule.OneFOneB, 0, true },
        { "ep=2,pp=2", 2, PipelineSchedule.OneFOneB, 0, false },
        { "ep=2,dp=2", 1, PipelineSchedule.GPipe, 1, false },
        { "ep=2,dp=2", 2, PipelineSchedule.OneFOneB, 3, false },
    };

    [Theory]
    [MemberData(nameof(MoeLayouts))]
    public void OneMoeStepEqualsOneDevice(string layout, int microBatches, PipelineSchedule schedule, int zeroStage, bool routerLosses) =>
        AssertOneStepEqualsOneDevice(TestModels.SmallMoeConfig(routerLosses
            ? new MoeConfig(4, 2, CapacityFactor: 1f, AuxLossCoefficient: 0.05f, ZLossCoefficient: 0.01f)
            : new MoeConfig(4, 2, AuxLossCoefficient: 0)), layout, microBatches, schedule, zeroStage);

    /// <summary>A gated shared expert (Qwen2-MoE) cut by hidden units over the ranks: its gate's gradient summed over them.</summary>
    /// (Capacity drops and the balancing loss are taken per micro-batch, so layouts that split the batch run without them.)
    [Theory]
    [InlineData("ep=2", 1, 0, true)]
    [InlineData("tp=2,ep=2", 1, 1, true)]
    [InlineData("ep=2,pp=2", 2, 0, false)]
    [InlineData("ep=2,dp=2", 1, 3, false)]
    [InlineData("ep=2", 1, 0, true, false)]   // ungated (DeepSeek-MoE)
    public void OneSharedExpertStepEqualsOneDevice(string layout, int microBatches, int zeroStage, bool routerLosses, bool gated = true)
    {
        var config = TestModels.SmallSharedExpertConfig(routerLosses ? 1f : 0f, gated);
        AssertOneStepEqualsOneDevice(routerLosses ? config : config with { Moe = config.Moe! with { AuxLossCoefficient = 0 } },
            layout, microBatches, PipelineSchedule.OneFOneB, zeroStage);
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void OneStepEqualsOneDevice(string layout, int microBatches, PipelineSchedule schedule, int zeroStage, Architecture architecture) =>
        AssertOneStepEqualsOneDevice(TestModels.SmallConfig(architecture), layout, microBatches, schedule, zeroStage);

    private static void AssertOneStepEqualsOneDevice(ModelConfig config, string layout, int microBatches, PipelineSchedule schedule, int zeroStage)
    {
        var weights = TestModels.RandomWeights(config, seed: 11);
        var batch = Batch(config, sequences: 2 * 2 * microBatches, seed: 12);

        using var single = new TrainableModel(config, ShardWeights.Map(ShardWeights.Slice(config, weights, ShardSpec.Whole(config)), a => (float[])a.Clone()));
        var optimizer = new Optimizer(single, Options);
        single.ZeroGradients();
        float expectedLoss = single.ForwardBackward(batch);
        optimizer.Apply();
        var expectedGradients = WeightAssembly.Tensors(single.Parameters().Select(p => p with { Parameter = p.Gradient }));   // clipped in place, as the shards' are
        var expectedWeights = WeightAssembly.Tensors(single.Parameters());

        using var run = LocalTrainingRun.Create(config, weights, ParallelLayout.Parse(layout), Options, zeroStage);
        var result = run.TrainStep(batch, microBatches, schedule);

        Assert.Equal(expectedLoss, result.LossShare, 1e-5);
        // Every replica's shards hold the same weights; replica 0's gradients (summed over replicas) are the whole batch's.
        var whole = run.WholeParameters();
        foreach (var replica in run.Shards.Select((s, i) => (s.Model.Spec.Replica, Index: i)).GroupBy(s => s.Replica))
        {
            var parameters = replica.SelectMany(s => whole[s.Index]).ToArray();
            AssertTensorsEqual(expectedWeights, WeightAssembly.Tensors(parameters), $"{layout} replica {replica.Key} weights");
            if (zeroStage == 0)   // ZeRO keeps only its slice of the summed gradient
                AssertTensorsEqual(expectedGradients, WeightAssembly.Tensors(parameters.Select(p => p with { Parameter = p.Gradient })), $"{layout} gradients");
        }
    }

    [Fact]
    public void SchedulesOrderEveryMicroBatchOnceForwardBeforeBackward()
    {
        foreach (var schedule in new[] { PipelineSchedule.GPipe, PipelineSchedule.OneFOneB })
            for (int stages = 1; stages <= 4; stages++)
                for (int m = 1; m <= 6; m++)
                    for (int stage = 0; stage < stages; stage++)
                    {
                        var ops = ShardTrainer.Operations(schedule, stage, stages, m).ToArray();
                        Assert.Equal(Enumerable.Range(0, m), ops.Where(o => o.Forward).Select(o => o.MicroBatch));
                        Assert.Equal(Enumerable.Range(0, m).ToHashSet(), ops.Where(o => !o.Forward).Select(o => o.MicroBatch).ToHashSet());
                        for (int i = 0; i < ops.Length; i++)
                            if (!ops[i].Forward) Assert.Contains((true, ops[i].MicroBatch), ops[..i]);
                        if (schedule == PipelineSchedule.OneFOneB)   // 1F1B's bound on live activations
                        {
                            int live = 0, most = 0;
                            foreach (var (forward, _) in ops) most = Math.Max(most, live += forward ? 1 : -1);
                            Assert.True(most <= Math.Min(stages - stage, m), $"stage {stage}/{stages}, {m} micro-batches: {most} live");
                        }
                    }
    }

    private static TrainingSequence[] Batch(ModelConfig config, int sequences, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, sequences).Select(i =>
        {
            int n = 5 + rng.Next(9);
            int[] tokens = [.. Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize))];
            int[] targets = [.. Enumerable.Range(0, n).Select(t => t % 4 == 1 ? CrossEntropy.Ignore : rng.Next(config.VocabSize))];
            int[] documents = [.. Enumerable.Range(0, n).Select(t => t < n / 2 ? 0 : 1)];   // two packed documents
            return new TrainingSequence(tokens, targets, documents);
        })];
    }

    private static void AssertTensorsEqual(Dictionary<string, float[]> expected, Dictionary<string, float[]> actual, string what)
    {
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach (var (name, tensor) in expected)
        {
            double error = Reference.MaxRelativeError(actual[name], tensor);
            Assert.True(error <= 1e-5, $"{what}: {name} max error {error}");
        }
    }
}
