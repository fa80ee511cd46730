// Megatron's vocab-parallel cross-entropy (tensor_parallel/cross_entropy.py): with the LM head cut by vocabulary over a
// tensor-parallel group, each rank holds the logits (T, Vr) of its columns. The loss needs each row's log-sum-exp over
// all V columns and the target's logit, so the ranks exchange three numbers per row (their columns' max, their sum of
// exp(logit − max), the target's logit where they hold it) instead of gathering the (T, V) logits, and each rank's
// gradient is (softmax − onehot) / counted on its own columns. Forward and backward in one pass, as the one-device
// CrossEntropy kernel does (llm.c's fused classifier).
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class "*VocabParallelCrossEntropyTests"
using System.Numerics.Tensors;
using Cluster.Compute.Collectives;
using Cluster.Compute.Cpu;

namespace Cluster.Model.Parallel;

public static class VocabParallelCrossEntropy
{
    /// <summary>
    /// Σ over counted rows of −log softmax(logits[t])[targets[t]] (targets (T,), CrossEntropy.Ignore where not
    /// counted), the softmax taken over every rank's columns; writes <paramref name="dLocal"/> (T, Vr) = (softmax −
    /// onehot) / <paramref name="counted"/> on this rank's columns [<paramref name="offset"/>, offset + Vr), zero on
    /// ignored rows. Every rank of <paramref name="group"/> calls it with the same targets; its logits are (T, Vr).
    /// </summary>
    public static double LossAndGradient(ReadOnlySpan<float> localLogits, Span<float> dLocal, ReadOnlySpan<int> targets, int offset, int localVocab,
        int counted, CollectiveGroup group)
    {
        int T = targets.Length, Vr = localVocab;
        if (localLogits.Length < (long)T * Vr || dLocal.Length < (long)T * Vr)
            throw new ArgumentException($"({T}, {Vr}) logits and gradients need {(long)T * Vr} floats each");
        var statistics = new float[3 * T];   // per row: this rank's max, Σ exp(logit − max), the target's logit (0 where another rank holds it)
        for (int t = 0; t < T; t++)
        {
            var gradient = dLocal.Slice(t * Vr, Vr);
            if (targets[t] == CrossEntropy.Ignore)
            {
                gradient.Clear();
                continue;
            }
            var row = localLogits.Slice(t * Vr, Vr);
            float max = TensorPrimitives.Max(row);
            TensorPrimitives.Subtract(row, max, gradient);
            TensorPrimitives.Exp(gradient, gradient);                                  // exp(logit − this rank's max)
            statistics[3 * t] = max;
            statistics[3 * t + 1] = TensorPrimitives.Sum(gradient);
            int local = targets[t] - offset;
            if ((uint)local < (uint)Vr) statistics[3 * t + 2] = row[local];
        }
        float[] ranks = group.AllGather(statistics).GetAwaiter().GetResult();          // (N, T, 3) rank-major
        double loss = 0;
        for (int t = 0; t < T; t++)
        {
            if (targets[t] == CrossEntropy.Ignore) continue;
            double max = double.NegativeInfinity, sum = 0, target = 0;
            for (int r = 0; r < group.WorldSize; r++) max = Math.Max(max, ranks[r * 3 * T + 3 * t]);
            for (int r = 0; r < group.WorldSize; r++)
            {
                int at = r * 3 * T + 3 * t;
                sum += ranks[at + 1] * Math.Exp(ranks[at] - max);
                target += ranks[at + 2];
            }
            double logSumExp = max + Math.Log(sum);                                     // over all V columns
            loss += logSumExp - target;
            var gradient = dLocal.Slice(t * Vr, Vr);
            TensorPrimitives.Multiply(gradient, (float)(Math.Exp(statistics[3 * t] - logSumExp) / counted), gradient);   // softmax / counted
            int local = targets[t] - offset;
            if ((uint)local < (uint)Vr) gradient[local] -= 1f / counted;
        }
        return loss;
    }
}
