// The CPU backend: buffers are float arrays (pinned when the device allocates them; Wrap lends a host array without a
// copy), weights are packed for Gemm (serving's once, training's by Linear until ForgetPrepared), and every operation
// is spread over the device's WorkerPool (the cores this device was given).
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using static Cluster.Compute.DeviceArguments;

namespace Cluster.Compute.Cpu;

public sealed unsafe class CpuDevice : IDevice
{
    private readonly WorkerPool _pool;
    private readonly Linear _linear;
    private float[] _gemmScratch = [];
    private byte[] _quantizedScratch = [];   // a quantized product's inputs as Q8_0

    /// <param name="bfloat16Linear">Linear's products round their inputs to bfloat16 (fp32 accumulation): bf16 training numerics.</param>
    public CpuDevice(int threads, bool bfloat16Linear = false)
    {
        _pool = new WorkerPool(threads);
        _linear = new Linear(_pool, bfloat16Linear);
        Info = Describe(threads);
    }

    /// <summary>A buffer over <paramref name="data"/> itself: the device's ops read and write the host array (no copy).</summary>
    public static DeviceBuffer Wrap(float[] data) => new CpuBuffer(data);

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

    public DeviceMatrix UploadMatrix(ReadOnlySpan<float> weights, int rows, int cols, WeightFormat format = WeightFormat.F32) =>
        format == WeightFormat.F32 ? new PackedMatrix(weights, rows, cols) : new QuantizedMatrix(weights, rows, cols, format);

    public void MatMul(DeviceBuffer x, DeviceMatrix w, DeviceBuffer y, int m)
    {
        if (w is QuantizedMatrix quantized)
        {
            MatMulQuantized(x, quantized, y, m);
            return;
        }
        var packed = (PackedMatrix)w;
        CheckLength(x, (long)m * packed.Cols, nameof(x));
        CheckLength(y, (long)m * packed.Rows, nameof(y));
        long scratch = Gemm.ScratchLength(m, packed.Cols);
        if (_gemmScratch.Length < scratch) _gemmScratch = GC.AllocateUninitializedArray<float>(checked((int)scratch), pinned: true);
        fixed (float* px = Cpu(x).Data, py = Cpu(y).Data, ps = _gemmScratch)
            Gemm.Multiply(_pool, px, m, packed.Cols, packed.Pointer, packed.Rows, py, ps);
    }

