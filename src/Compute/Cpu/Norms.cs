// RMSNorm (Llama) and LayerNorm (GPT-2) over one row, forward and backward.
using System.Numerics.Tensors;

namespace Cluster.Compute.Cpu;

public static class Norms
{
    /// <summary>y (C,) = x · w / sqrt(mean(x²) + eps).</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y, float eps)
    {
        float meanSquare = TensorPrimitives.SumOfSquares(x) / x.Length;
        float scale = 1f / MathF.Sqrt(meanSquare + eps);
        TensorPrimitives.Multiply(x, scale, y);
        TensorPrimitives.Multiply(y, w, y);
    }

    /// <summary>y (C,) = (x − mean) / sqrt(var + eps) · w + b.</summary>
    public static void LayerNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> b, Span<float> y, float eps)
    {
        float mean = TensorPrimitives.Sum(x) / x.Length;
        TensorPrimitives.Subtract(x, mean, y);
        float variance = TensorPrimitives.SumOfSquares(y) / x.Length;
        float scale = 1f / MathF.Sqrt(variance + eps);
        TensorPrimitives.Multiply(y, scale, y);
        TensorPrimitives.FusedMultiplyAdd(y, w, b, y);
    }

    /// <summary>
    /// Backward of <see cref="RmsNorm"/> for one row: dx (C,) += ∂L/∂x and dw (C,) += ∂L/∂w given dy = ∂L/∂y.
    /// With s = 1/sqrt(mean(x²) + eps): dx = s·(dy·w) − x·s³·mean(dy·w·x).
    /// </summary>
    public static void RmsNormBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, float eps)
    {
        int n = x.Length;
        float scale = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(x) / n + eps);
        double dot = 0;                                              // Σ dy·w·x
        for (int i = 0; i < n; i++) dot += (double)dy[i] * w[i] * x[i];
        float correction = (float)(dot / n) * scale * scale * scale;
        for (int i = 0; i < n; i++)
        {
            dw[i] += dy[i] * x[i] * scale;
            dx[i] += dy[i] * w[i] * scale - x[i] * correction;
        }
    }

    /// <summary>
    /// Backward of <see cref="LayerNorm"/> for one row: dx, dw, db (C,) accumulate. With x̂ = (x − mean)·rstd and
    /// g = dy·w: dx = rstd·(g − mean(g) − x̂·mean(g·x̂)).
    /// </summary>
    public static void LayerNormBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, float eps)
    {
        int n = x.Length;
        float mean = TensorPrimitives.Sum(x) / n;
        double variance = 0;
        for (int i = 0; i < n; i++) variance += (double)(x[i] - mean) * (x[i] - mean);
        float rstd = 1f / MathF.Sqrt((float)(variance / n) + eps);
        double meanG = 0, meanGx = 0;
        for (int i = 0; i < n; i++)
        {
            float g = dy[i] * w[i], xhat = (x[i] - mean) * rstd;
            meanG += g;
            meanGx += g * xhat;
        }
        meanG /= n;
        meanGx /= n;
        for (int i = 0; i < n; i++)
        {
            float xhat = (x[i] - mean) * rstd;
            db[i] += dy[i];
            dw[i] += dy[i] * xhat;
            dx[i] += rstd * (dy[i] * w[i] - (float)meanG - xhat * (float)meanGx);
        }
    }
}
