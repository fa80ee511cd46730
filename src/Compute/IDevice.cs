// The device abstraction: one interface, two backends (CpuDevice: managed SIMD over a worker pool;
// IlgpuDevice: ILGPU kernels on CUDA / OpenCL / ILGPU's CPU accelerator).
// Every operation is a forward pass over row-major float buffers that live on the device; shapes
// are passed explicitly so one scratch buffer serves any batch size. Backward ops go beside each
// forward op with the same naming (RmsNorm / RmsNormBackward) when training lands.
namespace Cluster.Compute;

public enum DeviceKind { Cpu, Cuda, OpenCL, IlgpuCpu }

/// <summary>What a device is and what it offers, as reported to the cluster.</summary>
public sealed record DeviceInfo(DeviceKind Kind, string Name, int Threads, long MemoryBytes);

/// <summary>RoPE pair layout: llama2.c / GGUF rotate adjacent pairs (2i, 2i+1); HF checkpoints rotate (i, i + d/2).</summary>
public enum RopeLayout { Interleaved, HalfSplit }

/// <summary>A float buffer in a device's memory.</summary>
public abstract class DeviceBuffer : IDisposable
{
    protected DeviceBuffer(int length) => Length = length;
    public int Length { get; }
    public abstract void Dispose();
}

/// <summary>A weight matrix W (Rows = out features, Cols = in features), stored in whatever layout the device's GEMM wants.</summary>
public abstract class DeviceMatrix : IDisposable
{
    protected DeviceMatrix(int rows, int cols) { Rows = rows; Cols = cols; }
    public int Rows { get; }
    public int Cols { get; }
    /// <summary>Device memory the matrix takes in its layout (a packed layout may pad).</summary>
    public virtual long Bytes => (long)Rows * Cols * sizeof(float);
    public abstract void Dispose();
}

/// <summary>
/// Which cache slots each query token may attend to, for a batch of sequences at different positions.
/// Token t belongs to sequence TokenSequence[t] at position TokenPosition[t] and attends to positions
/// 0..TokenPosition[t] of that sequence. The cache is paged: position p of sequence s lives in slot
/// BlockTables[s * MaxBlocksPerSequence + p / BlockSize] * BlockSize + p % BlockSize.
/// </summary>
public sealed record AttentionLayout(
    int[] TokenSequence,          // (T,)
    int[] TokenPosition,          // (T,)
    int[] BlockTables,            // (S, MaxBlocksPerSequence)
    int MaxBlocksPerSequence,
    int BlockSize,
    int Heads,
    int KvHeads,
    int HeadDim)
{
    public int Tokens => TokenSequence.Length;

    /// <summary>The cache slot of every token in the batch: where its new K and V are written.</summary>
    public int[] TokenSlots()
    {
        var slots = new int[Tokens];
        for (int t = 0; t < Tokens; t++)
        {
            int pos = TokenPosition[t];
            slots[t] = BlockTables[TokenSequence[t] * MaxBlocksPerSequence + pos / BlockSize] * BlockSize + pos % BlockSize;
        }
        return slots;
    }
}

public interface IDevice : IDisposable
{
    DeviceInfo Info { get; }

    DeviceBuffer Allocate(int length);                       // zero-filled
    DeviceBuffer Upload(ReadOnlySpan<float> data);
    void Download(DeviceBuffer source, Span<float> destination);   // the first destination.Length floats
    void Write(DeviceBuffer destination, ReadOnlySpan<float> source);   // into the first source.Length floats
    DeviceMatrix UploadMatrix(ReadOnlySpan<float> weights, int rows, int cols);   // weights (rows, cols) row-major

    /// <summary>y (M, N) = x (M, K) · Wᵀ, W (N, K).</summary>
    void MatMul(DeviceBuffer x, DeviceMatrix w, DeviceBuffer y, int m);

    /// <summary>x (rows, dim) += bias (dim,) broadcast over rows.</summary>
    void AddBias(DeviceBuffer x, DeviceBuffer bias, int rows, int dim);

    /// <summary>output (T, dim) = table[tokens[t]].</summary>
    void Embedding(DeviceBuffer table, ReadOnlySpan<int> tokens, DeviceBuffer output, int dim);

    /// <summary>x (T, dim) += table[indices[t]] (learned position embeddings).</summary>
    void AddEmbedding(DeviceBuffer x, DeviceBuffer table, ReadOnlySpan<int> indices, int dim);