    private void MatMulQuantized(DeviceBuffer x, QuantizedMatrix w, DeviceBuffer y, int m)
    {
        CheckLength(x, (long)m * w.Cols, nameof(x));
        CheckLength(y, (long)m * w.Rows, nameof(y));
        long scratch = QuantizedGemm.ScratchBytes(m, w.Cols);
        if (_quantizedScratch.Length < scratch) _quantizedScratch = GC.AllocateUninitializedArray<byte>(checked((int)scratch), pinned: true);
        fixed (float* px = Cpu(x).Data, py = Cpu(y).Data)
        fixed (byte* ps = _quantizedScratch)
            QuantizedGemm.Multiply(_pool, px, m, w, py, ps);
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
            if (tokens[i] == -1)
            {
                o.AsSpan(i * dim, dim).Clear();
                continue;
            }
            CheckIndex(tokens[i], rows, "token");
            t.AsSpan(tokens[i] * dim, dim).CopyTo(o.AsSpan(i * dim, dim));
        }
    }

    /// <summary>Row r of the packed matrix: element k of it sits at k·NR + r % NR of panel r / NR.</summary>
    public void Embedding(DeviceMatrix table, ReadOnlySpan<int> tokens, DeviceBuffer output)
    {
        int k = table.Cols;
        CheckLength(output, (long)tokens.Length * k, nameof(output));
        float[] o = Cpu(output).Data;
        for (int i = 0; i < tokens.Length; i++)
        {
            var row = o.AsSpan(i * k, k);
            if (tokens[i] == -1)
            {
                row.Clear();
                continue;
            }
            CheckIndex(tokens[i], table.Rows, "token");
            if (table is QuantizedMatrix quantized)
            {
                quantized.DequantizeRow(tokens[i], row);
                continue;
            }
            var packed = (PackedMatrix)table;
            float* panel = packed.Pointer + (long)(tokens[i] / Gemm.NR) * k * Gemm.NR + tokens[i] % Gemm.NR;
            for (int kk = 0; kk < k; kk++) row[kk] = panel[(long)kk * Gemm.NR];
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
        CheckLength(logits, (long)targets.Length * vocab, nameof(logits));
        CheckLength(dlogits, (long)targets.Length * vocab, nameof(dlogits));
        CheckLength(losses, targets.Length, nameof(losses));
        int[] rows = targets.ToArray();
        ForRows(rows.Length, vocab, t =>
            loss[t] = (float)Cluster.Compute.Cpu.CrossEntropy.SumOverRows(l.AsSpan(t * vocab, vocab), rows.AsSpan(t, 1), d.AsSpan(t * vocab, vocab), vocab, counted));
    }

    /// <summary>The sequences in parallel, each on one worker (its own rows of output and its own weights).</summary>
    public void CausalAttention(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer probs,
        ReadOnlySpan<int> starts, ReadOnlySpan<int> documents, int heads, int kvHeads, int headDim)
    {
        var offsets = TrainingAttention.CheckForward(q, k, v, output, probs, starts, documents, heads, kvHeads, headDim);
        int[] bounds = starts.ToArray(), ids = documents.ToArray();   // for the workers
        float[] qs = Cpu(q).Data, ks = Cpu(k).Data, vs = Cpu(v).Data, o = Cpu(output).Data, p = Cpu(probs).Data;
        int qw = heads * headDim, kw = kvHeads * headDim;
        _pool.For(bounds.Length - 1, (s0, s1) =>
        {
            for (int s = s0; s < s1; s++)
            {
                int start = bounds[s], n = bounds[s + 1] - start;
                Cluster.Compute.Cpu.CausalAttention.Forward(qs.AsSpan(start * qw, n * qw), ks.AsSpan(start * kw, n * kw), vs.AsSpan(start * kw, n * kw),
                    o.AsSpan(start * qw, n * qw), p.AsSpan(offsets[s], offsets[s + 1] - offsets[s]), ids.Length == 0 ? [] : ids.AsSpan(start, n),
                    n, heads, kvHeads, headDim);
            }
        });
    }

    public void CausalAttentionBackward(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer probs, DeviceBuffer dout,
        DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, ReadOnlySpan<int> starts, int heads, int kvHeads, int headDim)
    {
        var offsets = TrainingAttention.CheckBackward(q, k, v, probs, dout, dq, dk, dv, starts, heads, kvHeads, headDim);
        int[] bounds = starts.ToArray();   // for the workers
        int qw = heads * headDim, kw = kvHeads * headDim;
        float[] qs = Cpu(q).Data, ks = Cpu(k).Data, vs = Cpu(v).Data, p = Cpu(probs).Data, o = Cpu(dout).Data, dqs = Cpu(dq).Data, dks = Cpu(dk).Data, dvs = Cpu(dv).Data;
        _pool.For(bounds.Length - 1, (s0, s1) =>
        {
            for (int s = s0; s < s1; s++)
            {
                int start = bounds[s], n = bounds[s + 1] - start;
                Cluster.Compute.Cpu.CausalAttention.Backward(qs.AsSpan(start * qw, n * qw), ks.AsSpan(start * kw, n * kw), vs.AsSpan(start * kw, n * kw),
                    p.AsSpan(offsets[s], offsets[s + 1] - offsets[s]), o.AsSpan(start * qw, n * qw),
                    dqs.AsSpan(start * qw, n * qw), dks.AsSpan(start * kw, n * kw), dvs.AsSpan(start * kw, n * kw), n, heads, kvHeads, headDim);
            }
        });
    }

    public void Linear(DeviceBuffer x, DeviceBuffer w, DeviceBuffer y, int m, int n, int k, int block = 0)
    {
        DeviceArguments.CheckLinear(x, w, y, m, n, k, block);
        _linear.Forward(Cpu(x).Data.AsSpan(0, m * k), Cpu(w).Data, block, [], Cpu(y).Data.AsSpan(0, m * n), m, n, k);
    }

    public void LinearBackward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer? dw, DeviceBuffer? db, int m, int n, int k, int block = 0)
    {
        DeviceArguments.CheckLinearBackward(x, w, dy, dx, dw, db, m, n, k, block);
        _linear.Backward(Cpu(x).Data.AsSpan(0, m * k), Cpu(w).Data, block, Cpu(dy).Data.AsSpan(0, m * n), Cpu(dx).Data.AsSpan(0, m * k),
            dw is null ? [] : Cpu(dw).Data.AsSpan(block * n * k, n * k), dw is null || db is null ? [] : Cpu(db).Data.AsSpan(0, n), m, n, k);
    }

    public void ForgetPrepared(DeviceBuffer? w = null)
    {
        if (w is null) _linear.ForgetPacked();
        else _linear.Forget(Cpu(w).Data);
    }

    public void Copy(DeviceBuffer source, DeviceBuffer destination, int n) => Cpu(source).Data.AsSpan(0, n).CopyTo(Cpu(destination).Data.AsSpan(0, n));

    public void Zero(DeviceBuffer x, int n) => Cpu(x).Data.AsSpan(0, n).Clear();

    public void Scale(DeviceBuffer x, float factor, int n)
    {
        var data = Cpu(x).Data.AsSpan(0, n);
        TensorPrimitives.Multiply(data, factor, data);
    }

    public void Multiply(DeviceBuffer x, DeviceBuffer y, int n)
    {
        var data = Cpu(x).Data.AsSpan(0, n);
        TensorPrimitives.Multiply(data, Cpu(y).Data.AsSpan(0, n), data);
    }

    public void AddScaled(DeviceBuffer y, DeviceBuffer x, float factor, int n)
    {
        var data = Cpu(y).Data.AsSpan(0, n);
        TensorPrimitives.MultiplyAdd(Cpu(x).Data.AsSpan(0, n), factor, data, data);
    }

    public void EmbeddingBackward(ReadOnlySpan<int> rows, DeviceBuffer dx, DeviceBuffer dtable, int dim)
    {
        float[] d = Cpu(dx).Data, table = Cpu(dtable).Data;
        for (int t = 0; t < rows.Length; t++)
            if (rows[t] >= 0) TensorPrimitives.Add(table.AsSpan(rows[t] * dim, dim), d.AsSpan(t * dim, dim), table.AsSpan(rows[t] * dim, dim));
    }

    public void AdamW(DeviceBuffer parameters, DeviceBuffer gradients, DeviceBuffer m, DeviceBuffer v, int n,
        int step, float learningRate, float beta1, float beta2, float eps, float weightDecay) =>
        Cluster.Compute.Cpu.AdamW.Update(Pool, Cpu(parameters).Data.AsSpan(0, n), Cpu(gradients).Data.AsSpan(0, n), Cpu(m).Data.AsSpan(0, n), Cpu(v).Data.AsSpan(0, n),
            step, learningRate, beta1, beta2, eps, weightDecay);

    public void SumOfSquares(DeviceBuffer x, int n, DeviceBuffer sums, int at)
    {
        DeviceArguments.CheckLength(x, n, nameof(x));
        DeviceArguments.CheckLength(sums, (long)at + 1, nameof(sums));
        Cpu(sums).Data[at] = TensorPrimitives.SumOfSquares(Cpu(x).Data.AsSpan(0, n));
    }

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

    public DeviceBuffer AllocateKv(int slots, int kvDim, int headDim, KvFormat format) =>
        format == KvFormat.F32 ? new CpuBuffer(checked(slots * kvDim)) : new CpuKvBuffer(slots, kvDim, headDim, format);

    public void WriteKv(DeviceBuffer k, DeviceBuffer v, DeviceBuffer cacheK, DeviceBuffer cacheV, ReadOnlySpan<int> slots, int kvDim)
    {
        if (cacheK is CpuKvBuffer packedK && cacheV is CpuKvBuffer packedV)
        {
            float[] keys = Cpu(k).Data, values = Cpu(v).Data;
            for (int t = 0; t < slots.Length; t++)
            {
                packedK.Write(slots[t], keys.AsSpan(t * kvDim, kvDim));
                packedV.Write(slots[t], values.AsSpan(t * kvDim, kvDim));
            }
            return;
        }
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
        float[] qs = Cpu(q).Data, o = Cpu(output).Data;
        int kvDim = layout.KvHeads * layout.HeadDim;
        KvRows ck = new(cacheK, kvDim), cv = new(cacheV, kvDim);
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

    public void ScaleRows(DeviceBuffer x, DeviceBuffer scales, int rows, int dim)
    {
        CheckRowsOf(rows, dim, scales, x);
        float[] data = Cpu(x).Data, s = Cpu(scales).Data;
        for (int r = 0; r < rows; r++) TensorPrimitives.Multiply(data.AsSpan(r * dim, dim), s[r], data.AsSpan(r * dim, dim));
    }

    public void RowDots(DeviceBuffer a, DeviceBuffer b, DeviceBuffer dots, int rows, int dim)
    {
        CheckRowsOf(rows, dim, dots, a, b);
        float[] x = Cpu(a).Data, y = Cpu(b).Data, d = Cpu(dots).Data;
        for (int r = 0; r < rows; r++) d[r] = TensorPrimitives.Dot(x.AsSpan(r * dim, dim), y.AsSpan(r * dim, dim));
    }

    public void Dispose()
    {
        _linear.Dispose();
        _pool.Dispose();
    }

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


    private static void CheckIndex(int index, int count, string what)
    {
        if ((uint)index >= (uint)count) throw new ArgumentOutOfRangeException(what, index, $"{what} {index} outside [0, {count})");
    }
}

public sealed class CpuBuffer : DeviceBuffer
{
    public CpuBuffer(int length) : base(length) => Data = GC.AllocateArray<float>(length, pinned: true);
    /// <summary>A buffer over a host array (CpuDevice.Wrap).</summary>
    internal CpuBuffer(float[] data) : base(data.Length) => Data = data;
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
