// The CPU backend's kernels against the plain reference versions, on odd shapes and 1-3 threads.
using Cluster.Compute;
using Cluster.Compute.Cpu;

namespace Cluster.Tests;

public sealed class CpuKernelTests
{
    public static TheoryData<int, int, int, int> GemmShapes => new()
    {
        { 1, 1, 1, 1 }, { 1, 2048, 768, 2 }, { 1, 33, 257, 1 }, { 2, 31, 7, 3 }, { 5, 100, 300, 2 }, { 6, 32, 256, 1 },
        { 7, 64, 513, 3 }, { 13, 95, 100, 2 }, { 16, 33, 50, 2 }, { 17, 40, 9, 1 }, { 32, 65, 40, 2 }, { 33, 31, 17, 1 },
        { 64, 70, 33, 2 }, { 150, 129, 600, 3 }, { 1100, 40, 300, 2 },   // the last: tall and narrow (row blocks through every panel)
    };

    [Theory]
    [MemberData(nameof(GemmShapes))]
    public void GemmMatchesReference(int m, int n, int k, int threads)
    {
        using var device = new CpuDevice(threads);
        float[] x = Reference.Random(m * k, seed: m * 31 + k), w = Reference.Random(n * k, seed: n * 17 + k);
        using var xb = device.Upload(x);
        using var wm = device.UploadMatrix(w, n, k);
        using var yb = device.Allocate(m * n);
        device.MatMul(xb, wm, yb, m);
        var y = new float[m * n];
        device.Download(yb, y);
        // Float accumulation over k terms of size ≤ 1: error grows like sqrt(k)·eps·|terms|.
        Assert.True(Reference.MaxRelativeError(y, Reference.MatMul(x, w, m, n, k)) < 1e-5 * Math.Max(1, Math.Sqrt(k) / 4));
    }

