// The CPU backend: buffers are pinned float arrays, weights are packed for Gemm, and every operation is
// spread over the device's WorkerPool (the cores this device was given).
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Cluster.Compute.Cpu;

public sealed unsafe class CpuDevice : IDevice
{
    private readonly WorkerPool _pool;
    private float[] _gemmScratch = [];

    public CpuDevice(int threads)
    {
        _pool = new WorkerPool(threads);
        Info = Describe(threads);
    }

    public DeviceInfo Info { get; }

    /// <summary>A CPU device of <paramref name="threads"/> worker threads as the cluster reports it: the GEMM's instruction set, the machine's cores.</summary>
    public static DeviceInfo Describe(int threads)
    {
        string simd = Gemm.UseAvx512 ? "AVX-512" : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? "AVX2" : "Vector128";
        return new DeviceInfo(DeviceKind.Cpu, $"CPU ({simd}, {threads} of {Environment.ProcessorCount} cores)", threads, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
    }
    public WorkerPool Pool => _pool;

    public DeviceBuffer Allocate(int length) => new CpuBuffer(length);

    public DeviceBuffer Upload(ReadOnlySpan<float> data)
    {
        var buffer = new CpuBuffer(data.Length);
        data.CopyTo(buffer.Data);
        return buffer;
    }

    public void Download(DeviceBuffer source, Span<float> destination) => Cpu(source).Data.AsSpan(0, destination.Length).CopyTo(destination);

    public void Write(DeviceBuffer destination, ReadOnlySpan<float> source) => source.CopyTo(Cpu(destination).Data);

    public DeviceMatrix UploadMatrix(ReadOnlySpan<float> weights, int rows, int cols) => new PackedMatrix(weights, rows, cols);

    public void MatMul(DeviceBuffer x, DeviceMatrix w, DeviceBuffer y, int m)
    {
        var packed = (PackedMatrix)w;
        CheckLength(x, (long)m * packed.Cols, nameof(x));
        CheckLength(y, (long)m * packed.Rows, nameof(y));
        long scratch = Gemm.ScratchLength(m, packed.Cols);
        if (_gemmScratch.Length < scratch) _gemmScratch = GC.AllocateUninitializedArray<float>(checked((int)scratch), pinned: true);
        fixed (float* px = Cpu(x).Data, py = Cpu(y).Data, ps = _gemmScratch)
            Gemm.Multiply(_pool, px, m, packed.Cols, packed.Pointer, packed.Rows, py, ps);
    }

    public void AddBias(DeviceBuffer x, DeviceBuffer bias, int rows, int dim)
    {
        float[] data = Cpu(x).Data, b = Cpu(bias).Data;
        for (int r = 0; r < rows; r++) TensorPrimitives.Add(data.AsSpan(r * dim, dim), b.AsSpan(0, dim), data.AsSpan(r * dim, dim));
    }

    public void Embedding(DeviceBuffer table, ReadOnlySpan<int> tokens, DeviceBuffer output, int dim)
    {
        float[] t = Cpu(table).Data, o = Cpu(output).Data;
        int rows = t.Length / dim;
        for (int i = 0; i < tokens.Length; i++)
        {
            CheckIndex(tokens[i], rows, "token");
            t.AsSpan(tokens[i] * dim, dim).CopyTo(o.AsSpan(i * dim, dim));
        }
    }

    public void AddEmbedding(DeviceBuffer x, DeviceBuffer table, ReadOnlySpan<int> indices, int dim)
    {
        float[] t = Cpu(table).Data, o = Cpu(x).Data;
        int rows = t.Length / dim;
        for (int i = 0; i < indices.Length; i++)
        {
            CheckIndex(indices[i], rows, "position");
            TensorPrimitives.Add(o.AsSpan(i * dim, dim), t.AsSpan(indices[i] * dim, dim), o.AsSpan(i * dim, dim));
        }
    }

    public void SwiGluBackward(DeviceBuffer gate, DeviceBuffer up, DeviceBuffer dout, DeviceBuffer dgate, DeviceBuffer dup, int n) =>
        Activations.SwiGluBackward(Cpu(gate).Data.AsSpan(0, n), Cpu(up).Data.AsSpan(0, n), Cpu(dout).Data.AsSpan(0, n), Cpu(dgate).Data.AsSpan(0, n), Cpu(dup).Data.AsSpan(0, n));

    public void GeluBackward(DeviceBuffer x, DeviceBuffer dout, DeviceBuffer dx, int n) =>
        Activations.GeluBackward(Cpu(x).Data.AsSpan(0, n), Cpu(dout).Data.AsSpan(0, n), Cpu(dx).Data.AsSpan(0, n));

    public void RmsNormBackward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer dw, int rows, int dim, float eps)
    {
        float[] xs = Cpu(x).Data, w = Cpu(weight).Data, dys = Cpu(dy).Data, dxs = Cpu(dx).Data, dws = Cpu(dw).Data;
        for (int r = 0; r < rows; r++)   // in row order: every row adds into dw
            Norms.RmsNormBackward(xs.AsSpan(r * dim, dim), w.AsSpan(0, dim), dys.AsSpan(r * dim, dim), dxs.AsSpan(r * dim, dim), dws.AsSpan(0, dim), eps);
    }

