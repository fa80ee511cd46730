// The matrix products of a training step, forward and backward, wherever they run: the CPU's packed AVX-512 GEMM
// (Cpu.Linear) or any IDevice's MatMul (DeviceProducts: an ILGPU GPU, or ILGPU's CPU accelerator to check it).
namespace Cluster.Compute;

public interface IProducts : IDisposable
{
    /// <summary>y (M, N) = x (M, K) · Wᵀ (+ b when not empty).</summary>
    void Forward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k);

    /// <summary>dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy (db may be empty; dw empty skips both).</summary>
    void Backward(ReadOnlySpan<float> x, float[] w, ReadOnlySpan<float> dy, Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k);

    /// <summary>Drops every weight's prepared copy: call when the weights may have changed.</summary>
    void ForgetPacked();

    /// <summary>Drops one weight's prepared copies (its owner is letting go of it).</summary>
    void Forget(float[] w);
}