    /// <summary>
    /// The training linear's backward adds dx += dy · W, dW += dyᵀ · x and db += Σ dy into what the buffers held,
    /// against a float64 sum; 1201 output features make dW's product tall and narrow (its rows go through every panel
    /// in turn), the others take the panel-major loop.
    /// </summary>
    [Theory]
    [InlineData(33, 70, 45, 2)]
    [InlineData(37, 1201, 19, 2)]
    [InlineData(300, 40, 600, 1)]
    public void LinearBackwardAddsItsGradients(int m, int n, int k, int threads)
    {
        float[] x = Reference.Random(m * k, 1), w = Reference.Random(n * k, 2), dy = Reference.Random(m * n, 3);
        float[] dx = Reference.Random(m * k, 4), dw = Reference.Random(n * k, 5), db = Reference.Random(n, 6);
        double[] expectedDx = [.. dx.Select(v => (double)v)], expectedDw = [.. dw.Select(v => (double)v)], expectedDb = [.. db.Select(v => (double)v)];
        for (int i = 0; i < m; i++)
            for (int o = 0; o < n; o++)
            {
                double g = dy[i * n + o];
                expectedDb[o] += g;
                for (int j = 0; j < k; j++)
                {
                    expectedDx[i * k + j] += g * w[o * k + j];
                    expectedDw[o * k + j] += g * x[i * k + j];
                }
            }
        using var pool = new WorkerPool(threads);
        using var linear = new Linear(pool);
        linear.Backward(x, w, 0, dy, dx, dw, db, m, n, k);
        foreach (var (actual, expected, name, terms) in new[] { (dx, expectedDx, "dx", n), (dw, expectedDw, "dw", m), (db, expectedDb, "db", m) })
        {
            double worst = 0;
            for (int i = 0; i < actual.Length; i++) worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]));
            Assert.True(worst < 1e-5 * Math.Max(1, Math.Sqrt(terms)), $"{name}: off by {worst:E2} after {terms} terms");
        }
    }

    [Theory]
    [InlineData(RopeLayout.Interleaved, 0)]
    [InlineData(RopeLayout.HalfSplit, 0)]
    [InlineData(RopeLayout.HalfSplit, 4)]
    public void RopeRotatesPairsByPosition(RopeLayout layout, int rotaryDim)
    {
        const int heads = 3, headDim = 8, T = 5;
        int rot = rotaryDim == 0 ? headDim : rotaryDim;
        using var device = new CpuDevice(1);
        float[] x = Reference.Random(T * heads * headDim, seed: 3);
        int[] positions = [0, 1, 7, 100, 3];
        using var buffer = device.Upload(x);
        device.Rope(buffer, positions, heads, headDim, rot, 10000f, layout);
        var y = new float[x.Length];
        device.Download(buffer, y);

        var expected = (float[])x.Clone();
        for (int t = 0; t < T; t++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < rot / 2; i++)
                {
                    int a = layout == RopeLayout.Interleaved ? 2 * i : i, b = layout == RopeLayout.Interleaved ? 2 * i + 1 : i + rot / 2;
                    int o = (t * heads + h) * headDim;
                    double angle = positions[t] * Math.Pow(10000, -2.0 * i / rot);
                    expected[o + a] = (float)(x[o + a] * Math.Cos(angle) - x[o + b] * Math.Sin(angle));
                    expected[o + b] = (float)(x[o + a] * Math.Sin(angle) + x[o + b] * Math.Cos(angle));
                }
        Assert.True(Reference.MaxRelativeError(y, expected) < 1e-4);   // float angles at position 100 vs double
    }

    [Fact]
    public void NormsMatchReference()
    {
        const int rows = 4, dim = 37;
        using var device = new CpuDevice(2);
        float[] x = Reference.Random(rows * dim, 1, scale: 3), w = Reference.Random(dim, 2), b = Reference.Random(dim, 3);
        using var xb = device.Upload(x);
        using var wb = device.Upload(w);
        using var bb = device.Upload(b);
        using var yb = device.Allocate(rows * dim);
        var rms = new float[rows * dim];
        var layer = new float[rows * dim];
        device.RmsNorm(xb, wb, yb, rows, dim, 1e-5f);
        device.Download(yb, rms);
        device.LayerNorm(xb, wb, bb, yb, rows, dim, 1e-5f);
        device.Download(yb, layer);

        var expectedRms = new float[rows * dim];
        var expectedLayer = new float[rows * dim];
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * dim, dim).ToArray();
            double meanSquare = row.Average(v => (double)v * v), mean = row.Average(v => (double)v);
            double variance = row.Average(v => (v - mean) * (v - mean));
            for (int i = 0; i < dim; i++)
            {
                expectedRms[r * dim + i] = (float)(row[i] / Math.Sqrt(meanSquare + 1e-5) * w[i]);
                expectedLayer[r * dim + i] = (float)((row[i] - mean) / Math.Sqrt(variance + 1e-5) * w[i] + b[i]);
            }
        }
        Assert.True(Reference.MaxRelativeError(rms, expectedRms) < 1e-5);
        Assert.True(Reference.MaxRelativeError(layer, expectedLayer) < 1e-5);
    }

    [Fact]
    public void ActivationsMatchFormulas()
    {
        using var device = new CpuDevice(1);
        const int n = 2500;
        float[] g = Reference.Random(n, 4, scale: 6), u = Reference.Random(n, 5, scale: 2);
        using var gb = device.Upload(g);
        using var ub = device.Upload(u);
        device.SwiGlu(gb, ub, n);
        var swiglu = new float[n];
        device.Download(gb, swiglu);
        using var xb = device.Upload(g);
        device.Gelu(xb, n);
        var gelu = new float[n];
        device.Download(xb, gelu);
        var expectedSwiglu = g.Select((v, i) => (float)(v / (1 + Math.Exp(-v)) * u[i])).ToArray();
        var expectedGelu = g.Select(v => (float)(0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v))))).ToArray();
        Assert.True(Reference.MaxRelativeError(swiglu, expectedSwiglu) < 1e-5);
        Assert.True(Reference.MaxRelativeError(gelu, expectedGelu) < 1e-5);
    }

    [Theory]
    [InlineData(8, 8, 1)]    // multi-head
    [InlineData(8, 2, 4)]    // grouped-query, pages smaller than the sequence
    [InlineData(4, 1, 16)]   // multi-query, one page
    public void PagedAttentionMatchesFullSoftmax(int heads, int kvHeads, int blockSize)
    {
        const int headDim = 16, T = 19;
        int kvDim = kvHeads * headDim;
        using var device = new CpuDevice(2);
        float[] q = Reference.Random(T * heads * headDim, 6, scale: 2), k = Reference.Random(T * kvDim, 7, scale: 2), v = Reference.Random(T * kvDim, 8);
        // Pages handed out in a scrambled order, as a free list would after churn.
        int pages = (T + blockSize - 1) / blockSize;
        int[] table = Enumerable.Range(0, pages + 5).OrderBy(p => (p * 7919) % 13).Take(pages).ToArray();
        var layout = new AttentionLayout(new int[T], Enumerable.Range(0, T).ToArray(), table, pages, blockSize, heads, kvHeads, headDim);
        using var qb = device.Upload(q);
        using var kb = device.Upload(k);
        using var vb = device.Upload(v);
        using var cacheK = device.Allocate((pages + 5) * blockSize * kvDim);
        using var cacheV = device.Allocate((pages + 5) * blockSize * kvDim);
        using var ob = device.Allocate(T * heads * headDim);
        device.WriteKv(kb, vb, cacheK, cacheV, layout.TokenSlots(), kvDim);
        device.PagedAttention(qb, cacheK, cacheV, ob, layout);
        var output = new float[T * heads * headDim];
        device.Download(ob, output);
        Assert.True(Reference.MaxRelativeError(output, Reference.CausalAttention(q, k, v, T, heads, kvHeads, headDim)) < 1e-5);
    }

    /// <summary>
    /// A float16 or int8 cache (int8: a scale per token and KV head): attention over it equals attention over the values
    /// it holds (each read back, widened), and stays near attention over the float32 inputs (the format's rounding).
    /// </summary>
    [Theory]
    [InlineData(KvFormat.F16, 2e-3)]
    [InlineData(KvFormat.Int8, 3e-2)]
    public void PagedAttentionOverAQuantizedCacheIsAttentionOverTheValuesItHolds(KvFormat format, double nearFloat32)
    {
        const int heads = 4, kvHeads = 2, headDim = 16, T = 37, blockSize = 8;
        int kvDim = kvHeads * headDim, slots = 6 * blockSize;
        using var device = new CpuDevice(2);
        float[] q = Reference.Random(T * heads * headDim, 16, scale: 2), k = Reference.Random(T * kvDim, 17, scale: 2), v = Reference.Random(T * kvDim, 18);
        for (int i = 0; i < headDim; i++) k[kvDim + i] *= 1e-3f;   // one head of one token far smaller than the rest: its own scale
        int[] table = [4, 0, 5, 2, 1];
        var layout = new AttentionLayout(new int[T], Enumerable.Range(0, T).ToArray(), table, table.Length, blockSize, heads, kvHeads, headDim);
        using var qb = device.Upload(q);
        using var kb = device.Upload(k);
        using var vb = device.Upload(v);
        using var cacheK = device.AllocateKv(slots, kvDim, headDim, format);
        using var cacheV = device.AllocateKv(slots, kvDim, headDim, format);
        using var ob = device.Allocate(T * heads * headDim);
        int[] tokenSlots = layout.TokenSlots();
        device.WriteKv(kb, vb, cacheK, cacheV, tokenSlots, kvDim);
        device.PagedAttention(qb, cacheK, cacheV, ob, layout);
        var output = new float[T * heads * headDim];
        device.Download(ob, output);

        float[] Held(DeviceBuffer cache)   // (T, kvDim): what the cache holds for each token, widened to float32
        {
            var held = new float[T * kvDim];
            var row = new float[headDim];
            for (int t = 0; t < T; t++)
                for (int h = 0; h < kvHeads; h++)
                    ((CpuKvBuffer)cache).Head(tokenSlots[t], h, row).CopyTo(held.AsSpan(t * kvDim + h * headDim, headDim));
            return held;
        }
        float[] heldK = Held(cacheK), heldV = Held(cacheV);
        Assert.True(Reference.MaxRelativeError(output, Reference.CausalAttention(q, heldK, heldV, T, heads, kvHeads, headDim)) < 1e-5);
        double fromFloat32 = Reference.MaxRelativeError(output, Reference.CausalAttention(q, k, v, T, heads, kvHeads, headDim));
        Assert.True(fromFloat32 < nearFloat32, $"{fromFloat32:G3} from attention over the float32 keys and values");
        // The small head kept its precision: its own scale, not the token's largest value's.
        // (values up to 2e-3: int8 rounds by at most 2e-3 / 254; one scale for the token, up to 2 / 254, would not pass)
        Assert.True(Enumerable.Range(0, headDim).Max(i => Math.Abs(heldK[kvDim + i] - k[kvDim + i])) < 2e-5);
        Assert.Equal(format == KvFormat.F16 ? 2L * kvDim : kvDim + 4L * kvHeads, format.BytesPerToken(kvDim, headDim));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(1003)]
    public void AdamWGivesTheScalarFormulasResultForEveryElement(int n)
    {
        var rng = new Random(n);
        float[] Random(float scale) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5) * scale)];
        float[] p = Random(2), g = Random(1), m = Random(0.1f), v = [.. Random(0.01f).Select(MathF.Abs)];
        float[] p2 = [.. p], m2 = [.. m], v2 = [.. v];
        const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
        for (int step = 1; step <= 3; step++)
        {
            AdamW.Update(p, g, m, v, step, lr, b1, b2, eps, wd);
            float c1 = 1f - MathF.Pow(b1, step), c2 = 1f - MathF.Pow(b2, step);
            for (int i = 0; i < n; i++)   // the formula, one element at a time
            {
                m2[i] = b1 * m2[i] + (1f - b1) * g[i];
                v2[i] = b2 * v2[i] + (1f - b2) * g[i] * g[i];
                p2[i] -= lr * (m2[i] / c1 / (MathF.Sqrt(v2[i] / c2) + eps) + wd * p2[i]);
            }
        }
        Assert.Equal(p2, p);   // bit for bit: the vector path rounds as the scalar one does
        Assert.Equal(m2, m);
        Assert.Equal(v2, v);
    }

    [Fact]
    public void AdamWOverThePoolsThreadsEqualsOneThread()
    {
        const int n = 100_003;   // several chunks and a ragged end
        var rng = new Random(4);
        float[] Random() => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5))];
        float[] p = Random(), g = Random(), m = Random(), v = [.. Random().Select(MathF.Abs)];
        float[] p2 = [.. p], m2 = [.. m], v2 = [.. v];
        using var pool = new WorkerPool(2);
        AdamW.Update(pool, p, g, m, v, 2, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f);
        AdamW.Update(p2, g, m2, v2, 2, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f);
        Assert.Equal(p2, p);
        Assert.Equal(m2, m);
        Assert.Equal(v2, v);
    }
}