    public void RopeBackward(DeviceBuffer dx, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout)
    {
        float[] data = Cpu(dx).Data;
        int width = heads * headDim;
        for (int t = 0; t < positions.Length; t++)
            RotaryEmbedding.Backward(data.AsSpan(t * width, width), positions[t], heads, headDim, rotaryDim, theta, layout);
    }

    public void LayerNormBackward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer dw, DeviceBuffer db, int rows, int dim, float eps)
    {
        float[] xs = Cpu(x).Data, w = Cpu(weight).Data, dys = Cpu(dy).Data, dxs = Cpu(dx).Data, dws = Cpu(dw).Data, dbs = Cpu(db).Data;
        for (int r = 0; r < rows; r++)   // in row order: every row adds into dw and db
            Norms.LayerNormBackward(xs.AsSpan(r * dim, dim), w.AsSpan(0, dim), dys.AsSpan(r * dim, dim), dxs.AsSpan(r * dim, dim), dws.AsSpan(0, dim), dbs.AsSpan(0, dim), eps);
    }

    public void CrossEntropy(DeviceBuffer logits, ReadOnlySpan<int> targets, DeviceBuffer dlogits, DeviceBuffer losses, int vocab, int counted)
    {
        float[] l = Cpu(logits).Data, d = Cpu(dlogits).Data, loss = Cpu(losses).Data;
        for (int t = 0; t < targets.Length; t++)
            loss[t] = (float)Cluster.Compute.Cpu.CrossEntropy.SumOverRows(l.AsSpan(t * vocab, vocab), targets.Slice(t, 1), d.AsSpan(t * vocab, vocab), vocab, counted);
    }

    public void CausalAttention(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer probs, ReadOnlySpan<int> documents,
        int tokens, int heads, int kvHeads, int headDim) =>
        Cluster.Compute.Cpu.CausalAttention.Forward(Cpu(q).Data.AsSpan(0, tokens * heads * headDim), Cpu(k).Data.AsSpan(0, tokens * kvHeads * headDim),
            Cpu(v).Data.AsSpan(0, tokens * kvHeads * headDim), Cpu(output).Data.AsSpan(0, tokens * heads * headDim),
            Cpu(probs).Data.AsSpan(0, heads * tokens * tokens), documents, tokens, heads, kvHeads, headDim);

    public void CausalAttentionBackward(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer probs, DeviceBuffer dout,
        DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, int tokens, int heads, int kvHeads, int headDim) =>
        Cluster.Compute.Cpu.CausalAttention.Backward(Cpu(q).Data.AsSpan(0, tokens * heads * headDim), Cpu(k).Data.AsSpan(0, tokens * kvHeads * headDim),
            Cpu(v).Data.AsSpan(0, tokens * kvHeads * headDim), Cpu(probs).Data.AsSpan(0, heads * tokens * tokens), Cpu(dout).Data.AsSpan(0, tokens * heads * headDim),
            Cpu(dq).Data.AsSpan(0, tokens * heads * headDim), Cpu(dk).Data.AsSpan(0, tokens * kvHeads * headDim), Cpu(dv).Data.AsSpan(0, tokens * kvHeads * headDim),
            tokens, heads, kvHeads, headDim);

    public void EmbeddingBackward(ReadOnlySpan<int> rows, DeviceBuffer dx, DeviceBuffer dtable, int dim)
    {
        float[] d = Cpu(dx).Data, table = Cpu(dtable).Data;
        for (int t = 0; t < rows.Length; t++)
            if (rows[t] >= 0) TensorPrimitives.Add(table.AsSpan(rows[t] * dim, dim), d.AsSpan(t * dim, dim), table.AsSpan(rows[t] * dim, dim));
    }

    public void AdamW(DeviceBuffer parameters, DeviceBuffer gradients, DeviceBuffer m, DeviceBuffer v, int n,
        int step, float learningRate, float beta1, float beta2, float eps, float weightDecay) =>
        Cluster.Compute.Cpu.AdamW.Update(Cpu(parameters).Data.AsSpan(0, n), Cpu(gradients).Data.AsSpan(0, n), Cpu(m).Data.AsSpan(0, n), Cpu(v).Data.AsSpan(0, n),
            step, learningRate, beta1, beta2, eps, weightDecay);

    public void RmsNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer y, int rows, int dim, float eps)
    {
        float[] xs = Cpu(x).Data, w = Cpu(weight).Data, ys = Cpu(y).Data;
        ForRows(rows, dim, r => Norms.RmsNorm(xs.AsSpan(r * dim, dim), w.AsSpan(0, dim), ys.AsSpan(r * dim, dim), eps));
    }

    public void LayerNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer bias, DeviceBuffer y, int rows, int dim, float eps)
    {
        float[] xs = Cpu(x).Data, w = Cpu(weight).Data, b = Cpu(bias).Data, ys = Cpu(y).Data;
        ForRows(rows, dim, r => Norms.LayerNorm(xs.AsSpan(r * dim, dim), w.AsSpan(0, dim), b.AsSpan(0, dim), ys.AsSpan(r * dim, dim), eps));
    }

    public void Rope(DeviceBuffer x, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout)
    {
        float[] data = Cpu(x).Data;
        int width = heads * headDim;
        for (int t = 0; t < positions.Length; t++)
            RotaryEmbedding.Apply(data.AsSpan(t * width, width), positions[t], heads, headDim, rotaryDim, theta, layout);
    }

    public void WriteKv(DeviceBuffer k, DeviceBuffer v, DeviceBuffer cacheK, DeviceBuffer cacheV, ReadOnlySpan<int> slots, int kvDim)
    {
        float[] ks = Cpu(k).Data, vs = Cpu(v).Data, ck = Cpu(cacheK).Data, cv = Cpu(cacheV).Data;
        int capacity = ck.Length / kvDim;
        for (int t = 0; t < slots.Length; t++)
        {
            CheckIndex(slots[t], capacity, "cache slot");
            ks.AsSpan(t * kvDim, kvDim).CopyTo(ck.AsSpan(slots[t] * kvDim, kvDim));
            vs.AsSpan(t * kvDim, kvDim).CopyTo(cv.AsSpan(slots[t] * kvDim, kvDim));
        }
    }

    public void PagedAttention(DeviceBuffer q, DeviceBuffer cacheK, DeviceBuffer cacheV, DeviceBuffer output, AttentionLayout layout)
    {
        float[] qs = Cpu(q).Data, ck = Cpu(cacheK).Data, cv = Cpu(cacheV).Data, o = Cpu(output).Data;
        // A token's cost grows with its position, so tokens are dealt out in the order 0, T−1, 1, T−2, ...:
        // every contiguous range of work items (one per worker) then gets an even share of cheap and dear ones.
        int tokens = layout.Tokens;
        _pool.For(tokens * layout.Heads, (start, end) =>
        {
            for (int item = start; item < end; item++)
            {
                int rank = item / layout.Heads;
                int token = rank % 2 == 0 ? rank / 2 : tokens - 1 - rank / 2;
                Attention.TokenHead(qs, ck, cv, o, layout, token, head: item % layout.Heads);
            }
        });
    }

    public void SwiGlu(DeviceBuffer gate, DeviceBuffer up, int n)
    {
        float[] g = Cpu(gate).Data, u = Cpu(up).Data;
        ForChunks(n, (s, e) => Activations.SwiGlu(g.AsSpan(s, e - s), u.AsSpan(s, e - s)));
    }

    public void Gelu(DeviceBuffer x, int n)
    {
        float[] data = Cpu(x).Data;
        ForChunks(n, (s, e) => Activations.Gelu(data.AsSpan(s, e - s)));
    }

    public void Add(DeviceBuffer x, DeviceBuffer y, int n)
    {
        float[] a = Cpu(x).Data, b = Cpu(y).Data;
        TensorPrimitives.Add(a.AsSpan(0, n), b.AsSpan(0, n), a.AsSpan(0, n));
    }

    public void GatherRows(DeviceBuffer x, ReadOnlySpan<int> rows, DeviceBuffer output, int dim)
    {
        float[] source = Cpu(x).Data, o = Cpu(output).Data;
        for (int r = 0; r < rows.Length; r++) source.AsSpan(rows[r] * dim, dim).CopyTo(o.AsSpan(r * dim, dim));
    }

    public void Dispose() => _pool.Dispose();

    // Row-wise ops go parallel only when there is enough work to pay for waking the workers.
    private void ForRows(int rows, int dim, Action<int> row)
    {
        if (rows == 1 || (long)rows * dim < 16384) { for (int r = 0; r < rows; r++) row(r); return; }
        _pool.For(rows, (s, e) => { for (int r = s; r < e; r++) row(r); });
    }

    private void ForChunks(int n, Action<int, int> chunk)
    {
        if (n < 32768) { chunk(0, n); return; }
        _pool.For((n + 4095) / 4096, (s, e) => chunk(s * 4096, Math.Min(n, e * 4096)));
    }

    private static CpuBuffer Cpu(DeviceBuffer buffer) =>
        buffer as CpuBuffer ?? throw new ArgumentException($"buffer belongs to another device ({buffer.GetType().Name})");

    private static void CheckLength(DeviceBuffer buffer, long needed, string name)
    {
        if (buffer.Length < needed) throw new ArgumentException($"{name} holds {buffer.Length} floats, the operation needs {needed}");
    }

    private static void CheckIndex(int index, int count, string what)
    {
        if ((uint)index >= (uint)count) throw new ArgumentOutOfRangeException(what, index, $"{what} {index} outside [0, {count})");
    }
}

public sealed class CpuBuffer : DeviceBuffer
{
    public CpuBuffer(int length) : base(length) => Data = GC.AllocateArray<float>(length, pinned: true);
    public float[] Data { get; }
    public override void Dispose() { }
}

/// <summary>A weight matrix packed for <see cref="Gemm"/> in 64-byte-aligned native memory.</summary>
public sealed unsafe class PackedMatrix : DeviceMatrix
{
    public PackedMatrix(ReadOnlySpan<float> weights, int rows, int cols) : base(rows, cols)
    {
        long length = Gemm.PackedLength(rows, cols);
        Pointer = (float*)NativeMemory.AlignedAlloc((nuint)(length * sizeof(float)), 64);
        GC.AddMemoryPressure(length * sizeof(float));
        Gemm.Pack(weights, rows, cols, Pointer);
        _bytes = length * sizeof(float);
    }

    private readonly long _bytes;
    public float* Pointer { get; private set; }
    public override long Bytes => _bytes;

    public override void Dispose()
    {
        if (Pointer == null) return;
        NativeMemory.AlignedFree(Pointer);
        Pointer = null;
        GC.RemoveMemoryPressure(_bytes);
        GC.SuppressFinalize(this);
    }

    ~PackedMatrix() => Dispose();
}
