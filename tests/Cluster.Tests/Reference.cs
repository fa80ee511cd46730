// Plain, obviously-correct versions of the engine's kernels (llm.c style): double accumulation, no
// blocking, no SIMD, no paging. The fast kernels are tested against these.
namespace Cluster.Tests;

public static class Reference
{
    /// <summary>y (M, N) = x (M, K) · Wᵀ, W (N, K).</summary>
    public static float[] MatMul(float[] x, float[] w, int m, int n, int k)
    {
        var y = new float[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int kk = 0; kk < k; kk++) sum += (double)x[i * k + kk] * w[j * k + kk];
                y[i * n + j] = (float)sum;
            }
        return y;
    }

    /// <summary>Causal attention of one sequence (T, heads·hd) with K, V (T, kvHeads·hd), softmax over the full row.</summary>
    public static float[] CausalAttention(float[] q, float[] k, float[] v, int T, int heads, int kvHeads, int headDim)
    {
        var output = new float[T * heads * headDim];
        int kvDim = kvHeads * headDim;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < heads; h++)
            {
                int kvHead = h / (heads / kvHeads);
                var scores = new double[t + 1];
                for (int s = 0; s <= t; s++)
                {
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += (double)q[(t * heads + h) * headDim + d] * k[s * kvDim + kvHead * headDim + d];
                    scores[s] = dot / Math.Sqrt(headDim);
                }
                double max = scores.Max(), sum = scores.Sum(sc => Math.Exp(sc - max));
                for (int d = 0; d < headDim; d++)
                {
                    double acc = 0;
                    for (int s = 0; s <= t; s++) acc += Math.Exp(scores[s] - max) / sum * v[s * kvDim + kvHead * headDim + d];
                    output[(t * heads + h) * headDim + d] = (float)acc;
                }
            }
        return output;
    }

    public static float[] Random(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var data = new float[n];
        for (int i = 0; i < n; i++) data[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return data;
    }

    /// <summary>max |a − b| / max(|b|, 1) over all elements.</summary>
    public static double MaxRelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        Assert.Equal(expected.Length, actual.Length);
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.False(float.IsNaN(actual[i]), $"NaN at {i}");
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / Math.Max(Math.Abs(expected[i]), 1.0));
        }
        return worst;
    }

    /// <summary>
    /// Each parameter's analytic gradient at its first, middle and last element against the central difference of
    /// <paramref name="loss"/> (step 1e-2, in double): within 2e-2 relative + 2e-4 absolute.
    /// </summary>
    public static void AssertGradientsMatchFiniteDifferences(IEnumerable<(string Name, float[] Parameter, float[] Gradient)> parameters, Func<double> loss)
    {
        foreach (var (name, parameter, gradient) in parameters)
            foreach (int i in new[] { 0, parameter.Length / 2, parameter.Length - 1 })
            {
                float keep = parameter[i];
                const float h = 1e-2f;
                parameter[i] = keep + h; double up = loss();
                parameter[i] = keep - h; double down = loss();
                parameter[i] = keep;
                double numeric = (up - down) / (2 * h);
                Assert.True(Math.Abs(gradient[i] - numeric) <= 2e-2 * Math.Abs(numeric) + 2e-4, $"{name}[{i}]: analytic {gradient[i]:E3}, numeric {numeric:E3}");
            }
    }
}
