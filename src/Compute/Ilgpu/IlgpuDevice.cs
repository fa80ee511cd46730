// The ILGPU backend: the same operations as CpuDevice, as ILGPU kernels on CUDA, OpenCL or ILGPU's CPU
// accelerator (which runs every GPU thread as an OS thread: for tests at small sizes only). Every call is
// marshalled, synchronously, to the device's one dispatch thread (ILGPU binds the CUDA context to a thread);
// per-call index arrays go through small reusable device buffers.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using static Cluster.Compute.DeviceArguments;
using static Cluster.Compute.Ilgpu.Checks;

namespace Cluster.Compute.Ilgpu;

public enum IlgpuTarget { Cuda, OpenCL, Cpu }

/// <summary>Copies of float data between the host and a device since it opened (a call's small index arrays are not counted).</summary>
public sealed record TransferCounts(long ToDevice, long ToDeviceBytes, long ToHost, long ToHostBytes);

public sealed unsafe class IlgpuDevice : IDevice
{
    private const int GroupSize = GroupReduce.GroupSize;

    private readonly DeviceThread _thread;
    private readonly Context _context;
    private readonly Accelerator _accelerator;
    private readonly KernelSet _kernels;
    private readonly IndexBuffers _indices;
    private readonly HashSet<MemoryBuffer> _live = [];   // touched only on the dispatch thread
    private MemoryBuffer1D<sbyte, Stride1D.Dense>? _quantizedInputs;   // a quantized product's inputs as Q8_0 (dispatch thread)
    private MemoryBuffer1D<float, Stride1D.Dense>? _quantizedScales;
    private readonly Dictionary<(float Theta, int RotaryDim), MemoryBuffer1D<float, Stride1D.Dense>> _ropeFrequencies = [];   // likewise
    private MemoryBuffer1D<float, Stride1D.Dense>? _sumPartials;   // SumOfSquares' first pass; likewise
    private volatile bool _disposed;
    private long _toDevice, _toDeviceBytes, _toHost, _toHostBytes;

    /// <summary>The host↔device copies so far: what a training step moves is checked against what it must (TrainingModeTests).</summary>
    public TransferCounts Transfers => new(Interlocked.Read(ref _toDevice), Interlocked.Read(ref _toDeviceBytes), Interlocked.Read(ref _toHost), Interlocked.Read(ref _toHostBytes));

    private void CountToDevice(int floats)
    {
        Interlocked.Increment(ref _toDevice);
        Interlocked.Add(ref _toDeviceBytes, (long)floats * sizeof(float));
    }

    private IlgpuDevice(IlgpuTarget target, int index)
    {
        _thread = new DeviceThread($"ILGPU {target}:{index}");
        try { (_context, _accelerator, _kernels, _indices) = _thread.Run(() => Open(target, index)); }
        catch { _thread.Dispose(); throw; }
        var kind = target switch { IlgpuTarget.Cuda => DeviceKind.Cuda, IlgpuTarget.OpenCL => DeviceKind.OpenCL, _ => DeviceKind.IlgpuCpu };
        Info = new DeviceInfo(kind, _accelerator.Name, (int)Math.Min(int.MaxValue, _accelerator.MaxNumThreads), _accelerator.MemorySize);
    }

    /// <summary>
    /// Opens the <paramref name="index"/>-th device of the target kind (CUDA and OpenCL number their devices; every
    /// index of the CPU target is a new accelerator on the host); throws InvalidOperationException when there is none.
    /// </summary>
    public static IlgpuDevice Create(IlgpuTarget target, int index = 0) => new(target, index);

    /// <summary>The targets that have at least one device on this machine (Cpu always does).</summary>
    public static IReadOnlyList<IlgpuTarget> Available()
    {
        using var context = CreateContext();
        return [.. Enum.GetValues<IlgpuTarget>().Where(t => context.Devices.Any(d => d.AcceleratorType == TypeOf(t)))];
    }

    public DeviceInfo Info { get; }

    public DeviceBuffer Allocate(int length) => _thread.Run(() =>
    {
        var memory = Track(_accelerator.Allocate1D<float>(length));
        memory.View.MemSetToZero();
        return new IlgpuBuffer(this, memory);
    });

    public DeviceBuffer Upload(ReadOnlySpan<float> data)
    {
        CountToDevice(data.Length);
        fixed (float* p = data)
        {
            nint address = (nint)p;
            int length = data.Length;
            return _thread.Run(() => new IlgpuBuffer(this, UploadFloats(address, length)));
        }
    }

