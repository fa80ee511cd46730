// The vocab-parallel cross-entropy on 2 and 3 ranks (each on its own thread over an InProcessTransport group, uneven
// column blocks) equals the one-device CrossEntropy on the whole logits: the loss summed over counted rows, and each
// rank's gradient the columns it holds of the whole one, ignored rows included.
using Cluster.Compute.Collectives;
using Cluster.Compute.Cpu;
using Cluster.Model.Parallel;

namespace Cluster.Tests.Parallel;

public sealed class VocabParallelCrossEntropyTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public async Task EachRanksLossAndColumnsEqualTheWholeVocabularys(int ranks)
    {
        const int T = 6, V = 11;
        float[] logits = Reference.Random(T * V, seed: 7, scale: 4f);                   // (T, V)
        int[] targets = [3, CrossEntropy.Ignore, 10, 0, 5, CrossEntropy.Ignore];
        int counted = CrossEntropy.Counted(targets, V);
        var expectedGradient = new float[T * V];
        double expectedLoss = CrossEntropy.SumOverRows(logits, targets, expectedGradient, V, counted);

        var transports = InProcessTransport.CreateGroup(ranks);
        await Task.WhenAll(transports.Select(transport => Task.Run(() =>
        {
            var group = new CollectiveGroup(transport);
            var block = Slice.Partition(V, ranks, group.Rank);
            var local = new float[T * block.Count];                                      // (T, Vr) this rank's columns
            for (int t = 0; t < T; t++) logits.AsSpan(t * V + block.Offset, block.Count).CopyTo(local.AsSpan(t * block.Count));
            var gradient = new float[T * block.Count];
            gradient.AsSpan().Fill(float.NaN);                                           // every element is written
            double loss = VocabParallelCrossEntropy.LossAndGradient(local, gradient, targets, block.Offset, block.Count, counted, group);
            Assert.Equal(expectedLoss, loss, 1e-5);
            for (int t = 0; t < T; t++)
                for (int j = 0; j < block.Count; j++)
                    Assert.Equal(expectedGradient[t * V + block.Offset + j], gradient[t * block.Count + j], 1e-6f);
        }, TestContext.Current.CancellationToken)));
    }
}
