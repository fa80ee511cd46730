// Backward kernels for training, one thread per element or per row / column, in the CPU backend's operation order:
// SwiGLU's and GELU's input gradients, RMSNorm's and LayerNorm's (a row pass for dx and each row's statistics, then a
// column pass summing the weight's (and bias's) gradient over the rows, so no two threads add into the same element),
// and the cross-entropy of logit rows with its gradient. RoPE's backward is the forward kernel turning the other way.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class BackwardKernels
{
    /// <summary>dup += dout·silu(g), dgate += dout·up·σ(g)·(1 + g·(1 − σ(g))).</summary>
    public static void SwiGlu(Index1D i, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dout, ArrayView<float> dgate, ArrayView<float> dup)
    {
        float g = gate[i], sigmoid = 1f / (1f + MathF.Exp(-g));
        dup[i] += dout[i] * g * sigmoid;
        dgate[i] += dout[i] * up[i] * sigmoid * (1f + g * (1f - sigmoid));
    }

    /// <summary>dx += dout·gelu'(x) for GELU's tanh approximation.</summary>
    public static void Gelu(Index1D i, ArrayView<float> x, ArrayView<float> dout, ArrayView<float> dx)
    {
        const float SqrtTwoOverPi = 0.7978845608f;
        float v = x[i], u = SqrtTwoOverPi * (v + 0.044715f * v * v * v);
        float t = 1f - 2f / (MathF.Exp(2f * u) + 1f);   // tanh(u), without CUDA's approximate tanh
        float du = SqrtTwoOverPi * (1f + 3f * 0.044715f * v * v);
        dx[i] += dout[i] * (0.5f * (1f + t) + 0.5f * v * (1f - t * t) * du);
    }

    /// <summary>One thread per row r: scale[r] = 1/√(mean(x²) + eps) and dx[r] += dy·w·scale − x·scale³·mean(dy·w·x).</summary>
    public static void RmsNormRows(Index1D r, ArrayView<float> x, ArrayView<float> w, ArrayView<float> dy, ArrayView<float> dx, ArrayView<float> scales, int dim, float eps)
    {
        int row = r * dim;
        float squares = 0f;
        double dot = 0;
        for (int i = 0; i < dim; i++)
        {
            float v = x[row + i];
            squares += v * v;
            dot += (double)dy[row + i] * w[i] * v;
        }
        float scale = 1f / MathF.Sqrt(squares / dim + eps);
        scales[r] = scale;
        float correction = (float)(dot / dim) * scale * scale * scale;
        for (int i = 0; i < dim; i++) dx[row + i] += dy[row + i] * w[i] * scale - x[row + i] * correction;
    }

    /// <summary>One thread per column c: dw[c] += Σ_rows dy·x·scale (rows in order, as the CPU backend adds them).</summary>
    public static void RmsNormWeight(Index1D c, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> scales, ArrayView<float> dw, int rows, int dim)
    {
        float sum = dw[c];
        for (int r = 0; r < rows; r++) sum += dy[r * dim + c] * x[r * dim + c] * scales[r];
        dw[c] = sum;
    }

    /// <summary>One thread per row r: LayerNorm's dx[r] += rstd·(dy·w − mean(dy·w) − x̂·mean(dy·w·x̂)); stats[2r], [2r+1] = mean, rstd.</summary>
    public static void LayerNormRows(Index1D r, ArrayView<float> x, ArrayView<float> w, ArrayView<float> dy, ArrayView<float> dx, ArrayView<float> stats, int dim, float eps)
    {
        int row = r * dim;
        float sum = 0f;
        for (int i = 0; i < dim; i++) sum += x[row + i];
        float mean = sum / dim;
        double variance = 0;
        for (int i = 0; i < dim; i++) variance += (double)(x[row + i] - mean) * (x[row + i] - mean);
        float rstd = 1f / MathF.Sqrt((float)(variance / dim) + eps);
        double meanG = 0, meanGx = 0;
        for (int i = 0; i < dim; i++)
        {
            float g = dy[row + i] * w[i], xhat = (x[row + i] - mean) * rstd;
            meanG += g;
            meanGx += g * xhat;
        }
        float mg = (float)(meanG / dim), mgx = (float)(meanGx / dim);
        for (int i = 0; i < dim; i++)
        {
            float xhat = (x[row + i] - mean) * rstd;
            dx[row + i] += rstd * (dy[row + i] * w[i] - mg - xhat * mgx);
        }
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }

    /// <summary>One thread per column c: dw[c] += Σ_rows dy·x̂, db[c] += Σ_rows dy.</summary>
    public static void LayerNormWeight(Index1D c, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> stats, ArrayView<float> dw, ArrayView<float> db, int rows, int dim)
    {
        float sumW = dw[c], sumB = db[c];
        for (int r = 0; r < rows; r++)
        {
            float d = dy[r * dim + c];
            sumB += d;
            sumW += d * ((x[r * dim + c] - stats[2 * r]) * stats[2 * r + 1]);
        }
        dw[c] = sumW;
        db[c] = sumB;
    }

    /// <summary>
    /// One thread per row r with a counted target: losses[r] = −log softmax(logits[r])[target] and dlogits[r] =
    /// (softmax − onehot) / counted; rows whose target is −1 get zero gradient and loss.
    /// </summary>
    public static void CrossEntropy(Index1D r, ArrayView<float> logits, ArrayView<int> targets, ArrayView<float> dlogits, ArrayView<float> losses, int vocab, int counted)
    {
        int row = r * vocab, target = targets[r];
        if (target < 0)
        {
            for (int i = 0; i < vocab; i++) dlogits[row + i] = 0f;
            losses[r] = 0f;
            return;
        }
        float max = logits[row];
        for (int i = 1; i < vocab; i++) max = MathF.Max(max, logits[row + i]);
        float sum = 0f;
        for (int i = 0; i < vocab; i++)
        {
            float e = MathF.Exp(logits[row + i] - max);
            dlogits[row + i] = e;
            sum += e;
        }
        losses[r] = MathF.Log(sum) + max - logits[row + target];
        float scale = 1f / (sum * counted);
        for (int i = 0; i < vocab; i++) dlogits[row + i] *= scale;
        dlogits[row + target] -= 1f / counted;
    }

    /// <summary>
    /// First pass of Σ x[i]² over i &lt; n, one partial per group: the grid's threads stride over x, each group adds its
    /// threads' sums in a fixed tree order into partials[group]. With the grid fixed by n, the result does not depend
    /// on scheduling.
    /// </summary>
    public static void SumOfSquaresPartials(ArrayView<float> x, int n, ArrayView<float> partials)
    {
        var scratch = SharedMemory.Allocate<float>(GroupReduce.GroupSize);
        float squares = 0f;
        for (int i = Grid.GlobalIndex.X; i < n; i += Grid.DimX * Group.DimX) squares += x[i] * x[i];
        float total = GroupReduce.Sum(scratch, squares);
        if (Group.IdxX == 0) partials[Grid.IdxX] = total;
    }

    /// <summary>One group: sums[at] = Σ values[i] over i &lt; n (the second pass over the partials), in a fixed tree order.</summary>
    public static void SumInto(ArrayView<float> values, int n, ArrayView<float> sums, int at)
    {
        var scratch = SharedMemory.Allocate<float>(GroupReduce.GroupSize);
        float sum = 0f;
        for (int i = Group.IdxX; i < n; i += GroupReduce.GroupSize) sum += values[i];
        float total = GroupReduce.Sum(scratch, sum);
        if (Group.IdxX == 0) sums[at] = total;
    }

    /// <summary>AdamW on element i (Cpu/AdamW's arithmetic): moments, bias correction (corrections precomputed), decoupled decay.</summary>
    public static void AdamW(Index1D i, ArrayView<float> parameters, ArrayView<float> gradients, ArrayView<float> m, ArrayView<float> v,
        float learningRate, float beta1, float beta2, float eps, float weightDecay, float correction1, float correction2)
    {
        float g = gradients[i];
        m[i] = beta1 * m[i] + (1f - beta1) * g;
        v[i] = beta2 * v[i] + (1f - beta2) * g * g;
        float mHat = m[i] / correction1, vHat = v[i] / correction2;
        parameters[i] -= learningRate * (mHat / (MathF.Sqrt(vHat) + eps) + weightDecay * parameters[i]);
    }
}