    public void Download(DeviceBuffer source, Span<float> destination)
    {
        var buffer = Own(source);
        CheckLength(source, destination.Length, nameof(source));
        Interlocked.Increment(ref _toHost);
        Interlocked.Add(ref _toHostBytes, (long)destination.Length * sizeof(float));
        fixed (float* p = destination)
        {
            nint address = (nint)p;
            int length = destination.Length;
            _thread.Run(() =>
            {
                if (length > 0) buffer.Memory.View.SubView(0, length).CopyToCPU(ref *(float*)address, length);
                _accelerator.Synchronize();
            });
        }
    }

    public void Write(DeviceBuffer destination, ReadOnlySpan<float> source)
    {
        var buffer = Own(destination);
        CheckLength(destination, source.Length, nameof(destination));
        CountToDevice(source.Length);
        fixed (float* p = source)
        {
            nint address = (nint)p;
            int length = source.Length;
            _thread.Run(() =>
            {
                if (length > 0) buffer.Memory.View.SubView(0, length).CopyFromCPU(ref *(float*)address, length);
            });
        }
    }

    public DeviceMatrix UploadMatrix(ReadOnlySpan<float> weights, int rows, int cols, WeightFormat format = WeightFormat.F32)
    {
        if (format != WeightFormat.F32) return UploadQuantized(weights, rows, cols, format);
        if (weights.Length != (long)rows * cols) throw new ArgumentException($"weights hold {weights.Length} floats, a ({rows}, {cols}) matrix needs {(long)rows * cols}");
        CountToDevice(weights.Length);
        fixed (float* p = weights)
        {
            nint address = (nint)p;
            return _thread.Run(() => new IlgpuMatrix(this, UploadFloats(address, rows * cols), rows, cols));
        }
    }

    /// <summary>Quantized on the host exactly as the CPU device quantizes (QuantizedMatrix), then its blocks and scales uploaded.</summary>
    private DeviceMatrix UploadQuantized(ReadOnlySpan<float> weights, int rows, int cols, WeightFormat format)
    {
        using var host = new Cpu.QuantizedMatrix(weights, rows, cols, format);
        long valueBytes = host.Bytes - (long)rows * host.BlocksPerRow * sizeof(float);
        nint values = (nint)host.Quants, scales = (nint)host.Scales;
        int blocks = rows * host.BlocksPerRow;
        CountToDevice((int)(host.Bytes / sizeof(float)));
        return _thread.Run(() =>
        {
            var valueMemory = _accelerator.Allocate1D<byte>(valueBytes);
            _live.Add(valueMemory);
            valueMemory.View.CopyFromCPU(ref *(byte*)values, valueBytes);
            var scaleMemory = Track(_accelerator.Allocate1D<float>(blocks));
            scaleMemory.View.CopyFromCPU(ref *(float*)scales, blocks);
            return new IlgpuQuantizedMatrix(this, format, valueMemory, scaleMemory, rows, cols);
        });
    }

    public void MatMul(DeviceBuffer x, DeviceMatrix w, DeviceBuffer y, int m)
    {
        if (w is IlgpuQuantizedMatrix quantized && quantized.Owner == this)
        {
            MatMulQuantized(x, quantized, y, m);
            return;
        }
        var matrix = w is IlgpuMatrix own && own.Owner == this ? own : throw new ArgumentException($"matrix belongs to another device ({w.GetType().Name})");
        int n = matrix.Rows, k = matrix.Cols;
        CheckLength(x, (long)m * k, nameof(x));
        CheckLength(y, (long)m * n, nameof(y));
        Multiply(View(x), matrix.View, View(y), m, n, k);
    }

