// The kernels of a training step, wherever they run: the matrix products, SwiGLU and GELU, RMSNorm and LayerNorm, RoPE,
// causal attention, each with its backward, the cross-entropy with its gradient, the embedding's gradient and AdamW. CpuTrainingKernels runs them on the host (the packed AVX-512 GEMM and the CPU kernels);
// DeviceTrainingKernels on any IDevice (ILGPU on a GPU, or its CPU accelerator to check it), copying the step's host
// tensors to the device and back each call: the GPU path's kernels checked end to end, not a fast path. AdamW's update
// too (the optimizers call it through their model's kernels).
using System.Numerics.Tensors;
using Cluster.Compute.Cpu;

namespace Cluster.Compute;

public interface ITrainingKernels : IDisposable
{
    /// <summary>y (M, N) = x (M, K) · Wᵀ (+ b when not empty).</summary>
    void Forward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k);

    /// <summary>dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy (db may be empty; dw empty skips both).</summary>
    void Backward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k);

    /// <summary>Drops every weight's prepared copy: call when the weights may have changed.</summary>
    void ForgetPacked();

    /// <summary>Drops one weight's prepared copies (its owner is letting go of it).</summary>
    void Forget(float[] w);

    /// <summary>gate (n,) = silu(gate) · up, in place.</summary>
    void SwiGlu(float[] gate, float[] up);
    /// <summary>dgate, dup (n,) += the gradients of SwiGlu at its inputs gate, up.</summary>
    void SwiGluBackward(float[] gate, float[] up, float[] dout, float[] dgate, float[] dup);
    /// <summary>x (n,) = gelu(x), in place.</summary>
    void Gelu(float[] x);
    /// <summary>dx (n,) += dout · gelu'(x).</summary>
    void GeluBackward(float[] x, float[] dout, float[] dx);
    /// <summary>y (rows, dim) = RMSNorm(x) · w.</summary>
    void RmsNorm(float[] x, float[] w, float[] y, int rows, float eps);
    /// <summary>dx (rows, dim) += ∂L/∂x, dw (dim,) += ∂L/∂w.</summary>
    void RmsNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, int rows, float eps);
    /// <summary>y (rows, dim) = LayerNorm(x) · w + b.</summary>
    void LayerNorm(float[] x, float[] w, float[] b, float[] y, int rows, float eps);
    /// <summary>dx (rows, dim) += ∂L/∂x, dw, db (dim,) += theirs.</summary>
    void LayerNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, float[] db, int rows, float eps);
    /// <summary>Rotates x (T, heads·headDim) in place by each token's position (RoPE), or back by it for the backward.</summary>
    void Rope(float[] x, int[] positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout, bool backward);
    /// <summary>CrossEntropy.LossAndGradient: the mean loss over counted targets (T,; −1 = not counted), dlogits (T, vocab).</summary>
    float CrossEntropy(float[] logits, int[] targets, float[] dlogits, int vocab);
    /// <summary>Cpu.CausalAttention.Forward of one packed sequence (output, probs written).</summary>
    void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, Span<float> probs, ReadOnlySpan<int> documents,
        int tokens, int heads, int kvHeads, int headDim);
    /// <summary>Cpu.CausalAttention.Backward of one packed sequence (dq, dk, dv accumulate).</summary>
    void AttentionBackward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> probs, ReadOnlySpan<float> dout,
        Span<float> dq, Span<float> dk, Span<float> dv, int tokens, int heads, int kvHeads, int headDim);
    /// <summary>dtable[rows[t]] += dx[t] (T, dim), skipping rows of −1.</summary>
    void EmbeddingBackward(int[] rows, float[] dx, float[] dtable, int dim);
    /// <summary>Cpu.AdamW.Update: one update of the parameters from their gradients, moments in place.</summary>
    void AdamW(Span<float> parameters, ReadOnlySpan<float> gradients, Span<float> m, Span<float> v, int step, float learningRate,
        float beta1, float beta2, float eps, float weightDecay);
}

/// <summary>The host's kernels: products on the packed GEMM (Linear), the rest row by row.</summary>
public sealed class CpuTrainingKernels(WorkerPool pool, bool bfloat16 = false) : ITrainingKernels
{
    private readonly Linear _linear = new(pool, bfloat16);

