// Activation checkpointing and bf16 compute: recomputing each layer in the backward gives bitwise the same training
// steps as keeping every activation (one device, and tensor × pipeline-parallel, LoRA included); bf16 products round
// as bfloat16 does (nearest, ties to even) and give gradients within bf16's precision of fp32's, and still learn;
// the products, SwiGLU/GELU, RMSNorm and the MoE layer's grouped products on an ILGPU device (its CPU accelerator here;
// CUDA where there is one) give the CPU's gradients and steps.
using Cluster.Compute.Cpu;
using Cluster.Compute.Ilgpu;
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class TrainingModeTests
{
    private static readonly OptimizerOptions Options = new() { LearningRate = 1e-2f, WarmupSteps = 1, TotalSteps = 10 };

    private static TrainingSequence[] Batch(ModelConfig c, int seed) => [.. Enumerable.Range(0, 4).Select(i =>
    {
        var rng = new Random(seed + i);
        int[] tokens = [.. Enumerable.Range(0, 14).Select(_ => rng.Next(c.VocabSize))];
        return new TrainingSequence(tokens[..^1], tokens[1..], [.. Enumerable.Range(0, 13).Select(t => t < 6 ? 0 : 1)]);
    })];

    [Theory]
    [InlineData("tp=1", Architecture.Llama, false)]
    [InlineData("tp=1", Architecture.Gpt2, false)]
    [InlineData("tp=2,pp=2", Architecture.Llama, false)]
    [InlineData("pp=2", Architecture.Llama, true)]
    public void RecomputingActivationsGivesBitwiseTheSameSteps(string layout, Architecture architecture, bool lora)
    {
        var config = TestModels.SmallConfig(architecture);
        var weights = TestModels.RandomWeights(config, 5);
        var loraOptions = lora ? new LoraOptions { Rank = 4, Targets = ["wq", "wv", "w2"], Dropout = 0.2f } : null;
        using var kept = LocalTrainingRun.Create(config, weights, ParallelLayout.Parse(layout), Options, mode: new TrainingMode { Lora = loraOptions });
        using var recomputed = LocalTrainingRun.Create(config, weights, ParallelLayout.Parse(layout), Options,
            mode: new TrainingMode { Lora = loraOptions, ActivationCheckpointing = true });
        for (int step = 0; step < 2; step++)
            Assert.Equal(kept.TrainStep(Batch(config, step), 2).LossShare, recomputed.TrainStep(Batch(config, step), 2).LossShare);
        foreach (var (a, b) in kept.Shards.SelectMany(s => s.Model.Parameters()).Zip(recomputed.Shards.SelectMany(s => s.Model.Parameters())))
            Assert.True(a.Parameter.AsSpan().SequenceEqual(b.Parameter), $"{a.Name} differs");
    }

    [Theory]
    [InlineData(IlgpuTarget.Cpu)]
    [InlineData(IlgpuTarget.Cuda)]
    public void KernelsOnIlgpuGiveTheCpusGradientsAndSteps(IlgpuTarget target)
    {
        if (!IlgpuDevice.Available().Contains(target)) Assert.Skip($"no ILGPU {target} device on this machine: skipped");
        using var device = IlgpuDevice.Create(target);
        foreach (var config in new[] { TestModels.SmallConfig(Architecture.Llama), TestModels.SmallConfig(Architecture.Gpt2) with { Layers = 1 }, TestModels.SmallMoeConfig() with { Layers = 1 } })   // GPT-2 and MoE with one layer (the CPU accelerator is slow; Llama's two cover the gradient between layers)
        {
            string architecture = config.Moe is null ? config.Architecture.ToString() : "MoE";
            var batch = Batch(config, 2);
            using var cpu = new TrainableModel(config, TestModels.RandomWeights(config, 9));
            using var gpu = new TrainableModel(config, ShardWeights.Slice(config, TestModels.RandomWeights(config, 9), ShardSpec.Whole(config)),
                mode: new TrainingMode { Device = device });
            cpu.ZeroGradients();
            gpu.ZeroGradients();
            Assert.Equal(cpu.ForwardBackward(batch), gpu.ForwardBackward(batch), 1e-4);
            foreach (var (a, b) in cpu.Parameters().Zip(gpu.Parameters()))
                Assert.True(Reference.MaxRelativeError(b.Gradient, a.Gradient) <= 1e-4, $"{architecture} {a.Name}: max error {Reference.MaxRelativeError(b.Gradient, a.Gradient)}");
        }
        // And a whole sharded step: pp=2 with its kernels on the device has the CPU's loss and (clipped) gradients. (Not
        // weights: Adam's first step turns a gradient's last-bit difference into a whole learning-rate step where it is ~0.)
        var c = TestModels.SmallConfig(Architecture.Llama);
        var w = TestModels.RandomWeights(c, 10);
        using var onCpu = LocalTrainingRun.Create(c, w, ParallelLayout.Parse("pp=2"), Options);
        using var onDevice = LocalTrainingRun.Create(c, w, ParallelLayout.Parse("pp=2"), Options, mode: new TrainingMode { Device = device });
        Assert.Equal(onCpu.TrainStep(Batch(c, 4), 2).LossShare, onDevice.TrainStep(Batch(c, 4), 2).LossShare, 1e-4);
        var expected = WeightAssembly.Tensors(onCpu.WholeParameters().SelectMany(p => p).Select(p => p with { Parameter = p.Gradient }));
        foreach (var (name, tensor) in WeightAssembly.Tensors(onDevice.WholeParameters().SelectMany(p => p).Select(p => p with { Parameter = p.Gradient })))
            Assert.True(Reference.MaxRelativeError(tensor, expected[name]) <= 1e-4, $"{name}: max error {Reference.MaxRelativeError(tensor, expected[name])}");
    }

    /// <summary>
    /// A whole training step on an ILGPU device (forward, backward, gradient norm, clipping, AdamW) after the first:
    /// parameters, gradients and AdamW's moments stay on the device, so nothing goes in (the token ids travel as
    /// kernel indices) and out come one loss per token and one sum of squares per counted tensor. Reading the
    /// parameters then brings the device's newer ones down, and they equal the CPU device's step within 1e-4.
    /// </summary>
    [Fact]
    public void ATrainingStepOnIlgpuKeepsItsStateOnTheDeviceAndMovesOnlyTheLossAndNormOut()
    {
        using var device = IlgpuDevice.Create(IlgpuTarget.Cpu);
        // Eps 1: an update proportional to the gradient, so the devices' last-bit gradient differences stay last-bit in
        // the weights (with a small eps Adam's first step is ±lr wherever a gradient is ~0, whatever its bits).
        var options = Options with { Eps = 1f };
        foreach (var architecture in new[] { Architecture.Llama, Architecture.Gpt2 })
        {
            // One layer: the CPU accelerator runs each GPU thread as an OS thread, and the accounting is per step.
            var config = TestModels.SmallConfig(architecture) with { Layers = 1 };
            using var onDevice = LocalTrainingRun.Create(config, TestModels.RandomWeights(config, 9), ParallelLayout.Parse("tp=1"), options, mode: new TrainingMode { Device = device });
            using var onCpu = LocalTrainingRun.Create(config, TestModels.RandomWeights(config, 9), ParallelLayout.Parse("tp=1"), options);
            var batches = new[] { Batch(config, 2), Batch(config, 3) };
            var first = onDevice.TrainStep(batches[0], 2);   // uploads the parameters and moments once, and allocates its buffers
            var before = device.Transfers;
            var second = onDevice.TrainStep(batches[1], 2);
            var after = device.Transfers;

            int tokens = batches[1].Sum(s => s.Tokens.Length);
            int counted = onDevice.Shards[0].Model.Parameters().Count();   // one shard: every tensor counts once
            Assert.Equal(0, after.ToDevice - before.ToDevice);
            Assert.Equal(2 + 1, after.ToHost - before.ToHost);   // each micro-batch's losses, and the step's sums of squares
            Assert.Equal((tokens + (long)counted) * sizeof(float), after.ToHostBytes - before.ToHostBytes);

            Assert.Equal(onCpu.TrainStep(batches[0], 2).LossShare, first.LossShare, 1e-4);
            Assert.Equal(onCpu.TrainStep(batches[1], 2).LossShare, second.LossShare, 1e-4);
            var expected = WeightAssembly.Tensors(onCpu.WholeParameters().SelectMany(p => p));
            foreach (var (name, tensor) in WeightAssembly.Tensors(onDevice.WholeParameters().SelectMany(p => p)))
                Assert.True(Reference.MaxRelativeError(tensor, expected[name]) <= 1e-4, $"{architecture} {name}: max error {Reference.MaxRelativeError(tensor, expected[name])}");
        }
    }

    [Fact]
    public void BFloat16RoundsToNearestEven()
    {
        float[] values = [1f, 1f + 1f / 256, 1f + 3f / 256, 1f + 1f / 512, -2.5f, float.PositiveInfinity, float.NaN, 3.14159265f];
        Linear.RoundToBFloat16(values);
        Assert.Equal(1f, values[0]);
        Assert.Equal(1f, values[1]);              // halfway between 1 and 1+2^-7: ties to the even one
        Assert.Equal(1f + 4f / 256, values[2]);   // halfway, odd neighbour below: rounds up
        Assert.Equal(1f, values[3]);
        Assert.Equal(-2.5f, values[4]);
        Assert.Equal(float.PositiveInfinity, values[5]);
        Assert.True(float.IsNaN(values[6]));
        Assert.Equal(3.140625f, values[7]);
    }

    [Fact]
    public void BFloat16GradientsAreWithinItsPrecisionOfFloat32sAndItLearns()
    {
        var config = TestModels.SmallConfig(Architecture.Llama);
        var weights = TestModels.RandomWeights(config, 6);
        using var fp32 = new TrainableModel(config, weights);
        using var bf16 = new TrainableModel(config, ShardWeights.Slice(config, weights, ShardSpec.Whole(config)), mode: new TrainingMode { Precision = Precision.BFloat16 });
        var batch = Batch(config, 1);
        fp32.ZeroGradients();
        bf16.ZeroGradients();
        float lossFp32 = fp32.ForwardBackward(batch), lossBf16 = bf16.ForwardBackward(batch);
        Assert.Equal(lossFp32, lossBf16, 2e-2 * lossFp32);
        Assert.NotEqual(lossFp32, lossBf16);   // the rounding is real
        foreach (var (a, b) in fp32.Parameters().Zip(bf16.Parameters()))
        {
            double scale = a.Gradient.Max(Math.Abs) + 1e-12, worst = a.Gradient.Zip(b.Gradient, (x, y) => Math.Abs(x - y)).Max();
            Assert.True(worst <= 5e-2 * scale, $"{a.Name}: worst difference {worst:E2} of a largest gradient {scale:E2}");
        }

        using var run = LocalTrainingRun.Create(config, TestModels.RandomWeights(config, 7), ParallelLayout.Single, Options with { TotalSteps = 40 },
            mode: new TrainingMode { Precision = Precision.BFloat16 });
        var fixedBatch = Batch(config, 3);
        float first = run.TrainStep(fixedBatch).LossShare, last = first;
        for (int step = 1; step < 40; step++) last = run.TrainStep(fixedBatch).LossShare;
        Assert.True(last < 0.5f * first, $"bf16 loss on a fixed batch went from {first} to {last}");
    }
}
