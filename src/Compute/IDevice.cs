// The device abstraction: one interface, two backends (CpuDevice: managed SIMD over a worker pool;
// IlgpuDevice: ILGPU kernels on CUDA / OpenCL / ILGPU's CPU accelerator).
// Every operation works on row-major float buffers that live on the device; shapes are passed explicitly so one
// scratch buffer serves any batch size. Each forward op has its backward beside it (RmsNorm / RmsNormBackward), so a
// training step runs on the device as serving does: serving multiplies by DeviceMatrix weights (prepared once),
// training by weights in plain buffers (Linear / LinearBackward: they change every step).
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

/// <summary>The layout of CausalAttention's packed sequences and of their attention weights, and its argument checks.</summary>
public static class TrainingAttention
{
    /// <summary>
    /// CausalAttention's arguments, checked as every device does before any work: the heads, the starts, the documents
    /// and each buffer's length. Returns the weights' offsets (ProbsOffsets).
    /// </summary>
    public static int[] CheckForward(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer probs,
        ReadOnlySpan<int> starts, ReadOnlySpan<int> documents, int heads, int kvHeads, int headDim)
    {
        var offsets = CheckInputs(q, k, v, probs, starts, heads, kvHeads, headDim);
        int tokens = starts[^1];
        if (!documents.IsEmpty && documents.Length != tokens) throw new ArgumentException($"{documents.Length} document ids for {tokens} tokens");
        DeviceArguments.CheckLength(output, (long)tokens * heads * headDim, nameof(output));
        return offsets;
    }

    /// <summary>CausalAttentionBackward's arguments, checked likewise; returns the weights' offsets.</summary>
    public static int[] CheckBackward(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer probs, DeviceBuffer dout,
        DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, ReadOnlySpan<int> starts, int heads, int kvHeads, int headDim)
    {
        var offsets = CheckInputs(q, k, v, probs, starts, heads, kvHeads, headDim);
        long queries = (long)starts[^1] * heads * headDim, keys = (long)starts[^1] * kvHeads * headDim;
        DeviceArguments.CheckLength(dout, queries, nameof(dout));
        DeviceArguments.CheckLength(dq, queries, nameof(dq));
        DeviceArguments.CheckLength(dk, keys, nameof(dk));
        DeviceArguments.CheckLength(dv, keys, nameof(dv));
        return offsets;
    }

    private static int[] CheckInputs(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer probs, ReadOnlySpan<int> starts,
        int heads, int kvHeads, int headDim)
    {
        if (kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"{heads} query heads cannot share {kvHeads} KV heads evenly");
        var offsets = ProbsOffsets(starts, heads);
        int tokens = starts[^1];
        DeviceArguments.CheckLength(q, (long)tokens * heads * headDim, nameof(q));
        DeviceArguments.CheckLength(k, (long)tokens * kvHeads * headDim, nameof(k));
        DeviceArguments.CheckLength(v, (long)tokens * kvHeads * headDim, nameof(v));
        DeviceArguments.CheckLength(probs, offsets[^1], nameof(probs));
        return offsets;
    }

    /// <summary>
    /// Checks the sequence starts (S + 1,): 0, then strictly increasing; returns where each sequence's weights
    /// (heads, Ts, Ts) start in probs (S + 1,; the last entry is the length probs needs).
    /// </summary>
    public static int[] ProbsOffsets(ReadOnlySpan<int> starts, int heads)
    {
        if (starts.Length < 2 || starts[0] != 0) throw new ArgumentException("sequence starts begin at 0 and end at the token count", nameof(starts));
        var offsets = new int[starts.Length];
        for (int s = 0; s + 1 < starts.Length; s++)
        {
            int length = starts[s + 1] - starts[s];
            if (length <= 0) throw new ArgumentException($"sequence {s} has no tokens", nameof(starts));
            offsets[s + 1] = checked(offsets[s] + heads * length * length);
        }
        return offsets;
    }
}

/// <summary>Argument checks every device makes before any work (kernels do not bounds-check).</summary>
public static class DeviceArguments
{
    public static void CheckLength(DeviceBuffer buffer, long needed, string name)
    {
        if (buffer.Length < needed) throw new ArgumentException($"{name} holds {buffer.Length} floats, the operation needs {needed}");
    }

    /// <summary>Linear's: x (M, K), W block <paramref name="block"/> of (N, K) matrices, y (M, N).</summary>
    public static void CheckLinear(DeviceBuffer x, DeviceBuffer w, DeviceBuffer y, int m, int n, int k, int block = 0)
    {
        if (block < 0) throw new ArgumentOutOfRangeException(nameof(block), block, "a weight block is counted from 0");
        CheckLength(x, (long)m * k, nameof(x));
        CheckLength(w, (block + 1L) * n * k, nameof(w));
        CheckLength(y, (long)m * n, nameof(y));
    }

