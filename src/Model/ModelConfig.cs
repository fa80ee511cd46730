// One config type for every decoder this engine runs: Llama family (RMSNorm pre-norm, RoPE, GQA, SwiGLU)
// and GPT-2 family (LayerNorm, learned positions, GELU, biases).
using Cluster.Compute;

namespace Cluster.Model;

public enum Architecture { Llama, Gpt2 }

public sealed record ModelConfig
{
    public required Architecture Architecture { get; init; }
    public required int Dim { get; init; }
    public required int HiddenDim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int VocabSize { get; init; }
    public required int MaxSeqLen { get; init; }
    public float NormEps { get; init; } = 1e-5f;
    public float RopeTheta { get; init; } = 10000f;
    public RopeLayout RopeLayout { get; init; } = RopeLayout.Interleaved;
    /// <summary>Dims of each head that RoPE rotates (0 = the whole head).</summary>
    public int RotaryDim { get; init; }
    /// <summary>The LM head reuses the token embedding matrix.</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>Mixture of experts in place of each layer's MLP (Llama family; null = a dense MLP).</summary>
    public MoeConfig? Moe { get; init; }

    /// <summary>MLPs per layer: the experts of an MoE layer (stacked in W1, W2, W3), else the one dense MLP.</summary>
    public int FfnBlocks => Moe?.Experts ?? 1;

    public int HeadDim => Heads > 0 ? Dim / Heads : 0;   // 0 only for an invalid config, which Validate reports
    public int KvDim => KvHeads * HeadDim;
    public int EffectiveRotaryDim => RotaryDim == 0 ? HeadDim : RotaryDim;

    /// <summary>Every weight of the model, the head counted once when tied: the N of 6·N FLOPs per trained token (MFU).</summary>
    public long ParameterCount
    {
        get
        {
            long ffn = FfnBlocks * FfnParameters + RouterAndSharedParameters;     // (every expert, the router and the shared expert)
            return ParametersBesidesFfn + Layers * ffn;
        }
    }

    /// <summary>
    /// The weights one token is multiplied by: as ParameterCount, but an MoE layer counts only the experts a token is
    /// routed to (and the router). The N of an MoE model's 6·N FLOPs per trained token.
    /// </summary>
    public long ActiveParameterCount => Moe is { } moe
        ? ParametersBesidesFfn + Layers * (moe.ExpertsPerToken * FfnParameters + RouterAndSharedParameters)
        : ParameterCount;

    /// <summary>One MLP's (one expert's): w1 w2 (w3) (+ biases).</summary>
    private long FfnParameters => (Architecture == Architecture.Gpt2 ? 2L : 3L) * HiddenDim * Dim + (Architecture == Architecture.Gpt2 ? HiddenDim + Dim : 0);

    /// <summary>An MoE layer's weights every token uses: the router, and the shared expert with its gate where there is one.</summary>
    private long RouterAndSharedParameters => Moe is { } moe
        ? (long)moe.Experts * Dim + 3L * moe.SharedExpertHidden * Dim + (moe.SharedExpertGate ? Dim : 0)
        : 0;

    private long ParametersBesidesFfn
    {
        get
        {
            bool gpt2 = Architecture == Architecture.Gpt2;
            long attention = 2L * Dim * Dim + 2L * KvDim * Dim + (gpt2 ? 2L * Dim + 2L * KvDim : 0);   // wq wo wk wv (+ biases)
            long norms = gpt2 ? 4L * Dim : 2L * Dim;
            long embeddings = (long)VocabSize * Dim * (TiedEmbeddings ? 1 : 2) + (gpt2 ? (long)MaxSeqLen * Dim : 0);
            return embeddings + (gpt2 ? 2L * Dim : Dim) + Layers * (attention + norms);
        }
    }

