// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, one parameter tensor at a time, fp32 state.
namespace Cluster.Compute.Cpu;

public static class AdamW
{
    /// <summary>
    /// One update of step <paramref name="step"/> (1-based): m, v (n,) are the moments, updated in place;
    /// p −= lr · (m̂ / (sqrt(v̂) + eps) + weightDecay · p).
    /// </summary>
    public static void Update(Span<float> parameters, ReadOnlySpan<float> gradients, Span<float> m, Span<float> v,
        int step, float learningRate, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, float weightDecay = 0f)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "steps count from 1");
        float correction1 = 1f - MathF.Pow(beta1, step), correction2 = 1f - MathF.Pow(beta2, step);
        for (int i = 0; i < parameters.Length; i++)
        {
            float g = gradients[i];
            m[i] = beta1 * m[i] + (1f - beta1) * g;
            v[i] = beta2 * v[i] + (1f - beta2) * g * g;
            float mHat = m[i] / correction1, vHat = v[i] / correction2;
            parameters[i] -= learningRate * (mHat / (MathF.Sqrt(vHat) + eps) + weightDecay * parameters[i]);
        }
    }
}
