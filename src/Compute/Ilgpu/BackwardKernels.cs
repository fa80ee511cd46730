// Backward kernels for training, one thread per element or per row / column, in the CPU backend's operation order:
// SwiGLU's and GELU's input gradients, and RMSNorm's (a row pass for dx and each row's scale, then a column pass
// summing the weight's gradient over the rows, so no two threads add into the same element).
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
}
