// Trainer grains on silos configured to run their training kernels on an ILGPU device (ShardOptions.TrainingDevice;
// ILGPU's CPU accelerator here): two data-parallel steps across two silos have the losses of the same run on the CPU.
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Grains;

public sealed class TrainerDeviceTests
{
    [Fact]
    public async Task TrainersOnAnIlgpuDeviceTrainAsOnTheCpu()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 2, shards: o => o.TrainingDevice = "ilgpu-cpu");
        var source = ModelSource.Random("gpt2-tiny", seed: 6);
        string[] keys = [.. cluster.Silos.Select((s, r) => ShardKey.Create("device-trainers", r, 0, 0, s.Name))];
        var trainers = keys.Select(k => cluster.Client.GetGrain<ITrainerGrain>(k)).ToArray();
        var options = new OptimizerOptions { LearningRate = 1e-3f, MinLearningRate = 1e-4f, WarmupSteps = 1, TotalSteps = 10 };
        await Task.WhenAll(trainers.Select((t, i) => t.Start(new TrainerAssignment(source, "dp=2", keys, i, Epoch: 1, options.LearningRate,
            options.MinLearningRate, options.WarmupSteps, options.TotalSteps, options.WeightDecay, options.ClipNorm))));

        var loaded = RandomModel.Create("gpt2-tiny", seed: 6);
        using var cpu = LocalTrainingRun.Create(loaded.Config, loaded.Weights, ParallelLayout.Parse("dp=2"), options);
        var data = new PackedDataset(Datasets.Additions(50, seed: 1).Select(p => Datasets.PromptCompletion(p.Prompt, p.Completion, loaded.Tokenizer!)), 16, seed: 2);
        var cursor = default(DataCursor);
        for (int step = 0; step < 2; step++)
        {
            (var batch, cursor) = data.Take(2, cursor);
            float expected = cpu.TrainStep(batch).LossShare;
            int targets = batch.Sum(s => s.CountedTargets);
            var reports = await Task.WhenAll(trainers.Select((t, r) => t.Step(new TrainingStepMessage(1,
                [[new TrainingSequenceMessage(batch[r].Tokens, batch[r].Targets, batch[r].Documents)]], targets))));
            Assert.Equal(expected, reports.Sum(x => x.LossShare), step == 0 ? 1e-4 : 1e-3);
        }
        await Task.WhenAll(trainers.Select(t => t.Stop()));
    }
}