    public void Forward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k) => _linear.Forward(x, w, b, y, m, n, k);
    public void Backward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k) =>
        _linear.Backward(x, w, dy, dx, dw, db, m, n, k);
    public void ForgetPacked() => _linear.ForgetPacked();
    public void Forget(float[] w) => _linear.Forget(w);
    public void SwiGlu(float[] gate, float[] up) => Activations.SwiGlu(gate, up);
    public void SwiGluBackward(float[] gate, float[] up, float[] dout, float[] dgate, float[] dup) => Activations.SwiGluBackward(gate, up, dout, dgate, dup);
    public void Gelu(float[] x) => Activations.Gelu(x);
    public void GeluBackward(float[] x, float[] dout, float[] dx) => Activations.GeluBackward(x, dout, dx);

    public void RmsNorm(float[] x, float[] w, float[] y, int rows, float eps)
    {
        int dim = w.Length;
        for (int r = 0; r < rows; r++) Norms.RmsNorm(x.AsSpan(r * dim, dim), w, y.AsSpan(r * dim, dim), eps);
    }

    public void RmsNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, int rows, float eps)
    {
        int dim = w.Length;
        for (int r = 0; r < rows; r++) Norms.RmsNormBackward(x.AsSpan(r * dim, dim), w, dy.AsSpan(r * dim, dim), dx.AsSpan(r * dim, dim), dw, eps);
    }

    public void LayerNorm(float[] x, float[] w, float[] b, float[] y, int rows, float eps)
    {
        int dim = w.Length;
        for (int r = 0; r < rows; r++) Norms.LayerNorm(x.AsSpan(r * dim, dim), w, b, y.AsSpan(r * dim, dim), eps);
    }

    public void LayerNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, float[] db, int rows, float eps)
    {
        int dim = w.Length;
        for (int r = 0; r < rows; r++) Norms.LayerNormBackward(x.AsSpan(r * dim, dim), w, dy.AsSpan(r * dim, dim), dx.AsSpan(r * dim, dim), dw, db, eps);
    }

    public void Rope(float[] x, int[] positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout, bool backward)
    {
        int width = heads * headDim;
        for (int t = 0; t < positions.Length; t++)
            if (backward) RotaryEmbedding.Backward(x.AsSpan(t * width, width), positions[t], heads, headDim, rotaryDim, theta, layout);
            else RotaryEmbedding.Apply(x.AsSpan(t * width, width), positions[t], heads, headDim, rotaryDim, theta, layout);
    }

    /// <summary>The rows split over the worker pool; the partial sums add in row order (the same bits for the same threads).</summary>
    public float CrossEntropy(float[] logits, int[] targets, float[] dlogits, int vocab)
    {
        int counted = Cpu.CrossEntropy.Counted(targets, vocab);
        if (counted == 0)
        {
            Array.Clear(dlogits);
            return 0;
        }
        int rows = targets.Length, workers = Math.Min(pool.Threads, rows);
        var partials = new double[workers];
        pool.Run(worker =>
        {
            if (worker >= workers) return;
            int r0 = (int)((long)rows * worker / workers), r1 = (int)((long)rows * (worker + 1) / workers);
            partials[worker] = Cpu.CrossEntropy.SumOverRows(logits.AsSpan(r0 * vocab, (r1 - r0) * vocab), targets.AsSpan(r0, r1 - r0),
                dlogits.AsSpan(r0 * vocab, (r1 - r0) * vocab), vocab, counted);
        });
        return (float)(partials.Sum() / counted);
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, Span<float> probs, ReadOnlySpan<int> documents,
        int tokens, int heads, int kvHeads, int headDim) => CausalAttention.Forward(q, k, v, output, probs, documents, tokens, heads, kvHeads, headDim);

    public void AttentionBackward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> probs, ReadOnlySpan<float> dout,
        Span<float> dq, Span<float> dk, Span<float> dv, int tokens, int heads, int kvHeads, int headDim) =>
        CausalAttention.Backward(q, k, v, probs, dout, dq, dk, dv, tokens, heads, kvHeads, headDim);

    public void EmbeddingBackward(int[] rows, float[] dx, float[] dtable, int dim)
    {
        for (int t = 0; t < rows.Length; t++)
            if (rows[t] >= 0) TensorPrimitives.Add(dtable.AsSpan(rows[t] * dim, dim), dx.AsSpan(t * dim, dim), dtable.AsSpan(rows[t] * dim, dim));
    }

    /// <summary>Cpu.AdamW.Update over the pool's threads, in chunks (element by element, so the result is the same for any split).</summary>
    public unsafe void AdamW(Span<float> parameters, ReadOnlySpan<float> gradients, Span<float> m, Span<float> v, int step, float learningRate,
        float beta1, float beta2, float eps, float weightDecay)
    {
        const int Chunk = 1 << 15;
        int n = parameters.Length;
        if (pool.Threads == 1 || n < 2 * Chunk)
        {
            Cpu.AdamW.Update(parameters, gradients, m, v, step, learningRate, beta1, beta2, eps, weightDecay);
            return;
        }
        Cpu.AdamW.RequireLengths(n, gradients.Length, m.Length, v.Length);   // before the workers read through pointers
        fixed (float* p = parameters, g = gradients, pm = m, pv = v)
        {
            nint pp = (nint)p, pg = (nint)g, ppm = (nint)pm, ppv = (nint)pv;   // pointers into pinned spans, for the workers
            pool.For((n + Chunk - 1) / Chunk, (from, to) =>
            {
                int start = from * Chunk, length = Math.Min(to * Chunk, n) - start;
                Cpu.AdamW.Update(new Span<float>((float*)pp + start, length), new ReadOnlySpan<float>((float*)pg + start, length),
                    new Span<float>((float*)ppm + start, length), new Span<float>((float*)ppv + start, length),
                    step, learningRate, beta1, beta2, eps, weightDecay);
            });
        }
    }

    public void Dispose() => _linear.Dispose();
}