    /// <summary>LinearBackward's: x, dx (M, K), W and dW block <paramref name="block"/> of (N, K) matrices, dy (M, N), db (N,) when given.</summary>
    public static void CheckLinearBackward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer? dw, DeviceBuffer? db, int m, int n, int k, int block = 0)
    {
        CheckLinear(x, w, dy, m, n, k, block);
        CheckLength(dx, (long)m * k, nameof(dx));
        if (dw is not null) CheckLength(dw, (block + 1L) * n * k, nameof(dw));
        if (db is not null) CheckLength(db, n, nameof(db));
    }

    /// <summary>A row-wise op's buffers: each holds at least rows × dim floats, <paramref name="perRow"/> at least rows.</summary>
    public static void CheckRowsOf(int rows, int dim, DeviceBuffer perRow, params DeviceBuffer[] matrices)
    {
        if (rows < 0 || dim < 0) throw new ArgumentOutOfRangeException(nameof(rows), $"{rows} rows of {dim}");
        CheckLength(perRow, rows, nameof(perRow));
        foreach (var m in matrices) CheckLength(m, (long)rows * dim, "matrix");
    }
}

public interface IDevice : IDisposable
{
    DeviceInfo Info { get; }

    DeviceBuffer Allocate(int length);                       // zero-filled
    DeviceBuffer Upload(ReadOnlySpan<float> data);
    void Download(DeviceBuffer source, Span<float> destination);   // the first destination.Length floats
    void Write(DeviceBuffer destination, ReadOnlySpan<float> source);   // into the first source.Length floats
    /// <summary>
    /// A serving weight matrix from weights (rows, cols) row-major, kept as float32 or quantized to a block format
    /// (<see cref="WeightFormats.For"/> says which a matrix can take; a device without a kernel for it refuses).
    /// </summary>
    DeviceMatrix UploadMatrix(ReadOnlySpan<float> weights, int rows, int cols, WeightFormat format = WeightFormat.F32);

    /// <summary>y (M, N) = x (M, K) · Wᵀ, W (N, K); a block-format W multiplies x quantized to Q8_0 (as llama.cpp does).</summary>
    void MatMul(DeviceBuffer x, DeviceMatrix w, DeviceBuffer y, int m);

    /// <summary>x (rows, dim) += bias (dim,) broadcast over rows.</summary>
    void AddBias(DeviceBuffer x, DeviceBuffer bias, int rows, int dim);

    /// <summary>output (T, dim) = table[tokens[t]]; a token of −1 gives a zero row (a vocab slice's foreign tokens).</summary>
    void Embedding(DeviceBuffer table, ReadOnlySpan<int> tokens, DeviceBuffer output, int dim);

    /// <summary>
    /// output (T, Cols) = rows tokens[t] of a weight matrix (−1 gives a zero row): serving's embedding table, which a
    /// tied head multiplies by too, one copy for both.
    /// </summary>
    void Embedding(DeviceMatrix table, ReadOnlySpan<int> tokens, DeviceBuffer output);

    /// <summary>x (T, dim) += table[indices[t]] (learned position embeddings).</summary>
    void AddEmbedding(DeviceBuffer x, DeviceBuffer table, ReadOnlySpan<int> indices, int dim);