    /// <summary>y (rows, dim) = x / sqrt(mean(x²) + eps) · weight.</summary>
    void RmsNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer y, int rows, int dim, float eps);

    /// <summary>y (rows, dim) = (x − mean) / sqrt(var + eps) · weight + bias.</summary>
    void LayerNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer bias, DeviceBuffer y, int rows, int dim, float eps);

    /// <summary>Rotates x (T, heads·headDim) in place by each token's position; the first rotaryDim dims of each head rotate.</summary>
    void Rope(DeviceBuffer x, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout);

    /// <summary>Writes k, v (T, kvDim) into the layer's caches (slots, kvDim) at the given slots.</summary>
    void WriteKv(DeviceBuffer k, DeviceBuffer v, DeviceBuffer cacheK, DeviceBuffer cacheV, ReadOnlySpan<int> slots, int kvDim);

    /// <summary>
    /// Causal attention over a paged cache, tile by tile with an online softmax (no T×T matrix):
    /// output (T, heads·headDim) from q (T, heads·headDim); query head h reads KV head h / (heads / kvHeads).
    /// </summary>
    void PagedAttention(DeviceBuffer q, DeviceBuffer cacheK, DeviceBuffer cacheV, DeviceBuffer output, AttentionLayout layout);

    /// <summary>gate (n,) = silu(gate) · up, in place.</summary>
    void SwiGlu(DeviceBuffer gate, DeviceBuffer up, int n);

    /// <summary>x (n,) = gelu(x) with the tanh approximation (GPT-2), in place.</summary>
    void Gelu(DeviceBuffer x, int n);

    /// <summary>Backward of SwiGlu from its inputs: dgate (n,) += dout·up·σ(g)·(1 + g·(1 − σ(g))), dup (n,) += dout·silu(g).</summary>
    void SwiGluBackward(DeviceBuffer gate, DeviceBuffer up, DeviceBuffer dout, DeviceBuffer dgate, DeviceBuffer dup, int n);

    /// <summary>Backward of Gelu from its input: dx (n,) += dout · gelu'(x).</summary>
    void GeluBackward(DeviceBuffer x, DeviceBuffer dout, DeviceBuffer dx, int n);

    /// <summary>Backward of RmsNorm: dx (rows, dim) += ∂L/∂x, dw (dim,) += Σ over rows of dy·x/rms.</summary>
    void RmsNormBackward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer dw, int rows, int dim, float eps);

    /// <summary>Backward of Rope: rotates dx (T, heads·headDim) in place back by each token's angle.</summary>
    void RopeBackward(DeviceBuffer dx, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout);

    /// <summary>Backward of LayerNorm: dx (rows, dim) += ∂L/∂x, dw, db (dim,) += their gradients summed over rows.</summary>
    void LayerNormBackward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer dw, DeviceBuffer db, int rows, int dim, float eps);

    /// <summary>
    /// Cross-entropy of logits (T, vocab) against targets (T,; −1 = not counted): losses (T,) = −log softmax at the
    /// target (0 where not counted), dlogits (T, vocab) = (softmax − onehot) / <paramref name="counted"/>.
    /// </summary>
    void CrossEntropy(DeviceBuffer logits, ReadOnlySpan<int> targets, DeviceBuffer dlogits, DeviceBuffer losses, int vocab, int counted);

    /// <summary>
    /// Causal attention of one packed training sequence, keeping the weights: output (T, heads·hd), probs (heads, T, T)
    /// (zero where masked) from q (T, heads·hd), k, v (T, kvHeads·hd); <paramref name="documents"/> (T,) keep packed
    /// documents apart (empty = one document).
    /// </summary>
    void CausalAttention(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer probs, ReadOnlySpan<int> documents,
        int tokens, int heads, int kvHeads, int headDim);

    /// <summary>dq, dk, dv accumulate the gradients of CausalAttention given dout and its probs.</summary>
    void CausalAttentionBackward(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer probs, DeviceBuffer dout,
        DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, int tokens, int heads, int kvHeads, int headDim);

    /// <summary>dtable[rows[t]] += dx[t] (T, dim) for every t whose row is not −1 (an embedding's gradient).</summary>
    void EmbeddingBackward(ReadOnlySpan<int> rows, DeviceBuffer dx, DeviceBuffer dtable, int dim);

    /// <summary>One AdamW update (step counts from 1) of parameters (n,) from gradients, moments m and v updated in place.</summary>
    void AdamW(DeviceBuffer parameters, DeviceBuffer gradients, DeviceBuffer m, DeviceBuffer v, int n,
        int step, float learningRate, float beta1, float beta2, float eps, float weightDecay);

    /// <summary>x (n,) += y (residual connection).</summary>
    void Add(DeviceBuffer x, DeviceBuffer y, int n);

    /// <summary>output (R, dim) = x[rows[r]] (picks the rows whose logits are wanted).</summary>
    void GatherRows(DeviceBuffer x, ReadOnlySpan<int> rows, DeviceBuffer output, int dim);
}
