// Cross-entropy of next-token logits against targets, with its gradient in one pass (llm.c's fused classifier).
using System.Numerics.Tensors;

namespace Cluster.Compute.Cpu;

public static class CrossEntropy
{
    /// <summary>Target id of a position that does not count (padding, prompt tokens in a completion-only loss).</summary>
    public const int Ignore = -1;

    /// <summary>
    /// The mean over counted positions of −log softmax(logits[t])[targets[t]], logits (T, V); dlogits (T, V) receives
    /// (softmax − onehot) / counted, zero on ignored rows. Returns 0 when nothing counts.
    /// </summary>
    public static float LossAndGradient(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, Span<float> dlogits, int vocab)
    {
        int counted = Counted(targets, vocab);
        return counted == 0 ? Clear(dlogits, targets.Length * vocab) : (float)(SumOverRows(logits, targets, dlogits, vocab, counted) / counted);
    }

    private static float Clear(Span<float> dlogits, int length)
    {
        dlogits[..length].Clear();
        return 0;
    }

    /// <summary>How many targets count (checking each is in the vocabulary).</summary>
    public static int Counted(ReadOnlySpan<int> targets, int vocab)
    {
        int counted = 0;
        foreach (int target in targets)
        {
            if (target == Ignore) continue;
            if ((uint)target >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(targets), target, $"target outside the vocabulary of {vocab}");
            counted++;
        }
        return counted;
    }

    /// <summary>
    /// Rows of LossAndGradient (so callers can split the rows over threads): Σ over these rows' counted targets of
    /// −log softmax, and dlogits = (softmax − onehot) / <paramref name="counted"/> (the whole batch's count), zero on ignored rows.
    /// </summary>
    public static double SumOverRows(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, Span<float> dlogits, int vocab, int counted)
    {
        dlogits.Slice(0, targets.Length * vocab).Clear();
        double loss = 0;
        for (int t = 0; t < targets.Length; t++)
        {
            if (targets[t] == Ignore) continue;
            var row = logits.Slice(t * vocab, vocab);
            var grad = dlogits.Slice(t * vocab, vocab);
            float max = TensorPrimitives.Max(row);
            TensorPrimitives.Subtract(row, max, grad);
            TensorPrimitives.Exp(grad, grad);                                   // exp(logit − max)
            float sum = TensorPrimitives.Sum(grad);
            loss += Math.Log(sum) + max - row[targets[t]];
            TensorPrimitives.Multiply(grad, 1f / (sum * counted), grad);       // softmax / counted
            grad[targets[t]] -= 1f / counted;
        }
        return loss;
    }
}
