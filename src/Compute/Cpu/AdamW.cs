// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, one parameter tensor at a time, fp32 state.
// Vectorized with the same operations in the same order as the scalar tail, so every element's result is the same
// whichever path computed it (vector division and square root round as the scalar ones do; nothing is fused).
using System.Numerics;
using System.Runtime.InteropServices;

namespace Cluster.Compute.Cpu;

public static class AdamW
{
    /// <summary>Update over the pool's threads, in chunks (element by element, so the result is the same for any split).</summary>
    public static unsafe void Update(WorkerPool pool, Span<float> parameters, ReadOnlySpan<float> gradients, Span<float> m, Span<float> v,
        int step, float learningRate, float beta1, float beta2, float eps, float weightDecay)
    {
        const int Chunk = 1 << 15;
        int n = parameters.Length;
        if (pool.Threads == 1 || n < 2 * Chunk)
        {
            Update(parameters, gradients, m, v, step, learningRate, beta1, beta2, eps, weightDecay);
            return;
        }
        RequireLengths(n, gradients.Length, m.Length, v.Length);   // before the workers read through pointers
        fixed (float* p = parameters, g = gradients, pm = m, pv = v)
        {
            nint pp = (nint)p, pg = (nint)g, ppm = (nint)pm, ppv = (nint)pv;   // pointers into pinned spans, for the workers
            pool.For((n + Chunk - 1) / Chunk, (from, to) =>
            {
                int start = from * Chunk, length = Math.Min(to * Chunk, n) - start;
                Update(new Span<float>((float*)pp + start, length), new ReadOnlySpan<float>((float*)pg + start, length),
                    new Span<float>((float*)ppm + start, length), new Span<float>((float*)ppv + start, length),
                    step, learningRate, beta1, beta2, eps, weightDecay);
            });
        }
    }

    /// <summary>
    /// One update of step <paramref name="step"/> (1-based): m, v (n,) are the moments, updated in place;
    /// p −= lr · (m̂ / (sqrt(v̂) + eps) + weightDecay · p).
    /// </summary>
    public static void Update(Span<float> parameters, ReadOnlySpan<float> gradients, Span<float> m, Span<float> v,
        int step, float learningRate, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, float weightDecay = 0f)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "steps count from 1");
        int n = parameters.Length;
        RequireLengths(n, gradients.Length, m.Length, v.Length);
        float correction1 = 1f - MathF.Pow(beta1, step), correction2 = 1f - MathF.Pow(beta2, step);
        int i = 0;
        if (Vector.IsHardwareAccelerated && n >= Vector<float>.Count)
        {
            var p = MemoryMarshal.Cast<float, Vector<float>>(parameters);
            var g = MemoryMarshal.Cast<float, Vector<float>>(gradients);
            var vm = MemoryMarshal.Cast<float, Vector<float>>(m);
            var vv = MemoryMarshal.Cast<float, Vector<float>>(v);
            Vector<float> b1 = new(beta1), b2 = new(beta2), c1 = new(1f - beta1), c2 = new(1f - beta2);
            Vector<float> k1 = new(correction1), k2 = new(correction2), lr = new(learningRate), e = new(eps), wd = new(weightDecay);
            int vectors = n / Vector<float>.Count;
            for (int j = 0; j < vectors; j++)
            {
                var gj = g[j];
                var mj = b1 * vm[j] + c1 * gj;
                var vj = b2 * vv[j] + c2 * gj * gj;
                vm[j] = mj;
                vv[j] = vj;
                p[j] -= lr * (mj / k1 / (Vector.SquareRoot(vj / k2) + e) + wd * p[j]);
            }
            i = vectors * Vector<float>.Count;
        }
        for (; i < n; i++)
        {
            float g = gradients[i];
            m[i] = beta1 * m[i] + (1f - beta1) * g;
            v[i] = beta2 * v[i] + (1f - beta2) * g * g;
            float mHat = m[i] / correction1, vHat = v[i] / correction2;
            parameters[i] -= learningRate * (mHat / (MathF.Sqrt(vHat) + eps) + weightDecay * parameters[i]);
        }
    }

    /// <summary>Throws unless there are gradients and both moments for each of the <paramref name="n"/> parameters.</summary>
    public static void RequireLengths(int n, int gradients, int m, int v)
    {
        if (gradients < n || m < n || v < n)
            throw new ArgumentException($"AdamW of {n} parameters needs as many gradients and moments ({gradients}, {m}, {v})");
    }
}
