// Tensor-parallel communication as named pairs (Megatron-Core's tensor_parallel/mappings.py): each region is one
// collective in the forward and its adjoint in the backward, so the forward's call site and the backward's mirrored
// one carry the same name. With no group, or a group of one, nothing is called: no collective, no copy.
//
//   region             forward                                   backward                                 Megatron
//   CopyToRegion       identity                                  all-reduce of the input gradient         copy_to_tensor_model_parallel_region
//   ReduceFromRegion   all-reduce of the partial outputs         identity                                 reduce_from_tensor_model_parallel_region
//   GatherFromRegion   all-gather, joined by columns             this rank's columns of the gradient      gather_from_tensor_model_parallel_region
//
// A column-parallel linear (q/k/v, gate/up, the LM head) reads its input through CopyToRegion; a row-parallel one
// (the attention output, the MLP down) and the vocab-parallel embedding leave through ReduceFromRegion; the
// vocab-parallel logits leave through GatherFromRegion where they are wanted whole (serving, evaluation), while the
// training loss reads them cut (VocabParallelCrossEntropy). Every rank of a group must cross the same regions in the
// same order (the collectives pair by order).
using System.Diagnostics.CodeAnalysis;
using Cluster.Compute;
using Cluster.Compute.Collectives;

namespace Cluster.Model.Parallel;

public static class TensorParallelRegions
{
    /// <summary>The input of a column-parallel linear: whole on every rank, each rank multiplies it by its own output columns.</summary>
    public static class CopyToRegion
    {
        /// <summary>Forward: identity, x is already whole on every rank. Its pair: <see cref="Backward"/> all-reduces x's gradient.</summary>
        public static void Forward(IDevice device, DeviceBuffer x, int n, CollectiveGroup? group) { }

        /// <summary>
        /// Backward: dx's first <paramref name="n"/> floats (in place) become the sum over the ranks of each rank's partial
        /// gradient of the input (each rank's columns contribute their own part), through the host. Its pair: <see cref="Forward"/>, identity.
        /// </summary>
        public static void Backward(IDevice device, DeviceBuffer dx, int n, CollectiveGroup? group)
        {
            if (!Alone(group)) AllReduce(device, dx, n, group);
        }
    }

    /// <summary>The output of a row-parallel linear or of the vocab-parallel embedding: each rank holds a partial sum.</summary>
    public static class ReduceFromRegion
    {
        /// <summary>
        /// Forward: y's first <paramref name="n"/> floats (in place) become the sum over the ranks of their partial y, through
        /// the host. Its pair: <see cref="Backward"/>, identity.
        /// </summary>
        public static void Forward(IDevice device, DeviceBuffer y, int n, CollectiveGroup? group)
        {
            if (!Alone(group)) AllReduce(device, y, n, group);
        }

        /// <summary>
        /// Backward: identity, the summed output's gradient is whole on every rank and is each partial's gradient.
        /// Its pair: <see cref="Forward"/>, the all-reduce.
        /// </summary>
        public static void Backward(IDevice device, DeviceBuffer dy, int n, CollectiveGroup? group) { }
    }

    /// <summary>The output of a column-parallel linear kept whole: each rank holds its block of the columns (the vocab-parallel logits).</summary>
    public static class GatherFromRegion
    {
        /// <summary>
        /// Forward: this rank's (rows, Cr) block joined with the others' into (rows, columns), rank r holding columns
        /// Slice.Partition(columns, N, r). Its pair: <see cref="Backward(float[], int, int, CollectiveGroup?)"/> takes this rank's columns back out.
        /// </summary>
        public static float[] Forward(float[] local, int rows, int columns, CollectiveGroup? group)
        {
            if (Alone(group)) return local;
            float[] rankMajor = group.AllGather(local).GetAwaiter().GetResult();   // (rows, C0) (rows, C1) ...
            var joined = new float[rows * columns];                                  // (rows, columns)
            int offset = 0;
            for (int rank = 0; rank < group.WorldSize; rank++)
            {
                var block = Slice.Partition(columns, group.WorldSize, rank);
                for (int r = 0; r < rows; r++)
                    rankMajor.AsSpan(offset + r * block.Count, block.Count).CopyTo(joined.AsSpan(r * columns + block.Offset));
                offset += rows * block.Count;
            }
            return joined;
        }

        /// <summary>
        /// Backward: this rank's (rows, Cr) columns of the whole (rows, columns) gradient, no collective (every rank holds the
        /// whole gradient). Its pair: <see cref="Forward(float[], int, int, CollectiveGroup?)"/>, the all-gather.
        /// </summary>
        public static float[] Backward(float[] whole, int rows, int columns, CollectiveGroup? group)
        {
            if (Alone(group)) return whole;
            var block = Slice.Partition(columns, group.WorldSize, group.Rank);
            var local = new float[rows * block.Count];                               // (rows, Cr)
            for (int r = 0; r < rows; r++) whole.AsSpan(r * columns + block.Offset, block.Count).CopyTo(local.AsSpan(r * block.Count));
            return local;
        }
    }

    /// <summary>x's first n floats summed over the group, through the host.</summary>
    private static void AllReduce(IDevice device, DeviceBuffer x, int n, CollectiveGroup group)
    {
        var host = new float[n];
        device.Download(x, host);
        group.AllReduce(host).GetAwaiter().GetResult();
        device.Write(x, host);
    }

    /// <summary>The fast path: no group, or a group of one, needs no communication.</summary>
    private static bool Alone([NotNullWhen(false)] CollectiveGroup? group) => group is null || group.WorldSize == 1;
}