    /// <summary>Throws <see cref="ModelFormatException"/> naming <paramref name="source"/> unless every dimension is sane.</summary>
    public void Validate(string source)
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new ModelFormatException(source, $"invalid config: {what} ({this})");
        }
        const int Huge = 1 << 20;
        Require(Dim > 0 && Dim <= Huge, "dim out of range");
        Require(HiddenDim > 0 && HiddenDim <= 4 * Huge, "hidden dim out of range");
        Require(Layers > 0 && Layers <= 1024, "layer count out of range");
        Require(Heads > 0 && Heads <= Dim && Dim % Heads == 0, "dim must be a multiple of heads");
        Require(KvHeads > 0 && KvHeads <= Heads && Heads % KvHeads == 0, "heads must be a multiple of kv heads");
        Require(VocabSize > 0 && VocabSize <= 4 * Huge, "vocab size out of range");
        Require(MaxSeqLen > 0 && MaxSeqLen <= 4 * Huge, "max sequence length out of range");
        Require(float.IsFinite(NormEps) && NormEps > 0 && NormEps < 1, "norm eps out of range");
        Require(float.IsFinite(RopeTheta) && RopeTheta > 0, "rope theta out of range");
        Require(RotaryDim >= 0 && RotaryDim <= HeadDim && RotaryDim % 2 == 0, "rotary dim out of range");
        Require(Architecture != Architecture.Llama || HeadDim % 2 == 0, "head dim must be even for RoPE");
        if (Moe is not { } moe) return;
        Require(Architecture == Architecture.Llama, "mixture-of-experts layers are SwiGLU experts of the Llama family");
        Require(moe.Experts >= 2 && moe.Experts <= MoeConfig.MaxExperts, $"expert count out of range (2..{MoeConfig.MaxExperts})");
        Require(moe.ExpertsPerToken >= 1 && moe.ExpertsPerToken <= moe.Experts, "experts per token out of range (1..experts)");
        Require((long)moe.Experts * HiddenDim * Dim <= int.MaxValue, "the stacked experts of a layer exceed 2^31 floats");
        Require(float.IsFinite(moe.CapacityFactor) && moe.CapacityFactor >= 0 && moe.CapacityFactor <= moe.Experts, "capacity factor out of range (0 = dropless, up to the expert count)");
        Require(float.IsFinite(moe.AuxLossCoefficient) && moe.AuxLossCoefficient >= 0 && moe.AuxLossCoefficient <= 1, "auxiliary loss coefficient out of range (0..1)");
        Require(float.IsFinite(moe.ZLossCoefficient) && moe.ZLossCoefficient >= 0 && moe.ZLossCoefficient <= 1, "router z-loss coefficient out of range (0..1)");
        Require(float.IsFinite(moe.BiasUpdateRate) && moe.BiasUpdateRate >= 0 && moe.BiasUpdateRate <= 1, "router bias update rate out of range (0..1)");
        Require(moe.SharedExpertHidden >= 0 && moe.SharedExpertHidden <= 4 * Huge, "shared expert hidden size out of range");
        Require(moe.SharedExpertHidden > 0 || !moe.SharedExpertGate, "a shared expert gate needs a shared expert");
    }
}

/// <summary>
/// A mixture-of-experts MLP (Mixtral, Switch): a router (E, C) scores every expert for each token, the top
/// <see cref="ExpertsPerToken"/> SwiGLU experts (each of the config's HiddenDim) run on it, and their outputs are summed
/// weighted by the router's softmax (renormalized over the chosen experts as Mixtral does, or not, as Qwen2-MoE's
/// norm_topk_prob = false). Training adds the Switch load-balancing loss and the router z-loss with their coefficients.
/// </summary>
/// <param name="CapacityFactor">0: dropless (every routed token runs); else each expert takes at most ⌈factor·T·k/E⌉ tokens of a batch, later ones are dropped (their share is zero).</param>
/// <param name="BiasUpdateRate">
/// Auxiliary-loss-free balancing (DeepSeek-V3), γ: each layer has a router bias (E,), added to the logits for choosing
/// experts only (the weights come from the logits alone), and after each training step b_e += γ·sign(mean load − load_e).
/// 0: no bias is kept or trained (a model file's bias, when it has one, still steers the choice).
/// </param>
/// <param name="SharedExpertHidden">
/// A shared expert (DeepSeek-MoE, Qwen2-MoE) of this hidden size that every token runs beside its routed experts,
/// its output added to theirs; 0: none.
/// </param>
/// <param name="SharedExpertGate">The shared expert's output is scaled per token by σ(x·g) (Qwen2-MoE's shared_expert_gate, g (C,)).</param>
public sealed record MoeConfig(int Experts, int ExpertsPerToken, bool NormalizeTopK = true, float CapacityFactor = 0,
    float AuxLossCoefficient = 0.01f, float ZLossCoefficient = 0, float BiasUpdateRate = 0, int SharedExpertHidden = 0, bool SharedExpertGate = false)
{
    public const int MaxExperts = 256;
}

/// <summary>A model file that cannot be used: names the file and, where known, the tensor.</summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string file, string message, string? tensor = null, Exception? inner = null)
        : base(tensor is null ? $"{file}: {message}" : $"{file}: tensor '{tensor}': {message}", inner)
    {
        File = file;
        Tensor = tensor;
    }

    public string File { get; }
    public string? Tensor { get; }
}
