// Data-parallel training on trainer grains across the 2-silo cluster: two replicas, each taking half of every global
// batch, summing their gradients with the ring all-reduce, end every step with the same weights as one trainer that
// took the whole batch (within 1e-5), with or without ZeRO-1, and the replicas hold exactly the same bits. (The sums run in another order, and
// Adam's first steps divide each gradient by its own size, so the learning rate bounds the difference: 1e-3 here.)
using System.Runtime.InteropServices;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Training;

namespace Cluster.Tests.Grains;

[Collection(nameof(ClusterCollection))]
public sealed class DataParallelTrainingTests(ClusterFixture fixture)
{
    [Theory]
    [InlineData(0)]
    [InlineData(1)]   // ZeRO-1: each replica keeps and updates only its slice of the optimizer state
    public async Task TwoReplicasTrainLikeOneWithTheWholeBatch(int zeroStage)
    {
        var source = ModelSource.Random("tiny", seed: 4);
        string[] silos = [.. fixture.Cluster.Silos.Select(s => s.Name)];
        string[] group = [$"dp-zero{zeroStage}/0@{silos[0]}", $"dp-zero{zeroStage}/1@{silos[1]}"];
        var trainers = group.Select(k => fixture.Cluster.Client.GetGrain<ITrainerGrain>(k)).ToArray();
        TrainerAssignment Assignment(int rank) => new(source, group, rank, Epoch: 1, LearningRate: 1e-3f, MinLearningRate: 1e-4f,
            WarmupSteps: 1, TotalSteps: 10, WeightDecay: 0.1f, ClipNorm: 1f, ZeroStage: zeroStage);
        await Task.WhenAll(trainers.Select((t, rank) => t.Start(Assignment(rank))));

        var loaded = RandomModel.Create("tiny", seed: 4);
        using var single = new TrainableModel(loaded.Config, loaded.Weights);
        var optimizer = new Optimizer(single, new OptimizerOptions
        {
            LearningRate = 1e-3f, MinLearningRate = 1e-4f, WarmupSteps = 1, TotalSteps = 10, WeightDecay = 0.1f, ClipNorm = 1f,
        });
        var data = new PackedDataset(ArithmeticData.Additions(300, seed: 2).Select(t => loaded.Tokenizer!.Encode(t, addBos: true)), 24, seed: 3);
        var cursor = default(DataCursor);
        for (int step = 0; step < 3; step++)
        {
            (var batch, cursor) = data.Take(5, cursor);   // odd: the replicas take 3 and 2 sequences
            int targets = batch.Sum(s => s.Targets.Count(t => t != Cluster.Compute.Cpu.CrossEntropy.Ignore));
            single.ZeroGradients();
            float expectedLoss = single.ForwardBackward(batch);
            optimizer.Apply();

            TrainingSequenceMessage[] Part(IEnumerable<TrainingSequence> part) => [.. part.Select(s => new TrainingSequenceMessage(s.Tokens, s.Targets, s.Documents))];
            var reports = await Task.WhenAll(
                trainers[0].Step(new TrainingStepMessage(1, Part(batch.Take(3)), targets)),
                trainers[1].Step(new TrainingStepMessage(1, Part(batch.Skip(3)), targets)));

            Assert.Equal(expectedLoss, reports.Sum(r => r.LossShare), 1e-4);
            byte[] first = await trainers[0].ParameterBytes(), second = await trainers[1].ParameterBytes();
            Assert.Equal(first, second);                                         // the replicas never drift apart
            float[] expected = [.. single.Parameters().SelectMany(p => p.Parameter)];
            Assert.True(Reference.MaxRelativeError(MemoryMarshal.Cast<byte, float>(first), expected) <= 1e-5,
                $"step {step + 1}: max error {Reference.MaxRelativeError(MemoryMarshal.Cast<byte, float>(first), expected)}");
        }
    }
}