/// <summary>
/// The kernels on an IDevice: every product is the device's MatMul, y = x · Wᵀ (the backward's dx = dy · W multiplies
/// by Wᵀ, uploaded once per weight version; dW = dyᵀ · x is dyᵀ times xᵀ as the matrix), the rest its backward ops.
/// </summary>
public sealed class DeviceTrainingKernels(IDevice device) : ITrainingKernels
{
    private readonly Dictionary<float[], DeviceMatrix> _weights = new(ReferenceEqualityComparer.Instance);             // W (N, K)
    private readonly Dictionary<float[], DeviceMatrix> _transposedWeights = new(ReferenceEqualityComparer.Instance);   // Wᵀ (K, N)

    public void Forward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k)
    {
        if (!_weights.TryGetValue(w, out var matrix)) _weights[w] = matrix = device.UploadMatrix(w.AsSpan(0, n * k), n, k);
        Multiply(x[..(m * k)], matrix, y[..(m * n)], m);
        if (b.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(y.Slice(row * n, n), b, y.Slice(row * n, n));
    }

    public void Backward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k)
    {
        if (!_transposedWeights.TryGetValue(w, out var transposed)) _transposedWeights[w] = transposed = device.UploadMatrix(Transpose(w, n, k), k, n);
        var product = new float[Math.Max(m * k, n * k)];
        Multiply(dy[..(m * n)], transposed, product.AsSpan(0, m * k), m);                    // dx (M, K) = dy (M, N) · (Wᵀ)ᵀ
        TensorPrimitives.Add(dx[..(m * k)], product.AsSpan(0, m * k), dx[..(m * k)]);
        if (dw.IsEmpty) return;
        using (var xt = device.UploadMatrix(Transpose(x[..(m * k)], m, k), k, m))            // xᵀ (K, M)
            Multiply(Transpose(dy[..(m * n)], m, n), xt, product.AsSpan(0, n * k), n);       // dW (N, K) = dyᵀ (N, M) · (xᵀ)ᵀ
        TensorPrimitives.Add(dw[..(n * k)], product.AsSpan(0, n * k), dw[..(n * k)]);
        if (db.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(db, dy.Slice(row * n, n), db);
    }

    private void Multiply(ReadOnlySpan<float> x, DeviceMatrix w, Span<float> y, int m)
    {
        using var input = device.Upload(x);
        using var output = device.Allocate(y.Length);
        device.MatMul(input, w, output, m);
        device.Download(output, y);
    }

    public void SwiGlu(float[] gate, float[] up) => OnDevice([gate, up], [0], b => device.SwiGlu(b[0], b[1], gate.Length));
    public void SwiGluBackward(float[] gate, float[] up, float[] dout, float[] dgate, float[] dup) =>
        OnDevice([gate, up, dout, dgate, dup], [3, 4], b => device.SwiGluBackward(b[0], b[1], b[2], b[3], b[4], gate.Length));
    public void Gelu(float[] x) => OnDevice([x], [0], b => device.Gelu(b[0], x.Length));
    public void GeluBackward(float[] x, float[] dout, float[] dx) => OnDevice([x, dout, dx], [2], b => device.GeluBackward(b[0], b[1], b[2], x.Length));
    public void RmsNorm(float[] x, float[] w, float[] y, int rows, float eps) =>
        OnDevice([x, w, y], [2], b => device.RmsNorm(b[0], b[1], b[2], rows, w.Length, eps));
    public void RmsNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, int rows, float eps) =>
        OnDevice([x, w, dy, dx, dw], [3, 4], b => device.RmsNormBackward(b[0], b[1], b[2], b[3], b[4], rows, w.Length, eps));

    public void LayerNorm(float[] x, float[] w, float[] b, float[] y, int rows, float eps) =>
        OnDevice([x, w, b, y], [3], t => device.LayerNorm(t[0], t[1], t[2], t[3], rows, w.Length, eps));
    public void LayerNormBackward(float[] x, float[] w, float[] dy, float[] dx, float[] dw, float[] db, int rows, float eps) =>
        OnDevice([x, w, dy, dx, dw, db], [3, 4, 5], t => device.LayerNormBackward(t[0], t[1], t[2], t[3], t[4], t[5], rows, w.Length, eps));

    public void Rope(float[] x, int[] positions, int heads, int headDim, int rotaryDim, float theta, RopeLayout layout, bool backward) =>
        OnDevice([x], [0], t =>
        {
            if (backward) device.RopeBackward(t[0], positions, heads, headDim, rotaryDim, theta, layout);
            else device.Rope(t[0], positions, heads, headDim, rotaryDim, theta, layout);
        });

    public float CrossEntropy(float[] logits, int[] targets, float[] dlogits, int vocab)
    {
        int counted = Cpu.CrossEntropy.Counted(targets, vocab);
        if (counted == 0)
        {
            Array.Clear(dlogits);
            return 0;
        }
        var losses = new float[targets.Length];
        OnDevice([logits, dlogits, losses], [1, 2], t => device.CrossEntropy(t[0], targets, t[1], t[2], vocab, counted));
        return (float)(losses.Sum(l => (double)l) / counted);
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> output, Span<float> probs, ReadOnlySpan<int> documents,
        int tokens, int heads, int kvHeads, int headDim)
    {
        using DeviceBuffer qb = device.Upload(q), kb = device.Upload(k), vb = device.Upload(v), ob = device.Allocate(output.Length), pb = device.Allocate(probs.Length);
        device.CausalAttention(qb, kb, vb, ob, pb, documents, tokens, heads, kvHeads, headDim);
        device.Download(ob, output);
        device.Download(pb, probs);
    }

    public void AttentionBackward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> probs, ReadOnlySpan<float> dout,
        Span<float> dq, Span<float> dk, Span<float> dv, int tokens, int heads, int kvHeads, int headDim)
    {
        using DeviceBuffer qb = device.Upload(q), kb = device.Upload(k), vb = device.Upload(v), pb = device.Upload(probs), ob = device.Upload(dout),
            dqb = device.Upload(dq), dkb = device.Upload(dk), dvb = device.Upload(dv);
        device.CausalAttentionBackward(qb, kb, vb, pb, ob, dqb, dkb, dvb, tokens, heads, kvHeads, headDim);
        device.Download(dqb, dq);
        device.Download(dkb, dk);
        device.Download(dvb, dv);
    }

    public void EmbeddingBackward(int[] rows, float[] dx, float[] dtable, int dim) =>
        OnDevice([dx, dtable], [1], t => device.EmbeddingBackward(rows, t[0], t[1], dim));

    public void AdamW(Span<float> parameters, ReadOnlySpan<float> gradients, Span<float> m, Span<float> v, int step, float learningRate,
        float beta1, float beta2, float eps, float weightDecay)
    {
        using DeviceBuffer pb = device.Upload(parameters), gb = device.Upload(gradients), mb = device.Upload(m), vb = device.Upload(v);
        device.AdamW(pb, gb, mb, vb, parameters.Length, step, learningRate, beta1, beta2, eps, weightDecay);
        device.Download(pb, parameters);
        device.Download(mb, m);
        device.Download(vb, v);
    }

    /// <summary>Uploads the tensors, runs <paramref name="work"/> on their device buffers, downloads the ones it writes.</summary>
    private void OnDevice(float[][] tensors, int[] written, Action<DeviceBuffer[]> work)
    {
        var buffers = tensors.Select(t => device.Upload(t)).ToArray();
        try
        {
            work(buffers);
            foreach (int i in written) device.Download(buffers[i], tensors[i]);
        }
        finally
        {
            foreach (var buffer in buffers) buffer.Dispose();
        }
    }

    private static float[] Transpose(ReadOnlySpan<float> a, int rows, int cols)
    {
        var t = new float[rows * cols];
        Linear.Transpose(a, rows, cols, t);
        return t;
    }

    public void ForgetPacked()
    {
        foreach (var matrix in _weights.Values.Concat(_transposedWeights.Values)) matrix.Dispose();
        _weights.Clear();
        _transposedWeights.Clear();
    }

    public void Forget(float[] w)
    {
        if (_weights.Remove(w, out var matrix)) matrix.Dispose();
        if (_transposedWeights.Remove(w, out var transposed)) transposed.Dispose();
    }

    public void Dispose() => ForgetPacked();
}
