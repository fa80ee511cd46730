// IlgpuDevice against CpuDevice, op by op: fresh seeded random inputs at small, odd sizes run through ILGPU's
// CPU accelerator and through CpuDevice(threads: 2). Metric: max over elements of |ilgpu − cpu| / max(|cpu|, 1)
// must be ≤ 1e-5. A CUDA comparison runs only where a CUDA device is present (skipped otherwise).
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Compute.Ilgpu;

namespace Cluster.Tests;

/// <summary>One ILGPU CPU-accelerator device and one CpuDevice shared by the class (kernels compile once).</summary>
public sealed class IlgpuCpuFixture : IDisposable
{
    public IlgpuDevice Ilgpu { get; } = IlgpuDevice.Create(IlgpuTarget.Cpu);
    public CpuDevice Cpu { get; } = new(threads: 2);

    public void Dispose()
    {
        Ilgpu.Dispose();
        Cpu.Dispose();
    }
}

public sealed class IlgpuDeviceTests(IlgpuCpuFixture devices) : IClassFixture<IlgpuCpuFixture>
{
    private const float Tolerance = 1e-5f;

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(1, 9, 513)]
    [InlineData(5, 37, 67)]
    [InlineData(70, 130, 33)]
    [InlineData(2, 13, 16)]
    [InlineData(4, 7, 300)]
    [InlineData(3, 5, 1)]
    public void MatMul(int m, int n, int k)
    {
        var random = new Random(m * 1000 + n * 10 + k);
        float[] x = Values(random, m * k), w = Values(random, n * k);
        Compare(d =>
        {
            using var xb = d.Upload(x);
            using var wm = d.UploadMatrix(w, n, k);
            using var y = d.Allocate(m * n);
            d.MatMul(xb, wm, y, m);
            return Read(d, y);
        });
    }

    /// <summary>
    /// Q8_0 / Q4_0 weights (QuantizedKernels): the same product as the CPU device's integer kernel (the inputs quantized
    /// with their scales rounded to float16 on both), and embedding rows read from the quantized table.
    /// </summary>
    [Theory]
    [InlineData(WeightFormat.Q8_0, 1, 9, 64)]
    [InlineData(WeightFormat.Q8_0, 5, 37, 96)]
    [InlineData(WeightFormat.Q4_0, 1, 13, 32)]
    [InlineData(WeightFormat.Q4_0, 6, 20, 128)]
    public void QuantizedMatMulAndEmbedding(WeightFormat format, int m, int n, int k)
    {
        var random = new Random(m * 1000 + n * 10 + k);
        float[] x = Values(random, m * k), w = Values(random, n * k);
        for (int i = 0; i < Math.Min(k, 32); i++) x[i] *= 1e-6f;   // a block of tiny inputs: a float16-subnormal scale
        int[] tokens = [3, -1, 0, n - 1];
        Compare(d =>
        {
            using var xb = d.Upload(x);
            using var wm = d.UploadMatrix(w, n, k, format);
            using var y = d.Allocate(m * n);
            using var rows = d.Allocate(tokens.Length * k);
            d.MatMul(xb, wm, y, m);
            d.Embedding(wm, tokens, rows);
            return [.. Read(d, y), .. Read(d, rows)];
        });
    }

    /// <summary>A whole model served in Q8_0 on the ILGPU device gives the CPU device's logits.</summary>
    [Fact]
    public void AQ8_0ModelGivesTheCpuDevicesLogits()
    {
        var tiny = Cluster.Model.RandomModel.Create("tiny", seed: 3);
        float[] Logits(IDevice d)
        {
            using var model = new Cluster.Model.TransformerModel(d, tiny.Config, tiny.Weights, WeightFormat.Q8_0);
            using var cache = model.CreateCache(1, 16, 16);
            return model.Forward([new Cluster.Model.SequenceChunk(cache.CreateSequence(), [1, 40, 7, 300, 12], AllLogits: true)], cache);
        }
        // An input a float rounding apart can land in the next int8 step of its block: a looser bound than one op's.
        AssertClose(Logits(devices.Cpu), Logits(devices.Ilgpu), 1e-3f);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(300)]
    [InlineData(100_003)]   // 49 groups in the first pass
    [InlineData(300_001)]   // more elements than the largest grid (128 groups of 256 threads) covers at 8 per thread
    public void SumOfSquares(int n)
    {
        var random = new Random(n);
        float[] x = Values(random, n + 7);   // the last 7 are not summed
        double expected = x.Take(n).Sum(v => (double)v * v);
        using var xb = devices.Ilgpu.Upload(x);
        using var sums = devices.Ilgpu.Upload([-1f, -1f, -1f]);
        devices.Ilgpu.SumOfSquares(xb, n, sums, 1);
        float[] result = Read(devices.Ilgpu, sums);
        Assert.Equal(-1f, result[0]);
        Assert.Equal(-1f, result[2]);
        Assert.True(Math.Abs(result[1] - expected) <= 1e-5 * Math.Max(1, expected), $"{result[1]} against {expected}");
    }

    [Fact]
    public void AddBiasAndAdd()
    {
        var random = new Random(1);
        float[] x = Values(random, 3 * 37), bias = Values(random, 37), other = Values(random, 3 * 37);
        Compare(d =>
        {
            using var xb = d.Upload(x);
            using var bb = d.Upload(bias);
            using var ob = d.Upload(other);
            d.AddBias(xb, bb, 3, 37);
            d.Add(xb, ob, 3 * 37 - 5);   // leaves the last five elements un-added
            return Read(d, xb);
        });
    }

    [Fact]
    public void EmbeddingAddEmbeddingGatherRows()
    {
        var random = new Random(2);
        const int dim = 13;
        float[] table = Values(random, 11 * dim), positions = Values(random, 9 * dim);
        int[] tokens = [3, 0, 10, 3, 7], positionIndices = [0, 1, 8, 2, 5], rows = [4, 0, 2];
        Compare(d =>
        {
            using var tb = d.Upload(table);
            using var pb = d.Upload(positions);
            using var x = d.Allocate(tokens.Length * dim);
            using var picked = d.Allocate(rows.Length * dim);
            d.Embedding(tb, tokens, x, dim);
            d.AddEmbedding(x, pb, positionIndices, dim);
            d.GatherRows(x, rows, picked, dim);
            return [.. Read(d, x), .. Read(d, picked)];
        });
    }

    [Theory]
    [InlineData(3, 7)]
    [InlineData(4, 300)]
    public void Norms(int rows, int dim)
    {
        var random = new Random(rows * dim);
        float[] x = Values(random, rows * dim), w = Values(random, dim), b = Values(random, dim);
        Compare(d =>
        {
            using var xb = d.Upload(x);
            using var wb = d.Upload(w);
            using var bb = d.Upload(b);
            using var rms = d.Allocate(rows * dim);
            using var layer = d.Allocate(rows * dim);
            d.RmsNorm(xb, wb, rms, rows, dim, 1e-5f);
            d.LayerNorm(xb, wb, bb, layer, rows, dim, 1e-5f);
            return [.. Read(d, rms), .. Read(d, layer)];
        });
    }

    [Theory]
    [InlineData(RopeLayout.Interleaved, 10)]
    [InlineData(RopeLayout.HalfSplit, 10)]
    [InlineData(RopeLayout.Interleaved, 6)]
    [InlineData(RopeLayout.HalfSplit, 4)]
    public void Rope(RopeLayout layout, int rotaryDim)
    {
        const int heads = 3, headDim = 10;
        int[] positions = [0, 5, 17, 3, 211, 5000];   // 5000: angles of thousands of radians
        var random = new Random(rotaryDim + (int)layout * 100);
        float[] x = Values(random, positions.Length * heads * headDim);
        Compare(d =>
        {
            using var xb = d.Upload(x);
            d.Rope(xb, positions, heads, headDim, rotaryDim, 10000f, layout);
            return Read(d, xb);
        });
    }

    [Fact]
    public void WriteKv()
    {
        var random = new Random(3);
        const int kvDim = 12, capacity = 20;
        int[] slots = [7, 2, 19];
        float[] k = Values(random, slots.Length * kvDim), v = Values(random, slots.Length * kvDim);
        float[] cacheK = Values(random, capacity * kvDim), cacheV = Values(random, capacity * kvDim);
        Compare(d =>
        {
            using var kb = d.Upload(k);
            using var vb = d.Upload(v);
            using var ck = d.Upload(cacheK);
            using var cv = d.Upload(cacheV);
            d.WriteKv(kb, vb, ck, cv, slots, kvDim);
            return [.. Read(d, ck), .. Read(d, cv)];
        });
    }

    /// <summary>Three sequences on shuffled (non-contiguous) cache blocks: a prefill, a decode past one 256-key tile, a short chunk.</summary>
    [Theory]
    [InlineData(4, 2, 12, 4)]
    [InlineData(2, 1, 16, 16)]
    public void PagedAttention(int heads, int kvHeads, int headDim, int blockSize)
    {
        var random = new Random(heads * 100 + blockSize);
        (int Sequence, int Position)[] tokens = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 300), (2, 7), (2, 8)];
        int maxBlocks = 300 / blockSize + 1, totalBlocks = 3 * maxBlocks;
        int[] blockTables = [.. Enumerable.Range(0, totalBlocks).OrderBy(_ => random.Next())];
        var layout = new AttentionLayout([.. tokens.Select(t => t.Sequence)], [.. tokens.Select(t => t.Position)], blockTables,
            maxBlocks, blockSize, heads, kvHeads, headDim);
        int kvDim = kvHeads * headDim, slots = totalBlocks * blockSize;
        float[] q = Values(random, tokens.Length * heads * headDim);
        float[] cacheK = Values(random, slots * kvDim), cacheV = Values(random, slots * kvDim);
        Compare(d =>
        {
            using var qb = d.Upload(q);
            using var ck = d.Upload(cacheK);
            using var cv = d.Upload(cacheV);
            using var output = d.Allocate(q.Length);
            d.PagedAttention(qb, ck, cv, output, layout);
            return Read(d, output);
        });
    }

    [Fact]
    public void Activations()
    {
        var random = new Random(4);
        const int n = 1001;
        float[] gate = Values(random, n, 6f), up = Values(random, n), x = Values(random, n, 6f);
        Compare(d =>
        {
            using var gb = d.Upload(gate);
            using var ub = d.Upload(up);
            using var xb = d.Upload(x);
            d.SwiGlu(gb, ub, n);
            d.Gelu(xb, n);
            return [.. Read(d, gb), .. Read(d, xb)];
        });
    }

    [Fact]
    public void InfoAndAvailability()
    {
        Assert.Equal(DeviceKind.IlgpuCpu, devices.Ilgpu.Info.Kind);
        Assert.Contains(IlgpuTarget.Cpu, IlgpuDevice.Available());
    }

    [Fact]
    public void ErrorsComeBackFromTheDispatchThread()
    {
        var error = Assert.ThrowsAny<ArgumentException>(() => devices.Ilgpu.Allocate(-1));
        // The original frames, thrown on the dispatch thread: Allocate's lambda (ILGPU's own frames may be inlined into it).
        Assert.Contains("<Allocate>", error.StackTrace);
        using var cpuBuffer = devices.Cpu.Allocate(4);
        Assert.Throws<ArgumentException>(() => devices.Ilgpu.Gelu(cpuBuffer, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => { using var t = devices.Ilgpu.Allocate(8); devices.Ilgpu.Embedding(t, [4], t, 2); });
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(7, 37)]
    [InlineData(3, 288)]
    public void TrainingBackwardKernels(int rows, int dim)
    {
        var random = new Random(rows * 100 + dim);
        float[] x = Values(random, rows * dim), w = Values(random, dim), dy = Values(random, rows * dim);
        float[] dxStart = Values(random, rows * dim), dwStart = Values(random, dim);   // the ops accumulate into what is there
        Compare(d =>
        {
            using var xb = d.Upload(x);
            using var wb = d.Upload(w);
            using var dyb = d.Upload(dy);
            using var dx = d.Upload(dxStart);
            using var dw = d.Upload(dwStart);
            d.RmsNormBackward(xb, wb, dyb, dx, dw, rows, dim, 1e-5f);
            return [.. Read(d, dx), .. Read(d, dw)];
        });
        Compare(d =>
        {
            using var gate = d.Upload(x);
            using var up = d.Upload(dy);
            using var dout = d.Upload(dxStart);
            using var dgate = d.Upload(dwStart.Concat(new float[rows * dim - dim]).ToArray());
            using var dup = d.Allocate(rows * dim);
            d.SwiGluBackward(gate, up, dout, dgate, dup, rows * dim);
            using var dx = d.Upload(dy);
            d.GeluBackward(gate, dout, dx, rows * dim);
            return [.. Read(d, dgate), .. Read(d, dup), .. Read(d, dx)];
        });
        float[] bias = Values(random, dim), dbStart = Values(random, dim);
        Compare(d =>
        {
            using var xb = d.Upload(x);
            using var wb = d.Upload(w);
            using var dyb = d.Upload(dy);
            using var dx = d.Upload(dxStart);
            using var dw = d.Upload(dwStart);
            using var db = d.Upload(dbStart);
            d.LayerNormBackward(xb, wb, dyb, dx, dw, db, rows, dim, 1e-5f);
            return [.. Read(d, dx), .. Read(d, dw), .. Read(d, db)];
        });
        int[] targets = [.. Enumerable.Range(0, rows).Select(r => r % 3 == 1 ? -1 : (r * 7) % dim)];
        Compare(d =>
        {
            using var logits = d.Upload(x);
            using var dlogits = d.Upload(dxStart);   // overwritten
            using var losses = d.Allocate(rows);
            d.CrossEntropy(logits, targets, dlogits, losses, dim, Math.Max(1, targets.Count(t => t >= 0)));
            return [.. Read(d, dlogits), .. Read(d, losses)];
        });
    }

    [Theory]
    [InlineData(1, 1, 1, 4, false, 1)]
    [InlineData(9, 6, 2, 8, true, 1)]    // grouped-query, two packed documents
    [InlineData(13, 4, 4, 5, false, 1)]
    [InlineData(13, 4, 2, 5, true, 3)]   // three sequences of a batch (4, 4, 5 tokens), documents within them
    public void TrainingAttentionForwardAndBackward(int tokens, int heads, int kvHeads, int headDim, bool packed, int sequences)
    {
        var random = new Random(tokens * 31 + heads + sequences);
        float[] q = Values(random, tokens * heads * headDim), k = Values(random, tokens * kvHeads * headDim), v = Values(random, tokens * kvHeads * headDim);
        float[] dout = Values(random, tokens * heads * headDim), dqStart = Values(random, q.Length), dkStart = Values(random, k.Length), dvStart = Values(random, v.Length);
        int[] documents = packed ? [.. Enumerable.Range(0, tokens).Select(t => t % 5 < 2 ? 0 : 1)] : [];
        int[] starts = [.. Enumerable.Range(0, sequences + 1).Select(s => s * tokens / sequences)];
        int probsLength = TrainingAttention.ProbsOffsets(starts, heads)[^1];
        Compare(d =>
        {
            using DeviceBuffer qb = d.Upload(q), kb = d.Upload(k), vb = d.Upload(v), output = d.Allocate(q.Length), probs = d.Allocate(probsLength);
            d.CausalAttention(qb, kb, vb, output, probs, starts, documents, heads, kvHeads, headDim);
            using DeviceBuffer ob = d.Upload(dout), dq = d.Upload(dqStart), dk = d.Upload(dkStart), dv = d.Upload(dvStart);
            d.CausalAttentionBackward(qb, kb, vb, probs, ob, dq, dk, dv, starts, heads, kvHeads, headDim);
            return [.. Read(d, output), .. Read(d, probs), .. Read(d, dq), .. Read(d, dk), .. Read(d, dv)];
        });
        int[] rows = [.. Enumerable.Range(0, tokens).Select(t => t % 4 == 3 ? -1 : t % 3)];
        float[] tableStart = Values(random, 3 * headDim);
        Compare(d =>
        {
            using DeviceBuffer dx = d.Upload(dout.AsSpan(0, tokens * headDim)), table = d.Upload(tableStart);
            d.EmbeddingBackward(rows, dx, table, headDim);
            return Read(d, table);
        });
    }

    [Theory]
    [InlineData(3, 5, 7)]      // the GEMV path
    [InlineData(70, 33, 65)]   // the tiled GEMM, ragged tiles
    public void LinearForwardAndBackward(int m, int n, int k)
    {
        var random = new Random(m * 7 + n);
        float[] x = Values(random, m * k), w = Values(random, n * k), dy = Values(random, m * n);
        float[] dxStart = Values(random, m * k), dwStart = Values(random, n * k), dbStart = Values(random, n);
        Compare(d =>
        {
            using DeviceBuffer xb = d.Upload(x), wb = d.Upload(w), y = d.Allocate(m * n), dyb = d.Upload(dy), dx = d.Upload(dxStart), dw = d.Upload(dwStart), db = d.Upload(dbStart);
            d.Linear(xb, wb, y, m, n, k);
            d.LinearBackward(xb, wb, dyb, dx, dw, db, m, n, k);
            using DeviceBuffer frozenDx = d.Upload(dxStart);
            d.LinearBackward(xb, wb, dyb, frozenDx, null, null, m, n, k);   // a frozen weight: dx only
            return [.. Read(d, y), .. Read(d, dx), .. Read(d, dw), .. Read(d, db), .. Read(d, frozenDx)];
        });
        // The CPU's against the definition, in double.
        using var cpu = new Cluster.Compute.Cpu.CpuDevice(2);
        using DeviceBuffer cx = cpu.Upload(x), cw = cpu.Upload(w), cy = cpu.Allocate(m * n), cdy = cpu.Upload(dy), cdx = cpu.Allocate(m * k), cdw = cpu.Allocate(n * k), cdb = cpu.Allocate(n);
        cpu.Linear(cx, cw, cy, m, n, k);
        cpu.LinearBackward(cx, cw, cdy, cdx, cdw, cdb, m, n, k);
        double[] y = new double[m * n], dxExpected = new double[m * k], dwExpected = new double[n * k], dbExpected = new double[n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                for (int l = 0; l < k; l++)
                {
                    y[i * n + j] += (double)x[i * k + l] * w[j * k + l];
                    dxExpected[i * k + l] += (double)dy[i * n + j] * w[j * k + l];
                    dwExpected[j * k + l] += (double)dy[i * n + j] * x[i * k + l];
                }
                dbExpected[j] += dy[i * n + j];
            }
        AssertClose([.. y.Select(v => (float)v)], Read(cpu, cy), 1e-5f);
        AssertClose([.. dxExpected.Select(v => (float)v)], Read(cpu, cdx), 1e-5f);
        AssertClose([.. dwExpected.Select(v => (float)v)], Read(cpu, cdw), 1e-5f);
        AssertClose([.. dbExpected.Select(v => (float)v)], Read(cpu, cdb), 1e-5f);
    }

    [Fact]
    public void ElementwiseOpsAndEmbeddingsForeignRows()
    {
        var random = new Random(23);
        float[] x = Values(random, 301), y = Values(random, 301), table = Values(random, 4 * 6);
        Compare(d =>
        {
            using DeviceBuffer xb = d.Upload(x), yb = d.Upload(y), copy = d.Allocate(301), zeroed = d.Upload(x), t = d.Upload(table), rows = d.Allocate(3 * 6);
            d.Copy(xb, copy, 301);
            d.Scale(xb, 0.5f, 300);                  // the last element stays
            d.Multiply(yb, copy, 301);
            d.AddScaled(xb, yb, -2f, 301);
            d.Zero(zeroed, 100);
            d.Embedding(t, [2, -1, 0], rows, 6);      // −1: a zero row
            using var matrix = d.UploadMatrix(table, 4, 6);
            using var matrixRows = d.Allocate(3 * 6);
            d.Embedding(matrix, [3, -1, 1], matrixRows);   // from a weight matrix in the device's layout (the CPU's packed)
            return [.. Read(d, copy), .. Read(d, xb), .. Read(d, yb), .. Read(d, zeroed), .. Read(d, rows), .. Read(d, matrixRows)];
        });
        using var cpu = new Cluster.Compute.Cpu.CpuDevice(1);
        using var packed = cpu.UploadMatrix(table, 4, 6);
        using var gathered = cpu.Allocate(3 * 6);
        cpu.Embedding(packed, [3, -1, 1], gathered);
        Assert.Equal([.. table.AsSpan(18, 6), .. new float[6], .. table.AsSpan(6, 6)], Read(cpu, gathered));
    }

    [Fact]
    public void AdamWUpdate()
    {
        var random = new Random(17);
        float[] p = Values(random, 301), g = Values(random, 301), m = Values(random, 301, 0.1f), v = Values(random, 301, 0.1f);
        for (int i = 0; i < v.Length; i++) v[i] = Math.Abs(v[i]);
        Compare(d =>
        {
            using DeviceBuffer pb = d.Upload(p), gb = d.Upload(g), mb = d.Upload(m), vb = d.Upload(v);
            d.AdamW(pb, gb, mb, vb, 301, step: 3, learningRate: 1e-2f, beta1: 0.9f, beta2: 0.95f, eps: 1e-8f, weightDecay: 0.1f);
            return [.. Read(d, pb), .. Read(d, mb), .. Read(d, vb)];
        });
    }

    [Theory]
    [InlineData(RopeLayout.Interleaved)]
    [InlineData(RopeLayout.HalfSplit)]
    public void RopeBackwardTurnsBack(RopeLayout layout)
    {
        var random = new Random(3);
        const int tokens = 5, heads = 3, headDim = 8;
        float[] x = Values(random, tokens * heads * headDim);
        int[] positions = [0, 1, 7, 30, 513];
        Compare(d =>
        {
            using var xb = d.Upload(x);
            d.RopeBackward(xb, positions, heads, headDim, 6, 10000f, layout);
            return Read(d, xb);
        });
        using var there = devices.Ilgpu.Upload(x);   // forward then backward is the identity
        devices.Ilgpu.Rope(there, positions, heads, headDim, 6, 10000f, layout);
        devices.Ilgpu.RopeBackward(there, positions, heads, headDim, 6, 10000f, layout);
        AssertClose(x, Read(devices.Ilgpu, there), Tolerance);
    }

    [Fact]
    public void DisposeFreesEverything()
    {
        var device = IlgpuDevice.Create(IlgpuTarget.Cpu);
        var buffer = device.Upload([1f, 2f, 3f]);
        var matrix = device.UploadMatrix([1f, 2f], 1, 2);
        device.Dispose();
        buffer.Dispose();   // already freed with the device: a no-op
        matrix.Dispose();
        Assert.Throws<ObjectDisposedException>(() => device.Allocate(4));
    }

    [Fact]
    public void CudaMatchesCpu()
    {
        if (!IlgpuDevice.Available().Contains(IlgpuTarget.Cuda)) Assert.Skip("no CUDA device on this machine: CUDA comparison skipped");
        using var cuda = IlgpuDevice.Create(IlgpuTarget.Cuda);
        var random = new Random(5);
        const int m = 77, n = 301, k = 129;
        float[] x = Values(random, m * k), w = Values(random, n * k);
        Func<IDevice, float[]> op = d =>
        {
            using var xb = d.Upload(x);
            using var wm = d.UploadMatrix(w, n, k);
            using var y = d.Allocate(m * n);
            d.MatMul(xb, wm, y, m);
            d.RmsNorm(y, y, y, m, n, 1e-5f);
            d.Gelu(y, m * n);
            return Read(d, y);
        };
        AssertClose(op(devices.Cpu), op(cuda), 1e-4f);   // GPU transcendental functions differ from .NET's by a few ulps
    }

    private void Compare(Func<IDevice, float[]> op) => AssertClose(op(devices.Cpu), op(devices.Ilgpu), Tolerance);

    private static void AssertClose(float[] expected, float[] actual, float tolerance)
    {
        Assert.Equal(expected.Length, actual.Length);
        double worst = 0;
        int at = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double error = Math.Abs(actual[i] - expected[i]) / Math.Max(Math.Abs(expected[i]), 1.0);
            if (double.IsNaN(error)) error = double.PositiveInfinity;
            if (error > worst) { worst = error; at = i; }
        }
        Assert.True(worst <= tolerance, $"max relative error {worst:E2} at {at}: expected {expected[at]}, got {actual[at]}");
    }

    private static float[] Read(IDevice device, DeviceBuffer buffer)
    {
        var data = new float[buffer.Length];
        device.Download(buffer, data);
        return data;
    }

    private static float[] Values(Random random, int count, float scale = 1f)
    {
        var data = new float[count];
        for (int i = 0; i < count; i++) data[i] = (random.NextSingle() * 2 - 1) * scale;
        return data;
    }
}
