// Every kernel of the ILGPU backend, compiled for one accelerator when the device opens (on its dispatch thread).
// Elementwise kernels are auto-grouped (one thread per element); the others launch explicit groups of
// GroupReduce.GroupSize threads.
using ILGPU;
using ILGPU.Runtime;

namespace Cluster.Compute.Ilgpu;

internal sealed class KernelSet(Accelerator a)
{
    public readonly Action<Index1D, ArrayView<float>, ArrayView<sbyte>, ArrayView<float>> QuantizeInputs =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<sbyte>, ArrayView<float>>(QuantizedKernels.QuantizeInputs);

    public readonly Action<Index1D, ArrayView<sbyte>, ArrayView<float>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, int, int, int> QuantizedProduct =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<sbyte>, ArrayView<float>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, int, int, int>(QuantizedKernels.Product);

    public readonly Action<Index1D, ArrayView<int>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, int, int> QuantizedEmbedding =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, int, int>(QuantizedKernels.EmbeddingRows);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>> Add =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(ElementwiseKernels.Add);

    public readonly Action<Index1D, ArrayView<float>, float> Scale =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(ElementwiseKernels.Scale);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>> Multiply =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(ElementwiseKernels.Multiply);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, float> AddScaled =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, float>(ElementwiseKernels.AddScaled);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, int, int> Transpose =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int>(LinearKernels.Transpose);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, int, int> ColumnSums =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int>(LinearKernels.ColumnSums);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, int> AddBias =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(ElementwiseKernels.AddBias);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, int> ScaleRows =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(ElementwiseKernels.ScaleRows);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> RowDots =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(ElementwiseKernels.RowDots);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int> GatherRows =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>(ElementwiseKernels.GatherRows);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int> WriteKv =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int>(ElementwiseKernels.WriteKv);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int, int> Rope =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int, int>(ElementwiseKernels.Rope);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>> SwiGlu =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(ElementwiseKernels.SwiGlu);

    public readonly Action<Index1D, ArrayView<float>> Gelu =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>(ElementwiseKernels.Gelu);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>> SwiGluBackward =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernels.SwiGlu);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> GeluBackward =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernels.Gelu);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> RmsNormBackwardRows =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(BackwardKernels.RmsNormRows);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> RmsNormBackwardWeight =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(BackwardKernels.RmsNormWeight);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> LayerNormBackwardRows =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(BackwardKernels.LayerNormRows);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> LayerNormBackwardWeight =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(BackwardKernels.LayerNormWeight);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int> CrossEntropy =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int>(BackwardKernels.CrossEntropy);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int, int, int> TrainingAttention =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int, int, int, int>(AttentionBackwardKernels.Forward);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> AttentionBackwardQueries =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(AttentionBackwardKernels.Queries);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> AttentionBackwardKeys =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(AttentionBackwardKernels.Keys);

    public readonly Action<Index1D, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int> EmbeddingBackward =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int>(AttentionBackwardKernels.EmbeddingRows);

    public readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, float, float, float, float, float, float> AdamW =
        a.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, float, float, float, float, float, float>(BackwardKernels.AdamW);

    public readonly Action<KernelConfig, ArrayView<float>, int, ArrayView<float>> SumOfSquaresPartials =
        a.LoadStreamKernel<ArrayView<float>, int, ArrayView<float>>(BackwardKernels.SumOfSquaresPartials);

    public readonly Action<KernelConfig, ArrayView<float>, int, ArrayView<float>, int> SumInto =
        a.LoadStreamKernel<ArrayView<float>, int, ArrayView<float>, int>(BackwardKernels.SumInto);

    public readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> RmsNorm =
        a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(NormKernels.RmsNorm);

    public readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> LayerNorm =
        a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float>(NormKernels.LayerNorm);

    public readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int> Gemm =
        a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(GemmKernel.Kernel);

    public readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int> Gemv =
        a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(GemvKernel.Kernel);

    public readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, AttentionShape> Attention =
        a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, AttentionShape>(AttentionKernel.Kernel);
}