    /// <summary>y (rows, dim) = x / sqrt(mean(x²) + eps) · weight.</summary>
    void RmsNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer y, int rows, int dim, float eps);

    /// <summary>y (rows, dim) = (x − mean) / sqrt(var + eps) · weight + bias.</summary>
    void LayerNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer bias, DeviceBuffer y, int rows, int dim, float eps);

    /// <summary>Rotates x (T, heads·headDim) in place by each token's position; the first rotaryDim dims of each head rotate.</summary>
    void Rope(DeviceBuffer x, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout);

    /// <summary>
    /// A layer's K or V cache: <paramref name="slots"/> token slots of kvDim values (heads of <paramref name="headDim"/>),
    /// zero-filled, kept in <paramref name="format"/> (F32: a plain buffer of slots × kvDim floats). WriteKv and
    /// PagedAttention take caches of any format the device made; a device without a kernel for one refuses it.
    /// </summary>
    DeviceBuffer AllocateKv(int slots, int kvDim, int headDim, KvFormat format);

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
    /// Causal attention of a batch of training sequences packed one after another, keeping the weights. Sequence s is
    /// the tokens [starts[s], starts[s + 1]) of q (T, heads·hd), k, v (T, kvHeads·hd) and output (T, heads·hd); its
    /// weights (heads, Ts, Ts) (zero where masked) follow the earlier sequences' in probs (see TrainingAttention).
    /// <paramref name="documents"/> (T,) keep documents packed within a sequence apart (empty = one per sequence).
    /// </summary>
    void CausalAttention(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer probs,
        ReadOnlySpan<int> starts, ReadOnlySpan<int> documents, int heads, int kvHeads, int headDim);

    /// <summary>dq, dk, dv accumulate the gradients of CausalAttention given dout and its probs.</summary>
    void CausalAttentionBackward(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer probs, DeviceBuffer dout,
        DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, ReadOnlySpan<int> starts, int heads, int kvHeads, int headDim);

    /// <summary>
    /// y (M, N) = x (M, K) · Wᵀ for a weight W (N, K) kept row-major in a buffer (a trained weight). The device may keep
    /// a prepared copy of W (the CPU packs it for its GEMM) until <see cref="ForgetPrepared"/>. With
    /// <paramref name="block"/> b, W is the b-th of the (N, K) matrices stacked in <paramref name="w"/> (an MoE layer's
    /// experts, each multiplied on its own tokens: a grouped GEMM).
    /// </summary>
    void Linear(DeviceBuffer x, DeviceBuffer w, DeviceBuffer y, int m, int n, int k, int block = 0);

    /// <summary>
    /// Backward of Linear: dx (M, K) += dy · W; unless <paramref name="dw"/> is null (a frozen weight) dW (N, K) += dyᵀ · x,
    /// and unless <paramref name="db"/> is null db (N,) += Σ_m dy. With <paramref name="block"/>, W and dW are that
    /// block of their stacks.
    /// </summary>
    void LinearBackward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer? dw, DeviceBuffer? db, int m, int n, int k, int block = 0);

    /// <summary>
    /// Without <paramref name="w"/>: every prepared copy is stale (prepared again when next used; call when weights
    /// changed). With it: drops <paramref name="w"/>'s prepared copies and their memory (its owner lets go of it).
    /// </summary>
    void ForgetPrepared(DeviceBuffer? w = null);

    /// <summary>destination (n,) = source.</summary>
    void Copy(DeviceBuffer source, DeviceBuffer destination, int n);

    /// <summary>x (n,) = 0.</summary>
    void Zero(DeviceBuffer x, int n);

    /// <summary>x (n,) *= factor.</summary>
    void Scale(DeviceBuffer x, float factor, int n);

    /// <summary>x (n,) *= y, element by element.</summary>
    void Multiply(DeviceBuffer x, DeviceBuffer y, int n);

    /// <summary>y (n,) += factor · x.</summary>
    void AddScaled(DeviceBuffer y, DeviceBuffer x, float factor, int n);

    /// <summary>dtable[rows[t]] += dx[t] (T, dim) for every t whose row is not −1 (an embedding's gradient).</summary>
    void EmbeddingBackward(ReadOnlySpan<int> rows, DeviceBuffer dx, DeviceBuffer dtable, int dim);

    /// <summary>One AdamW update (step counts from 1) of parameters (n,) from gradients, moments m and v updated in place.</summary>
    void AdamW(DeviceBuffer parameters, DeviceBuffer gradients, DeviceBuffer m, DeviceBuffer v, int n,
        int step, float learningRate, float beta1, float beta2, float eps, float weightDecay);

    /// <summary>
    /// sums[at] = Σ x[i]² over x's first n floats (a gradient's contribution to the global norm: an optimizer reads every
    /// tensor's sum in one download of <paramref name="sums"/>).
    /// </summary>
    void SumOfSquares(DeviceBuffer x, int n, DeviceBuffer sums, int at);

    /// <summary>x (n,) += y (residual connection).</summary>
    void Add(DeviceBuffer x, DeviceBuffer y, int n);

    /// <summary>output (R, dim) = x[rows[r]] (picks the rows whose logits are wanted; an expert's tokens).</summary>
    void GatherRows(DeviceBuffer x, ReadOnlySpan<int> rows, DeviceBuffer output, int dim);

    /// <summary>x (rows, dim): row r *= scales[r] (an expert's outputs by their router weights).</summary>
    void ScaleRows(DeviceBuffer x, DeviceBuffer scales, int rows, int dim);

    /// <summary>dots (rows,) = Σ_d a[r, d] · b[r, d] (the router's gradient: each expert output against its gradient).</summary>
    void RowDots(DeviceBuffer a, DeviceBuffer b, DeviceBuffer dots, int rows, int dim);
}
