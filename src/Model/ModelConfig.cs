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

    public int HeadDim => Heads > 0 ? Dim / Heads : 0;   // 0 only for an invalid config, which Validate reports
    public int KvDim => KvHeads * HeadDim;
    public int EffectiveRotaryDim => RotaryDim == 0 ? HeadDim : RotaryDim;

    /// <summary>Every weight of the model, the head counted once when tied: the N of 6·N FLOPs per trained token (MFU).</summary>
    public long ParameterCount
    {
        get
        {
            bool gpt2 = Architecture == Architecture.Gpt2;
            long attention = 2L * Dim * Dim + 2L * KvDim * Dim + (gpt2 ? 2L * Dim + 2L * KvDim : 0);   // wq wo wk wv (+ biases)
            long ffn = (gpt2 ? 2L : 3L) * HiddenDim * Dim + (gpt2 ? HiddenDim + Dim : 0);              // w1 w2 (w3) (+ biases)
            long norms = gpt2 ? 4L * Dim : 2L * Dim;
            long embeddings = (long)VocabSize * Dim * (TiedEmbeddings ? 1 : 2) + (gpt2 ? (long)MaxSeqLen * Dim : 0);
            return embeddings + (gpt2 ? 2L * Dim : Dim) + Layers * (attention + ffn + norms);
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
    }
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
