// Gradient checks: every backward kernel against central finite differences of a float64 reference forward, on
// random odd shapes. The loss is L = Σ f(inputs) · R for a fixed random R, so ∂L/∂out = R is the dy the kernel gets;
// the analytic float32 gradient must be within 1e-4 of the numeric one, relative to the gradient's largest entry.
using Cluster.Compute;
using Cluster.Compute.Cpu;

namespace Cluster.Tests;

public sealed class BackwardTests
{
    private static float[] Random(int n, int seed, float scale = 1f) => Reference.Random(n, seed, scale);

    private static double[] D(float[] a) => [.. a.Select(v => (double)v)];

    /// <summary>∂loss/∂input[i] by central differences in float64.</summary>
    private static double[] Numeric(float[] input, Func<double[], double> loss, double h = 1e-5)
    {
        var x = D(input);
        var grad = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double keep = x[i];
            x[i] = keep + h; double up = loss(x);
            x[i] = keep - h; double down = loss(x);
            x[i] = keep;
            grad[i] = (up - down) / (2 * h);
        }
        return grad;
    }

    private static void AssertGradient(double[] numeric, float[] analytic, string name)
    {
        Assert.Equal(numeric.Length, analytic.Length);
        double scale = Math.Max(numeric.Max(Math.Abs), 1e-12), worst = 0;
        for (int i = 0; i < numeric.Length; i++) worst = Math.Max(worst, Math.Abs(analytic[i] - numeric[i]) / scale);
        Assert.True(worst <= 1e-4, $"{name}: relative error {worst:E2}");
    }

    private static double Dot(double[] a, float[] r) => a.Select((v, i) => v * r[i]).Sum();

    [Fact]
    public void RmsNorm()
    {
        const int rows = 3, dim = 7;
        float[] x = Random(rows * dim, 1), w = Random(dim, 2), r = Random(rows * dim, 3);
        float[] dx = new float[x.Length], dw = new float[dim];
        for (int row = 0; row < rows; row++) Norms.RmsNormBackward(x.AsSpan(row * dim, dim), w, r.AsSpan(row * dim, dim), dx.AsSpan(row * dim, dim), dw, 1e-5f);
        double Loss(double[] xs, double[] ws) => Dot(Rows(rows, dim, row =>
        {
            var v = xs.AsSpan(row * dim, dim).ToArray();
            double s = 1 / Math.Sqrt(v.Sum(a => a * a) / dim + 1e-5);
            return v.Select((a, i) => a * s * ws[i]).ToArray();
        }), r);
        AssertGradient(Numeric(x, xs => Loss(xs, D(w))), dx, "dx");
        AssertGradient(Numeric(w, ws => Loss(D(x), ws)), dw, "dw");
    }

    [Fact]
    public void LayerNorm()
    {
        const int rows = 3, dim = 9;
        float[] x = Random(rows * dim, 4), w = Random(dim, 5), b = Random(dim, 6), r = Random(rows * dim, 7);
        float[] dx = new float[x.Length], dw = new float[dim], db = new float[dim];
        for (int row = 0; row < rows; row++)
            Norms.LayerNormBackward(x.AsSpan(row * dim, dim), w, r.AsSpan(row * dim, dim), dx.AsSpan(row * dim, dim), dw, db, 1e-5f);
        double Loss(double[] xs, double[] ws, double[] bs) => Dot(Rows(rows, dim, row =>
        {
            var v = xs.AsSpan(row * dim, dim).ToArray();
            double mean = v.Average(), variance = v.Select(a => (a - mean) * (a - mean)).Average();
            return v.Select((a, i) => (a - mean) / Math.Sqrt(variance + 1e-5) * ws[i] + bs[i]).ToArray();
        }), r);
        AssertGradient(Numeric(x, xs => Loss(xs, D(w), D(b))), dx, "dx");
        AssertGradient(Numeric(w, ws => Loss(D(x), ws, D(b))), dw, "dw");
        AssertGradient(Numeric(b, bs => Loss(D(x), D(w), bs)), db, "db");
    }

    [Fact]
    public void SwiGluAndGelu()
    {
        const int n = 11;
        float[] gate = Random(n, 8, 3f), up = Random(n, 9), r = Random(n, 10);
        float[] dgate = new float[n], dup = new float[n], dx = new float[n];
        Activations.SwiGluBackward(gate, up, r, dgate, dup);
        Activations.GeluBackward(gate, r, dx);
        static double Silu(double g) => g / (1 + Math.Exp(-g));
        AssertGradient(Numeric(gate, g => Dot([.. g.Select((v, i) => Silu(v) * up[i])], r)), dgate, "dgate");
        AssertGradient(Numeric(up, u => Dot([.. u.Select((v, i) => Silu(gate[i]) * v)], r)), dup, "dup");
        static double Gelu(double v) => 0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
        AssertGradient(Numeric(gate, g => Dot([.. g.Select(Gelu)], r)), dx, "gelu dx");
    }

    [Theory]
    [InlineData(RopeLayout.Interleaved, 6)]
    [InlineData(RopeLayout.HalfSplit, 6)]
    [InlineData(RopeLayout.Interleaved, 4)]   // partial rotary: the last 2 dims of each head pass through
    public void Rope(RopeLayout layout, int rotaryDim)
    {
        const int heads = 3, headDim = 6, pos = 7;
        float[] x = Random(heads * headDim, 11), r = Random(heads * headDim, 12);
        float[] dx = (float[])r.Clone();
        RotaryEmbedding.Backward(dx, pos, heads, headDim, rotaryDim, 10000f, layout);
        double Loss(double[] xs)
        {
            var y = (double[])xs.Clone();
            int pairs = rotaryDim / 2, stride = layout == RopeLayout.Interleaved ? 1 : pairs;
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < pairs; i++)
                {
                    int first = h * headDim + (layout == RopeLayout.Interleaved ? 2 * i : i);
                    double angle = pos * (1.0f / MathF.Pow(10000f, 2 * i / (float)rotaryDim));
                    double x0 = xs[first], x1 = xs[first + stride];
                    y[first] = x0 * Math.Cos(angle) - x1 * Math.Sin(angle);
                    y[first + stride] = x0 * Math.Sin(angle) + x1 * Math.Cos(angle);
                }
            return Dot(y, r);
        }
        AssertGradient(Numeric(x, Loss), dx, "dx");
    }

    [Fact]
    public void Linear()
    {
        const int m = 3, n = 5, k = 7;
        float[] x = Random(m * k, 13), w = Random(n * k, 14), b = Random(n, 15), r = Random(m * n, 16);
        float[] dx = new float[x.Length], dw = new float[w.Length], db = new float[n];
        using var pool = new WorkerPool(2);
        using var linear = new Cluster.Compute.Cpu.Linear(pool);
        linear.Backward(x, w, 0, r, dx, dw, db, m, n, k);
        double Loss(double[] xs, double[] ws, double[] bs)
        {
            var y = new double[m * n];
            for (int i = 0; i < m; i++)
                for (int o = 0; o < n; o++)
                {
                    double sum = bs[o];
                    for (int j = 0; j < k; j++) sum += xs[i * k + j] * ws[o * k + j];
                    y[i * n + o] = sum;
                }
            return Dot(y, r);
        }
        AssertGradient(Numeric(x, xs => Loss(xs, D(w), D(b))), dx, "dx");
        AssertGradient(Numeric(w, ws => Loss(D(x), ws, D(b))), dw, "dw");
        AssertGradient(Numeric(b, bs => Loss(D(x), D(w), bs)), db, "db");
    }

    [Fact]
    public void Embedding()
    {
        const int vocab = 6, dim = 5;
        int[] tokens = [2, 0, 2, 5];
        float[] table = Random(vocab * dim, 17), r = Random(tokens.Length * dim, 18);
        float[] dtable = new float[table.Length];
        EmbeddingBackward.Backward(tokens, r, dtable, dim);
        AssertGradient(Numeric(table, t => Dot([.. tokens.SelectMany(tok => t.AsSpan(tok * dim, dim).ToArray())], r)), dtable, "dtable");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]   // two packed documents: attention never crosses
    public void Attention(bool packed)
    {
        const int T = 5, heads = 4, kvHeads = 2, hd = 3;
        int[] documents = packed ? [0, 0, 1, 1, 1] : [];
        float[] q = Random(T * heads * hd, 19), k = Random(T * kvHeads * hd, 20), v = Random(T * kvHeads * hd, 21), r = Random(T * heads * hd, 22);
        float[] output = new float[q.Length], probs = new float[heads * T * T];
        CausalAttention.Forward(q, k, v, output, probs, documents, T, heads, kvHeads, hd);
        float[] dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length];
        CausalAttention.Backward(q, k, v, probs, r, dq, dk, dv, T, heads, kvHeads, hd);

        double Loss(double[] qs, double[] ks, double[] vs)
        {
            var y = new double[T * heads * hd];
            for (int h = 0; h < heads; h++)
                for (int t = 0; t < T; t++)
                {
                    int kvh = h / (heads / kvHeads);
                    var visible = Enumerable.Range(0, t + 1).Where(s => !packed || documents[s] == documents[t]).ToArray();
                    var scores = visible.Select(s => Enumerable.Range(0, hd).Sum(d => qs[(t * heads + h) * hd + d] * ks[(s * kvHeads + kvh) * hd + d]) / Math.Sqrt(hd)).ToArray();
                    double max = scores.Max(), sum = scores.Sum(a => Math.Exp(a - max));
                    for (int i = 0; i < visible.Length; i++)
                        for (int d = 0; d < hd; d++)
                            y[(t * heads + h) * hd + d] += Math.Exp(scores[i] - max) / sum * vs[(visible[i] * kvHeads + kvh) * hd + d];
                }
            return Dot(y, r);
        }
        AssertGradient(Numeric(q, qs => Loss(qs, D(k), D(v))), dq, "dq");
        AssertGradient(Numeric(k, ks => Loss(D(q), ks, D(v))), dk, "dk");
        AssertGradient(Numeric(v, vs => Loss(D(q), D(k), vs)), dv, "dv");
        if (packed) Assert.Equal(0f, probs[(0 * T + 2) * T + 1]);   // token 2 (document 1) never sees token 1 (document 0)
    }

    [Fact]
    public void CrossEntropyLossAndGradient()
    {
        const int T = 4, V = 7;
        int[] targets = [3, CrossEntropy.Ignore, 0, 6];
        float[] logits = Random(T * V, 23, 3f), dlogits = new float[T * V];
        float loss = CrossEntropy.LossAndGradient(logits, targets, dlogits, V);
        double Loss(double[] l)
        {
            double total = 0;
            int counted = 0;
            for (int t = 0; t < T; t++)
            {
                if (targets[t] == CrossEntropy.Ignore) continue;
                var row = l.AsSpan(t * V, V).ToArray();
                double max = row.Max();
                total += Math.Log(row.Sum(a => Math.Exp(a - max))) + max - row[targets[t]];
                counted++;
            }
            return total / counted;
        }
        Assert.Equal(Loss(D(logits)), loss, 1e-5);
        AssertGradient(Numeric(logits, Loss), dlogits, "dlogits");
        Assert.All(dlogits.AsSpan(V, V).ToArray(), g => Assert.Equal(0f, g));   // the ignored row
    }

    [Fact]
    public void AdamWMatchesItsDefinition()
    {
        const int n = 9;
        float[] p = Random(n, 24), m = new float[n], v = new float[n];
        double[] pd = D(p), md = new double[n], vd = new double[n];
        for (int step = 1; step <= 3; step++)
        {
            float[] g = Random(n, 30 + step);
            AdamW.Update(p, g, m, v, step, learningRate: 1e-2f, weightDecay: 0.1f);
            for (int i = 0; i < n; i++)
            {
                md[i] = 0.9 * md[i] + 0.1 * g[i];
                vd[i] = 0.999 * vd[i] + 0.001 * g[i] * g[i];
                double mHat = md[i] / (1 - Math.Pow(0.9, step)), vHat = vd[i] / (1 - Math.Pow(0.999, step));
                pd[i] -= 1e-2 * (mHat / (Math.Sqrt(vHat) + 1e-8) + 0.1 * pd[i]);
            }
        }
        for (int i = 0; i < n; i++) Assert.Equal(pd[i], p[i], 1e-5);
    }

    private static double[] Rows(int rows, int dim, Func<int, double[]> row) => [.. Enumerable.Range(0, rows).SelectMany(row)];
}