    /// <summary>y (m, n) = x (m, k) · Wᵀ for block-format W: x quantized to Q8_0 in scratch, then one thread per output.</summary>
    private void MatMulQuantized(DeviceBuffer x, IlgpuQuantizedMatrix w, DeviceBuffer y, int m)
    {
        int n = w.Rows, k = w.Cols, blocks = m * (k / 32);
        CheckLength(x, (long)m * k, nameof(x));
        CheckLength(y, (long)m * n, nameof(y));
        if (m == 0 || n == 0) return;
        _thread.Run(() =>
        {
            if (_quantizedInputs is null || _quantizedInputs.Length < (long)m * k)
            {
                _quantizedInputs?.Dispose();
                _quantizedScales?.Dispose();
                _quantizedInputs = _accelerator.Allocate1D<sbyte>((long)m * k);
                _quantizedScales = _accelerator.Allocate1D<float>(blocks);
            }
            else if (_quantizedScales!.Length < blocks)
            {
                _quantizedScales.Dispose();
                _quantizedScales = _accelerator.Allocate1D<float>(blocks);
            }
            var xq = _quantizedInputs.View.SubView(0, (long)m * k);
            var xd = _quantizedScales.View.SubView(0, blocks);
            _kernels.QuantizeInputs(blocks, View(x), xq, xd);
            _kernels.QuantizedProduct(m * n, xq, xd, w.Values.View, w.Scales.View, View(y), n, k, w.Format == WeightFormat.Q4_0 ? 1 : 0);
        });
    }

    /// <summary>y (m, n) = x (m, k) · Bᵀ, B (n, k) row-major: the GEMV kernel for a few rows, else the tiled GEMM.</summary>
    private void Multiply(ArrayView<float> x, ArrayView<float> b, ArrayView<float> y, int m, int n, int k)
    {
        if (m == 0 || n == 0) return;
        if (m <= GemvKernel.MaxRows)
        {
            _thread.Run(() => _kernels.Gemv(new KernelConfig(n, GroupSize), x, b, y, m, n, k));
            return;
        }
        int groups = (m + GemmKernel.TileSize - 1) / GemmKernel.TileSize * ((n + GemmKernel.TileSize - 1) / GemmKernel.TileSize);
        _thread.Run(() => _kernels.Gemm(new KernelConfig(groups, GroupSize), x, b, y, m, n, k));
    }

    /// <summary>The weight is used as it lies (row-major is what the GEMM reads): nothing is prepared.</summary>
    public void Linear(DeviceBuffer x, DeviceBuffer w, DeviceBuffer y, int m, int n, int k, int block = 0)
    {
        DeviceArguments.CheckLinear(x, w, y, m, n, k, block);
        Multiply(View(x), Block(w, block, n * k), View(y), m, n, k);
    }

