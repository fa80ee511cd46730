// Trainer grains on silos configured to run their training kernels on an ILGPU device (ShardOptions.Devices;
// ILGPU's CPU accelerator here, which runs every GPU thread as an OS thread, hence a very small model): two
// data-parallel steps across two silos have the losses of the same run on the CPU.
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Grains;

public sealed class TrainerDeviceTests
{
    [Fact]
    public async Task TrainersOnAnIlgpuDeviceTrainAsOnTheCpu()
    {
        var config = TestModels.SmallConfig(Architecture.Llama) with { Layers = 1 };
        var weights = TestModels.RandomWeights(config, 6);
        using var dir = new Formats.TempDirectory();
        string path = Path.Combine(dir.Path, "small.gguf");
        GgufWriter.Write(new LoadedModel(config, weights, null, "test"), path);

        // A step on ILGPU's CPU accelerator (an OS thread per GPU thread) can outlast Orleans' 30 s response timeout on two
        // cores that other tests keep busy: the test is about the losses, so the calls may take longer.
        await using var cluster = await TestClusters.StartAsync(silos: 2, shards: o => o.Devices = [DeviceSpec.Parse("ilgpu-cpu")],
            responseTimeout: TimeSpan.FromMinutes(5));
        string[] keys = [.. cluster.Silos.Select((s, r) => ShardKey.Create("device-trainers", r, 0, 0, s.Name))];
        var trainers = keys.Select(k => cluster.Client.GetGrain<ITrainerGrain>(k)).ToArray();
        var options = new OptimizerOptions { LearningRate = 1e-3f, MinLearningRate = 1e-4f, WarmupSteps = 1, TotalSteps = 10 };
        await Task.WhenAll(trainers.Select((t, i) => t.Start(new TrainerAssignment(ModelSource.File(path), "dp=2", keys, i, Epoch: 1, options.LearningRate,
            options.MinLearningRate, options.WarmupSteps, options.TotalSteps, options.WeightDecay, options.ClipNorm))));

        using var cpu = LocalTrainingRun.Create(config, ModelLoader.Load(path).Weights, ParallelLayout.Parse("dp=2"), options);
        var rng = new Random(7);
        for (int step = 0; step < 2; step++)
        {
            TrainingSequence[] batch = [.. Enumerable.Range(0, 2).Select(_ =>
            {
                int[] tokens = [.. Enumerable.Range(0, 9).Select(_ => rng.Next(config.VocabSize))];
                return new TrainingSequence(tokens[..^1], [.. tokens[1..].Select((t, i) => i % 3 == 0 ? CrossEntropy.Ignore : t)]);
            })];
            float expected = cpu.TrainStep(batch).LossShare;
            int targets = batch.Sum(s => s.CountedTargets);
            var reports = await Task.WhenAll(trainers.Select((t, r) => t.Step(new TrainingStepMessage(1,
                [[new TrainingSequenceMessage(batch[r].Tokens, batch[r].Targets, batch[r].Documents)]], targets))));
            Assert.Equal(expected, reports.Sum(x => x.LossShare), step == 0 ? 1e-4 : 1e-3);
        }
        await Task.WhenAll(trainers.Select(t => t.Stop()));
    }
}
