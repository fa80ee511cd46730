// Trainer grains across two silos train as the same layout does in one process: for tp=2, pp=2, dp=2 (plain, ZeRO-1,
// ZeRO-2 and ZeRO-3), tp=2×pp=2, pp=2×dp=2 with ZeRO-1 and tp=2×pp=2×dp=2 with ZeRO-2 (1F1B over 2 micro-batches),
// and an MoE model under ep=2 and ep=2×dp=2 with ZeRO-1, three steps of trainer grains pinned alternately to the two
// silos give the losses of LocalTrainingRun on the same weights and batches, within 1e-6.
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Tests.Grains;

public sealed class TrainerGrainTests
{
    [Theory]
    [InlineData("tp=2", 0)]
    [InlineData("pp=2", 0)]
    [InlineData("dp=2", 0)]
    [InlineData("dp=2", 1)]
    [InlineData("dp=2", 2)]
    [InlineData("dp=2", 3)]
    [InlineData("tp=2,pp=2", 0)]
    [InlineData("pp=2,dp=2", 1)]
    [InlineData("tp=2,pp=2,dp=2", 2)]
    [InlineData("ep=2", 0, true)]        // an MoE model with half its experts on each silo
    [InlineData("ep=2,dp=2", 1, true)]
    public async Task TrainerGrainsAcrossSilosTrainAsOneProcess(string layoutText, int zeroStage, bool moe = false)
    {
        var config = moe ? TestModels.SmallMoeConfig() : TestModels.SmallConfig(Architecture.Llama);
        var weights = TestModels.RandomWeights(config, 11);
        using var dir = new Formats.TempDirectory();
        string path = Path.Combine(dir.Path, "small.gguf");
        GgufWriter.Write(new LoadedModel(config, weights, null, "test"), path);
        var layout = ParallelLayout.Parse(layoutText);
        int tp = layout.StageRanks, pp = layout.PipelineStages, dp = layout.DataParallel, perReplica = pp * tp;
        const int microBatches = 2, sequences = 8;

        await using var cluster = await TestClusters.StartAsync(silos: 2);
        string id = "trainers-" + Guid.NewGuid().ToString("N")[..8];
        string[] keys = [.. Enumerable.Range(0, dp * perReplica).Select(i =>
            ShardKey.Create(id, i / perReplica, i % perReplica / tp, i % tp, cluster.Silos[i % 2].Name))];
        var trainers = keys.Select(k => cluster.Client.GetGrain<ITrainerGrain>(k)).ToArray();
        var options = new OptimizerOptions { LearningRate = 3e-3f, MinLearningRate = 3e-4f, WarmupSteps = 1, TotalSteps = 10 };
        await Task.WhenAll(trainers.Select((t, i) => t.Start(new TrainerAssignment(ModelSource.File(path), layoutText, keys, i, Epoch: 1,
            options.LearningRate, options.MinLearningRate, options.WarmupSteps, options.TotalSteps, options.WeightDecay, options.ClipNorm, zeroStage))));

        using var local = LocalTrainingRun.Create(config, ModelLoader.Load(path).Weights, layout, options, zeroStage);
        var rng = new Random(5);
        for (int step = 0; step < 3; step++)
        {
            TrainingSequence[] batch = [.. Enumerable.Range(0, sequences).Select(_ =>
            {
                int[] tokens = [.. Enumerable.Range(0, 17).Select(_ => rng.Next(config.VocabSize))];
                return new TrainingSequence(tokens[..^1], tokens[1..]);
            })];
            float expected = local.TrainStep(batch, microBatches).LossShare;

            // Each replica's contiguous share of the batch, cut into micro-batches, as the job grain sends it.
            var messages = Enumerable.Range(0, dp).Select(r =>
            {
                var share = Slice.Partition(batch.Length, dp, r);
                return new TrainingStepMessage(1, [.. Enumerable.Range(0, microBatches).Select(m =>
                {
                    var part = Slice.Partition(share.Count, microBatches, m);
                    return batch.Skip(share.Offset + part.Offset).Take(part.Count).Select(s => new TrainingSequenceMessage(s.Tokens, s.Targets, s.Documents)).ToArray();
                })], batch.Sum(s => s.CountedTargets));
            }).ToArray();
            var reports = await Task.WhenAll(trainers.Select((t, i) => t.Step(messages[i / perReplica])));
            float loss = reports.Where((_, i) => i % perReplica == (pp - 1) * tp).Sum(r => r.LossShare);   // last stage, rank 0, of each replica
            Assert.Equal(expected, loss, 1e-6);
        }
        // Each trainer reports its training state (parameters, gradients, AdamW's moments: what the same shard holds in the
        // in-process run) and a workspace to the inventory, on the device it took (reported after its step: a moment later).
        var inventory = cluster.Client.GetGrain<IClusterInventoryGrain>(0);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            var holders = (await inventory.ActiveSilos()).SelectMany(s => s.Devices).SelectMany(d => d.Holders).ToDictionary(h => h.Key);
            var reported = keys.Select(k => holders.GetValueOrDefault(k)).ToArray();
            if (reported.All(h => h is { WorkspaceBytes: > 0 }))
            {
                for (int i = 0; i < keys.Length; i++) Assert.Equal(local.Shards[i].StateBytes(), reported[i]!.WeightBytes);
                break;
            }
            Assert.True(DateTime.UtcNow < deadline, $"the inventory shows {string.Join("; ", holders.Values)}");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        await Task.WhenAll(trainers.Select(t => t.Stop()));
    }
}