    /// <summary>dx += dy · (Wᵀ)ᵀ and dW += dyᵀ · (xᵀ)ᵀ as GEMMs over transposed copies; db by column sums.</summary>
    public void LinearBackward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer? dw, DeviceBuffer? db, int m, int n, int k, int block = 0)
    {
        DeviceArguments.CheckLinearBackward(x, w, dy, dx, dw, db, m, n, k, block);
        if (m == 0 || n == 0 || k == 0) return;
        using (DeviceBuffer wt = Allocate(n * k), product = Allocate(m * k))
        {
            Elementwise(n * k, count => _kernels.Transpose(count, Block(w, block, n * k), View(wt), n, k));   // Wᵀ (K, N)
            Multiply(View(dy), View(wt), View(product), m, k, n);                                             // (M, K) = dy · W
            Add(dx, product, m * k);
        }
        if (dw is null) return;
        using (DeviceBuffer dyt = Allocate(m * n), xt = Allocate(m * k), product = Allocate(n * k))
        {
            Elementwise(m * n, count => _kernels.Transpose(count, View(dy), View(dyt), m, n));                // dyᵀ (N, M)
            Elementwise(m * k, count => _kernels.Transpose(count, View(x), View(xt), m, k));                  // xᵀ (K, M)
            Multiply(View(dyt), View(xt), View(product), n, k, m);                                            // (N, K) = dyᵀ · x
            Elementwise(n * k, count => _kernels.Add(count, Block(dw, block, n * k), View(product)));
        }
        if (db is not null) Elementwise(n, count => _kernels.ColumnSums(count, View(dy), View(db), m, n));
    }

    /// <summary>The <paramref name="block"/>-th run of <paramref name="length"/> floats of a buffer (a matrix of a stack).</summary>
    private ArrayView<float> Block(DeviceBuffer buffer, int block, int length) => View(buffer).SubView((long)block * length, length);

    public void ForgetPrepared(DeviceBuffer? w = null) { }

    public void Copy(DeviceBuffer source, DeviceBuffer destination, int n)
    {
        CheckLength(source, n, nameof(source));
        CheckLength(destination, n, nameof(destination));
        if (n > 0) _thread.Run(() => View(source).SubView(0, n).CopyTo(View(destination).SubView(0, n)));
    }

    public void Zero(DeviceBuffer x, int n)
    {
        CheckLength(x, n, nameof(x));
        if (n > 0) _thread.Run(() => View(x).SubView(0, n).MemSetToZero());
    }

    public void Scale(DeviceBuffer x, float factor, int n)
    {
        CheckLength(x, n, nameof(x));
        Elementwise(n, count => _kernels.Scale(count, View(x), factor));
    }

    public void Multiply(DeviceBuffer x, DeviceBuffer y, int n)
    {
        CheckLength(x, n, nameof(x));
        CheckLength(y, n, nameof(y));
        Elementwise(n, count => _kernels.Multiply(count, View(x), View(y)));
    }

    public void AddScaled(DeviceBuffer y, DeviceBuffer x, float factor, int n)
    {
        CheckLength(y, n, nameof(y));
        CheckLength(x, n, nameof(x));
        Elementwise(n, count => _kernels.AddScaled(count, View(y), View(x), factor));
    }

    public void AddBias(DeviceBuffer x, DeviceBuffer bias, int rows, int dim)
    {
        CheckLength(x, (long)rows * dim, nameof(x));
        CheckLength(bias, dim, nameof(bias));
        Elementwise(rows * dim, n => _kernels.AddBias(n, View(x), View(bias), dim));
    }

    public void Embedding(DeviceBuffer table, ReadOnlySpan<int> tokens, DeviceBuffer output, int dim)
    {
        foreach (int token in tokens)
            if (token != -1) CheckIndices([token], table.Length / dim, "token");
        CheckLength(output, (long)tokens.Length * dim, nameof(output));
        WithIndices(tokens, indices => Elementwise(indices.IntLength * dim, n => _kernels.GatherRows(n, View(table), indices, View(output), dim, 0)));
    }

    /// <summary>The matrix is W (rows, cols) row-major on the device: the same row gather as a buffer's.</summary>
    public void Embedding(DeviceMatrix table, ReadOnlySpan<int> tokens, DeviceBuffer output)
    {
        if (table is IlgpuQuantizedMatrix quantized && quantized.Owner == this)
        {
            foreach (int token in tokens)
                if (token != -1) CheckIndices([token], quantized.Rows, "token");
            CheckLength(output, (long)tokens.Length * quantized.Cols, nameof(output));
            WithIndices(tokens, indices => Elementwise(indices.IntLength * quantized.Cols, n =>
                _kernels.QuantizedEmbedding(n, indices, quantized.Values.View, quantized.Scales.View, View(output), quantized.Cols, quantized.Format == WeightFormat.Q4_0 ? 1 : 0)));
            return;
        }
        var matrix = table is IlgpuMatrix own && own.Owner == this ? own : throw new ArgumentException($"matrix belongs to another device ({table.GetType().Name})");
        int dim = matrix.Cols;
        foreach (int token in tokens)
            if (token != -1) CheckIndices([token], matrix.Rows, "token");
        CheckLength(output, (long)tokens.Length * dim, nameof(output));
        WithIndices(tokens, indices => Elementwise(indices.IntLength * dim, n => _kernels.GatherRows(n, matrix.View, indices, View(output), dim, 0)));
    }

    public void AddEmbedding(DeviceBuffer x, DeviceBuffer table, ReadOnlySpan<int> indices, int dim)
    {
        CheckIndices(indices, table.Length / dim, "position");
        CheckLength(x, (long)indices.Length * dim, nameof(x));
        WithIndices(indices, rows => Elementwise(rows.IntLength * dim, n => _kernels.GatherRows(n, View(table), rows, View(x), dim, 1)));
    }

    public void RmsNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer y, int rows, int dim, float eps)
    {
        CheckRows(rows, dim, x, y, weight);
        if (rows > 0) _thread.Run(() => _kernels.RmsNorm(new KernelConfig(rows, GroupSize), View(x), View(weight), View(y), dim, eps));
    }

    public void LayerNorm(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer bias, DeviceBuffer y, int rows, int dim, float eps)
    {
        CheckRows(rows, dim, x, y, weight);
        CheckLength(bias, dim, nameof(bias));
        if (rows > 0) _thread.Run(() => _kernels.LayerNorm(new KernelConfig(rows, GroupSize), View(x), View(weight), View(bias), View(y), dim, eps));
    }

    public void Rope(DeviceBuffer x, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout) =>
        Rotate(x, positions, heads, headDim, rotaryDim, theta, layout, 1f);

    public void RopeBackward(DeviceBuffer dx, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout) =>
        Rotate(dx, positions, heads, headDim, rotaryDim, theta, layout, -1f);   // the transpose of a rotation turns the other way

    private void Rotate(DeviceBuffer x, ReadOnlySpan<int> positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout, float direction)
    {
        if (rotaryDim % 2 != 0 || rotaryDim > headDim) throw new ArgumentException($"rotaryDim {rotaryDim} must be even and at most headDim {headDim}");
        CheckLength(x, (long)positions.Length * heads * headDim, nameof(x));
        int interleaved = layout == RopeLayout.Interleaved ? 1 : 0, pairs = rotaryDim / 2;
        WithIndices(positions, pos => Elementwise(pos.IntLength * heads * pairs,
            n => _kernels.Rope(n, View(x), pos, RopeFrequencies(direction * theta, rotaryDim), heads, headDim, pairs, interleaved)));
    }

    public void LayerNormBackward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer dw, DeviceBuffer db, int rows, int dim, float eps)
    {
        CheckRows(rows, dim, x, dy, weight);
        CheckRows(rows, dim, x, dx, dw);
        CheckLength(db, dim, nameof(db));
        if (rows == 0) return;
        using var stats = Allocate(2 * rows);
        _thread.Run(() =>
        {
            _kernels.LayerNormBackwardRows(rows, View(x), View(weight), View(dy), View(dx), View(stats), dim, eps);
            _kernels.LayerNormBackwardWeight(dim, View(x), View(dy), View(stats), View(dw), View(db), rows, dim);
        });
    }

    public void CrossEntropy(DeviceBuffer logits, ReadOnlySpan<int> targets, DeviceBuffer dlogits, DeviceBuffer losses, int vocab, int counted)
    {
        CheckLength(logits, (long)targets.Length * vocab, nameof(logits));
        CheckLength(dlogits, (long)targets.Length * vocab, nameof(dlogits));
        CheckLength(losses, targets.Length, nameof(losses));
        WithIndices(targets, t => Elementwise(t.IntLength, n => _kernels.CrossEntropy(n, View(logits), t, View(dlogits), View(losses), vocab, counted)));
    }

    public DeviceBuffer AllocateKv(int slots, int kvDim, int headDim, KvFormat format) => format == KvFormat.F32
        ? Allocate(checked(slots * kvDim))
        : throw new NotSupportedException($"a {format.Name()} KV cache is kept by the CPU device's kernels only; serve this model with an f32 KV cache on {Info.Name}");

    public void WriteKv(DeviceBuffer k, DeviceBuffer v, DeviceBuffer cacheK, DeviceBuffer cacheV, ReadOnlySpan<int> slots, int kvDim)
    {
        CheckIndices(slots, Math.Min(cacheK.Length, cacheV.Length) / kvDim, "cache slot");
        CheckLength(k, (long)slots.Length * kvDim, nameof(k));
        CheckLength(v, (long)slots.Length * kvDim, nameof(v));
        WithIndices(slots, s => Elementwise(s.IntLength * kvDim, n => _kernels.WriteKv(n, View(k), View(v), View(cacheK), View(cacheV), s, kvDim)));
    }

    public void PagedAttention(DeviceBuffer q, DeviceBuffer cacheK, DeviceBuffer cacheV, DeviceBuffer output, AttentionLayout layout)
    {
        CheckAttention(q, cacheK, cacheV, output, layout);
        if (layout.Tokens == 0) return;
        var shape = new AttentionShape(layout.Heads, layout.KvHeads, layout.HeadDim, layout.BlockSize, layout.MaxBlocksPerSequence, 1f / MathF.Sqrt(layout.HeadDim));
        _thread.Run(() => _kernels.Attention(new KernelConfig(layout.Tokens * layout.Heads, GroupSize), View(q), View(cacheK), View(cacheV), View(output),
            _indices.Upload(0, layout.TokenSequence), _indices.Upload(1, layout.TokenPosition), _indices.Upload(2, layout.BlockTables), shape));
    }

    public void SwiGlu(DeviceBuffer gate, DeviceBuffer up, int n)
    {
        CheckLength(gate, n, nameof(gate));
        CheckLength(up, n, nameof(up));
        Elementwise(n, count => _kernels.SwiGlu(count, View(gate), View(up)));
    }

    public void Gelu(DeviceBuffer x, int n)
    {
        CheckLength(x, n, nameof(x));
        Elementwise(n, count => _kernels.Gelu(count, View(x)));
    }

    public void SwiGluBackward(DeviceBuffer gate, DeviceBuffer up, DeviceBuffer dout, DeviceBuffer dgate, DeviceBuffer dup, int n)
    {
        foreach (var (buffer, name) in new[] { (gate, nameof(gate)), (up, nameof(up)), (dout, nameof(dout)), (dgate, nameof(dgate)), (dup, nameof(dup)) })
            CheckLength(buffer, n, name);
        Elementwise(n, count => _kernels.SwiGluBackward(count, View(gate), View(up), View(dout), View(dgate), View(dup)));
    }

    public void GeluBackward(DeviceBuffer x, DeviceBuffer dout, DeviceBuffer dx, int n)
    {
        foreach (var (buffer, name) in new[] { (x, nameof(x)), (dout, nameof(dout)), (dx, nameof(dx)) }) CheckLength(buffer, n, name);
        Elementwise(n, count => _kernels.GeluBackward(count, View(x), View(dout), View(dx)));
    }

    public void RmsNormBackward(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer dy, DeviceBuffer dx, DeviceBuffer dw, int rows, int dim, float eps)
    {
        CheckRows(rows, dim, x, dy, weight);
        CheckRows(rows, dim, x, dx, dw);
        if (rows == 0) return;
        using var scales = Allocate(rows);
        _thread.Run(() =>
        {
            _kernels.RmsNormBackwardRows(rows, View(x), View(weight), View(dy), View(dx), View(scales), dim, eps);
            _kernels.RmsNormBackwardWeight(dim, View(x), View(dy), View(scales), View(dw), rows, dim);
        });
    }

    /// <summary>The attention kernel once per sequence, on views of the sequence's rows and weights.</summary>
    public void CausalAttention(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer probs,
        ReadOnlySpan<int> starts, ReadOnlySpan<int> documents, int heads, int kvHeads, int headDim)
    {
        var offsets = TrainingAttention.CheckForward(q, k, v, output, probs, starts, documents, heads, kvHeads, headDim);
        int qw = heads * headDim, kw = kvHeads * headDim;
        int hasDocuments = documents.IsEmpty ? 0 : 1;
        for (int s = 0; s + 1 < starts.Length; s++)
        {
            int start = starts[s], n = starts[s + 1] - start, probsStart = offsets[s];
            WithIndices(documents.IsEmpty ? [0] : documents.Slice(start, n), ids => _kernels.TrainingAttention(heads * n,
                View(q).SubView(start * qw, n * qw), View(k).SubView(start * kw, n * kw), View(v).SubView(start * kw, n * kw),
                View(output).SubView(start * qw, n * qw), View(probs).SubView(probsStart, heads * n * n), ids, hasDocuments, n, heads, kvHeads, headDim));
        }
    }

    public void CausalAttentionBackward(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer probs, DeviceBuffer dout,
        DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, ReadOnlySpan<int> starts, int heads, int kvHeads, int headDim)
    {
        var offsets = TrainingAttention.CheckBackward(q, k, v, probs, dout, dq, dk, dv, starts, heads, kvHeads, headDim);
        int qw = heads * headDim, kw = kvHeads * headDim;
        int longest = 0;
        for (int s = 0; s + 1 < starts.Length; s++) longest = Math.Max(longest, starts[s + 1] - starts[s]);
        using var dscores = Allocate(heads * longest * longest);
        for (int s = 0; s + 1 < starts.Length; s++)
        {
            int start = starts[s], n = starts[s + 1] - start, probsStart = offsets[s];
            _thread.Run(() =>
            {
                ArrayView<float> sq = View(q).SubView(start * qw, n * qw), sk = View(k).SubView(start * kw, n * kw), sv = View(v).SubView(start * kw, n * kw),
                    sp = View(probs).SubView(probsStart, heads * n * n), so = View(dout).SubView(start * qw, n * qw), scores = View(dscores).SubView(0, heads * n * n);
                _kernels.AttentionBackwardQueries(heads * n, sk, sv, sp, so, View(dq).SubView(start * qw, n * qw), scores, n, heads, kvHeads, headDim);
                _kernels.AttentionBackwardKeys(kvHeads * n, sq, sp, so, scores, View(dk).SubView(start * kw, n * kw), View(dv).SubView(start * kw, n * kw), n, heads, kvHeads, headDim);
            });
        }
    }

    public void EmbeddingBackward(ReadOnlySpan<int> rows, DeviceBuffer dx, DeviceBuffer dtable, int dim)
    {
        CheckLength(dx, (long)rows.Length * dim, nameof(dx));
        CheckIndices(rows.ToArray().Where(r => r >= 0).ToArray(), dtable.Length / dim, "table row");
        WithIndices(rows, r => Elementwise(dim, n => _kernels.EmbeddingBackward(n, r, View(dx), View(dtable), r.IntLength, dim)));
    }

    public void AdamW(DeviceBuffer parameters, DeviceBuffer gradients, DeviceBuffer m, DeviceBuffer v, int n,
        int step, float learningRate, float beta1, float beta2, float eps, float weightDecay)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "steps count from 1");
        foreach (var (buffer, name) in new[] { (parameters, nameof(parameters)), (gradients, nameof(gradients)), (m, nameof(m)), (v, nameof(v)) }) CheckLength(buffer, n, name);
        float correction1 = 1f - MathF.Pow(beta1, step), correction2 = 1f - MathF.Pow(beta2, step);
        Elementwise(n, count => _kernels.AdamW(count, View(parameters), View(gradients), View(m), View(v), learningRate, beta1, beta2, eps, weightDecay, correction1, correction2));
    }

    /// <summary>Groups of the first pass of SumOfSquares at most: enough to fill a GPU for a large tensor, few enough for one group to add.</summary>
    private const int MaxSumGroups = 128;

    public void SumOfSquares(DeviceBuffer x, int n, DeviceBuffer sums, int at)
    {
        CheckLength(x, n, nameof(x));
        CheckLength(sums, (long)at + 1, nameof(sums));
        // Two passes: partial sums over a grid sized by n (8 elements per thread, up to MaxSumGroups groups), then one
        // group adds them. One group alone would leave all but one of a GPU's multiprocessors idle on an embedding's gradient.
        int groups = (int)Math.Clamp(((long)n + GroupSize * 8 - 1) / (GroupSize * 8), 1, MaxSumGroups);
        _thread.Run(() =>
        {
            _sumPartials ??= _accelerator.Allocate1D<float>(MaxSumGroups);
            _kernels.SumOfSquaresPartials(new KernelConfig(groups, GroupSize), View(x), n, _sumPartials.View);
            _kernels.SumInto(new KernelConfig(1, GroupSize), _sumPartials.View, groups, View(sums), at);
        });
    }

    public void Add(DeviceBuffer x, DeviceBuffer y, int n)
    {
        CheckLength(x, n, nameof(x));
        CheckLength(y, n, nameof(y));
        Elementwise(n, count => _kernels.Add(count, View(x), View(y)));
    }

    public void GatherRows(DeviceBuffer x, ReadOnlySpan<int> rows, DeviceBuffer output, int dim)
    {
        CheckIndices(rows, x.Length / dim, "row");
        CheckLength(output, (long)rows.Length * dim, nameof(output));
        WithIndices(rows, r => Elementwise(r.IntLength * dim, n => _kernels.GatherRows(n, View(x), r, View(output), dim, 0)));
    }

    public void ScaleRows(DeviceBuffer x, DeviceBuffer scales, int rows, int dim)
    {
        CheckRowsOf(rows, dim, scales, x);
        Elementwise(rows * dim, n => _kernels.ScaleRows(n, View(x), View(scales), dim));
    }

    public void RowDots(DeviceBuffer a, DeviceBuffer b, DeviceBuffer dots, int rows, int dim)
    {
        CheckRowsOf(rows, dim, dots, a, b);
        Elementwise(rows, n => _kernels.RowDots(n, View(a), View(b), View(dots), dim));
    }

    /// <summary>Frees every buffer and matrix still alive, then the index buffers, accelerator and context, then ends the thread.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _thread.Run(() =>
        {
            foreach (var memory in _live.Concat(_ropeFrequencies.Values)) memory.Dispose();
            _quantizedInputs?.Dispose();
            _quantizedScales?.Dispose();
            _sumPartials?.Dispose();
            _live.Clear();
            _indices.Dispose();
            _accelerator.Dispose();
            _context.Dispose();
        });
        _thread.Dispose();
    }

    /// <summary>Frees one buffer's memory (a no-op once the device is disposed: its memory went with it).</summary>
    internal void Release(MemoryBuffer memory)
    {
        if (_disposed) return;
        try { _thread.Run(() => { if (_live.Remove(memory)) memory.Dispose(); }); }
        catch (ObjectDisposedException) { }   // the device closed meanwhile, freeing it
    }

    private static Context CreateContext() =>
        // ILGPU's CPU accelerator with one multiprocessor of GroupSize threads, so the grouped kernels fit.
        Context.Create(builder => builder.Cuda().OpenCL().CPU(new CPUDevice(4, GroupSize / 4, 1)).EnableAlgorithms());

    private static AcceleratorType TypeOf(IlgpuTarget target) => target switch
    {
        IlgpuTarget.Cuda => AcceleratorType.Cuda,
        IlgpuTarget.OpenCL => AcceleratorType.OpenCL,
        _ => AcceleratorType.CPU,
    };

    private static (Context, Accelerator, KernelSet, IndexBuffers) Open(IlgpuTarget target, int index)
    {
        var context = CreateContext();
        Accelerator? accelerator = null;
        try
        {
            var devices = context.Devices.Where(d => d.AcceleratorType == TypeOf(target)).ToArray();
            if (devices.Length == 0)
                throw new InvalidOperationException($"no ILGPU {target} device on this machine (IlgpuDevice.Available() lists those present)");
            if (target != IlgpuTarget.Cpu && (uint)index >= (uint)devices.Length)
                throw new InvalidOperationException($"no ILGPU {target} device {index} on this machine: it has {devices.Length}");
            var device = devices[target == IlgpuTarget.Cpu ? 0 : index];
            accelerator = device.CreateAccelerator(context);
            if (accelerator.MaxNumThreadsPerGroup < GroupSize)
                throw new NotSupportedException($"{accelerator.Name} allows {accelerator.MaxNumThreadsPerGroup} threads per group, the kernels need {GroupSize}");
            return (context, accelerator, new KernelSet(accelerator), new IndexBuffers(accelerator, 3));
        }
        catch
        {
            accelerator?.Dispose();
            context.Dispose();
            throw;
        }
    }

    /// <summary>theta^(−2p / rotaryDim) for each pair p, computed in float on the host exactly as Cpu/RotaryEmbedding.cs does; cached.</summary>
    private ArrayView<float> RopeFrequencies(float theta, int rotaryDim)
    {
        if (!_ropeFrequencies.TryGetValue((theta, rotaryDim), out var memory))
        {
            var frequencies = new float[rotaryDim / 2];   // a negative theta asks for the frequencies negated (RoPE's backward)
            for (int i = 0; i < frequencies.Length; i++) frequencies[i] = MathF.Sign(theta) / MathF.Pow(MathF.Abs(theta), 2 * i / (float)rotaryDim);
            memory = _ropeFrequencies[(theta, rotaryDim)] = _accelerator.Allocate1D(frequencies);
        }
        return memory.View;
    }

    private MemoryBuffer1D<float, Stride1D.Dense> Track(MemoryBuffer1D<float, Stride1D.Dense> memory)
    {
        _live.Add(memory);
        return memory;
    }

    private MemoryBuffer1D<float, Stride1D.Dense> UploadFloats(nint address, int length)
    {
        var memory = Track(_accelerator.Allocate1D<float>(length));
        if (length > 0) memory.View.CopyFromCPU(ref *(float*)address, length);
        return memory;
    }

    /// <summary>Runs on the dispatch thread with the indices uploaded to index buffer 0 (the span stays pinned meanwhile).</summary>
    private void WithIndices(ReadOnlySpan<int> indices, Action<ArrayView<int>> launch)
    {
        fixed (int* p = indices)
        {
            nint address = (nint)p;
            int length = indices.Length;
            _thread.Run(() => launch(_indices.Upload(0, new ReadOnlySpan<int>((void*)address, length))));
        }
    }

    private void Elementwise(int n, Action<Index1D> launch)
    {
        if (n > 0) _thread.Run(() => launch(n));
    }

    private ArrayView<float> View(DeviceBuffer buffer) => Own(buffer).View;

    private IlgpuBuffer Own(DeviceBuffer buffer) =>
        buffer is IlgpuBuffer own && own.Owner == this ? own : throw new ArgumentException($"buffer belongs to another device ({buffer.GetType().Name})");
}
