// LoRA (Hu et al.): a frozen base projection W (N, K) plus a trainable low-rank update, y = x·Wᵀ + (α/r)·drop(x)·Aᵀ·Bᵀ
// with A (r, K) initialised uniform in ±1/√K (PEFT's Kaiming-uniform) and B (N, r) zero, so training starts from the
// base model exactly. Only A and B get gradients and optimizer state. The adapters are exported in PEFT's layout
// (PeftAdapter) and merged into the base weights by the serving path. With QuantizeBase (QLoRA) the frozen projections
// are held in NF4 (Nf4Tensor) and a layer is dequantized to fp32 just before its forward or backward and dropped after.
using Cluster.Model;
using Cluster.Model.Formats;

namespace Cluster.Training;

public sealed record LoraOptions
{
    public int Rank { get; init; } = 8;
    public float Alpha { get; init; } = 16;
    /// <summary>The projections adapted in every layer: any of wq, wk, wv, wo, w1 (gate), w2 (down), w3 (up).</summary>
    public string[] Targets { get; init; } = ["wq", "wk", "wv", "wo"];
    /// <summary>Dropout on the adapter's input (training only), in [0, 1).</summary>
    public float Dropout { get; init; }
    public int Seed { get; init; } = 1;
    /// <summary>QLoRA: hold the frozen projections in 4-bit NormalFloat and dequantize each layer only while it is used.</summary>
    public bool QuantizeBase { get; init; }

    public float Scale => Alpha / Rank;
    public PeftAdapterConfig Peft => new(Rank, Alpha, Targets, Dropout);

    public void Validate(ModelConfig c)
    {
        if (c.Architecture != Architecture.Llama) throw new ArgumentException("LoRA adapts Llama-family models (PEFT's module names)");
        if (Rank < 1 || Rank > Math.Min(c.Dim, c.HiddenDim)) throw new ArgumentException($"LoRA rank must be from 1 to {Math.Min(c.Dim, c.HiddenDim)}");
        if (!float.IsFinite(Alpha) || Alpha <= 0) throw new ArgumentException("LoRA alpha must be positive");
        if (!(Dropout >= 0 && Dropout < 1)) throw new ArgumentException("LoRA dropout must be in [0, 1)");
        if (Targets.Length == 0 || Targets.Distinct().Count() != Targets.Length) throw new ArgumentException("LoRA needs distinct target modules");
        foreach (string target in Targets) PeftAdapter.Shape(c, target);   // throws on an unknown name
        if (c.Moe is not null && Targets.Any(t => t is "w1" or "w2" or "w3"))
            throw new ArgumentException("LoRA on a mixture of experts adapts its attention (wq, wk, wv, wo); the experts' w1, w2, w3 are not adapted");
        if (c.Moe is not null && QuantizeBase) throw new ArgumentException("QLoRA's 4-bit base of a mixture of experts is not implemented: use LoRA on the fp32 base");
    }
}

/// <summary>The trainable pair of one adapted projection.</summary>
internal sealed class LoraAdapter
{
    public LoraAdapter(int n, int k, int rank, Random random)
    {
        (N, K) = (n, k);
        A = new float[rank * k];
        float bound = 1 / MathF.Sqrt(k);
        for (int i = 0; i < A.Length; i++) A[i] = (random.NextSingle() * 2 - 1) * bound;
        B = new float[n * rank];
        GradA = new float[A.Length];
        GradB = new float[B.Length];
    }

    public int N { get; }
    public int K { get; }
    public float[] A { get; }       // (r, K)
    public float[] B { get; }       // (N, r)
    public float[] GradA { get; }
    public float[] GradB { get; }
}
