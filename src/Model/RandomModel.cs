// Seeded random models with the shapes of real ones, for tests and benchmarks without downloads. Weights are
// uniform with standard deviation 0.02; norm weights are 1 + the same noise (so a swapped norm shows in round-trip
// tests), biases small noise. Each model carries a synthetic SentencePiece vocabulary of its vocab size; the
// "storyteller" preset's has merges trained on StoryCorpus text, so the words of its stories are single tokens.
using Cluster.Model.Tokenizers;

namespace Cluster.Model;

public static class RandomModel
{
    private const float Std = 0.02f;

    public static IReadOnlyList<string> Presets { get; } = ["tiny", "adder", "stories15M", "stories110M", "gpt2-tiny", "storyteller", "moe-tiny", "qwen-moe-tiny", "mixtral-small"];

    public static ModelConfig Preset(string name) => name switch
    {
        "tiny" => Llama(64, 172, 5, 8, 4, 512, 512),
        // The training demo's model: a character-level vocabulary (the smallest synthetic one has no merges), small enough
        // to learn two-digit additions on two CPU cores in a few minutes.
        "adder" => Llama(64, 256, 3, 4, 4, SyntheticVocabulary.FirstMerge + 95, 64),
        "stories15M" => Llama(288, 768, 6, 6, 6, 32000, 256),
        "stories110M" => Llama(768, 2048, 12, 12, 12, 32000, 1024),
        // The default served model, trained at first start on StoryCorpus stories: small enough to learn them on two CPU
        // cores in a few minutes, with a context for a whole story (they are under 128 tokens).
        "storyteller" => Llama(StorytellerDim, StorytellerHidden, StorytellerLayers, StorytellerHeads, StorytellerHeads, StorytellerVocab, 256),
        // Mixture-of-experts shapes: 8 SwiGLU experts per layer, 2 per token (Mixtral's routing). mixtral-small has ~97M
        // parameters in all, ~40M of them used per token.
        "moe-tiny" => Llama(64, 128, 4, 8, 4, 512, 256) with { Moe = new MoeConfig(Experts: 8, ExpertsPerToken: 2) },
        "mixtral-small" => Llama(512, 768, 8, 8, 2, 32000, 1024) with { Moe = new MoeConfig(Experts: 8, ExpertsPerToken: 2) },
        // Qwen2-MoE's shape: 8 experts, 2 per token weighted by the plain softmax, beside a gated shared expert.
        "qwen-moe-tiny" => Llama(64, 64, 4, 8, 4, 512, 256) with
        {
            RopeLayout = Compute.RopeLayout.HalfSplit,   // Qwen's RoPE pairs (NEOX), as its checkpoints and GGUF files store them
            TiedEmbeddings = false,
            Moe = new MoeConfig(Experts: 8, ExpertsPerToken: 2, NormalizeTopK: false, SharedExpertHidden: 128, SharedExpertGate: true),
        },
        "gpt2-tiny" => new ModelConfig
        {
            Architecture = Architecture.Gpt2, Dim = 64, HiddenDim = 256, Layers = 2, Heads = 4, KvHeads = 4,
            VocabSize = 512, MaxSeqLen = 128,
        },
        _ => throw new ArgumentException($"unknown preset '{name}' (known: {string.Join(", ", Presets)})", nameof(name)),
    };

    private const int StorytellerDim = 128, StorytellerHidden = 384, StorytellerLayers = 4, StorytellerHeads = 8, StorytellerVocab = 1024;

    /// <summary>The storyteller's vocabulary: the same for every seed, so any of its models reads any other's data.</summary>
    private static readonly Lazy<SentencePieceBpeTokenizer> StorytellerVocabulary = new(() =>
        SyntheticVocabulary.Trained(StorytellerVocab, string.Join(" ", StoryCorpus.Stories(2000, seed: 0)), seed: 0, "storyteller vocabulary"));

    /// <summary>The tokenizer of a preset's model made with <paramref name="seed"/> (cheap: no weights are made).</summary>
    public static SentencePieceBpeTokenizer Tokenizer(string preset, int seed) =>
        preset == "storyteller" ? StorytellerVocabulary.Value : SyntheticVocabulary.Create(Preset(preset).VocabSize, seed);

    private static ModelConfig Llama(int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seqLen) => new()
    {
        Architecture = Architecture.Llama, Dim = dim, HiddenDim = hidden, Layers = layers, Heads = heads, KvHeads = kvHeads,
        VocabSize = vocab, MaxSeqLen = seqLen, TiedEmbeddings = true,
    };

    public static LoadedModel Create(string preset, int seed = 1) => Create(Preset(preset), seed, $"random:{preset}:{seed}", Tokenizer(preset, seed));

    public static LoadedModel Create(ModelConfig c, int seed, string source = "random") =>
        Create(c, seed, source, SyntheticVocabulary.Create(c.VocabSize, seed));

    private static LoadedModel Create(ModelConfig c, int seed, string source, ITokenizer tokenizer)
    {
        c.Validate(source);
        var random = new Random(seed);
        float[] Noise(long n, float center = 0)
        {
            var a = new float[n];
            const float halfWidth = Std * 1.7320508f;   // uniform(-h, h) has std h/√3
            for (long i = 0; i < n; i++) a[i] = center + (random.NextSingle() * 2 - 1) * halfWidth;
            return a;
        }
        bool gpt2 = c.Architecture == Architecture.Gpt2;
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize, E = c.FfnBlocks, Hs = c.Moe?.SharedExpertHidden ?? 0;
        float[]? Gpt2Only(long n, float center = 0) => gpt2 ? Noise(n, center) : null;

        var layers = new LayerWeights[c.Layers];
        for (int l = 0; l < c.Layers; l++)
            layers[l] = new LayerWeights
            {
                AttnNorm = Noise(C, 1), AttnNormBias = Gpt2Only(C),
                Wq = Noise(C * C), Wk = Noise(kv * C), Wv = Noise(kv * C), Wo = Noise(C * C),
                Bq = Gpt2Only(C), Bk = Gpt2Only(kv), Bv = Gpt2Only(kv), Bo = Gpt2Only(C),
                FfnNorm = Noise(C, 1), FfnNormBias = Gpt2Only(C),
                W1 = Noise(E * H * C), W2 = Noise(E * C * H), W3 = gpt2 ? null : Noise(E * H * C),
                B1 = Gpt2Only(H), B2 = Gpt2Only(C), Router = c.Moe is null ? null : Noise(E * C),
                RouterBias = c.Moe is { BiasUpdateRate: > 0 } ? new float[E] : null,
                SharedW1 = Hs == 0 ? null : Noise(Hs * C), SharedW2 = Hs == 0 ? null : Noise(C * Hs), SharedW3 = Hs == 0 ? null : Noise(Hs * C),
                SharedExpertGate = c.Moe is { SharedExpertGate: true } ? Noise(C) : null,
            };
        var weights = new ModelWeights
        {
            TokenEmbedding = Noise(V * C),
            PositionEmbedding = Gpt2Only((long)c.MaxSeqLen * C),
            Layers = layers,
            FinalNorm = Noise(C, 1),
            FinalNormBias = Gpt2Only(C),
            Output = c.TiedEmbeddings ? null : Noise(V * C),
        };
        weights.Validate(c, source);
        return new LoadedModel(c, weights, tokenizer, source);
    }
}
