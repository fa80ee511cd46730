using Cluster.Compute;
using Cluster.Model.Tokenizers;

namespace Cluster.Model;

/// <summary>
/// What a loader returns: the config, the host weights (float32, whatever the file stores), where the format carries or
/// names one the tokenizer, and the format the model is served in unless another is asked for (GGUF: the block format
/// its layer matrices are stored in, Q8_0 for other quantized types; F32 otherwise).
/// </summary>
public sealed record LoadedModel(ModelConfig Config, ModelWeights Weights, ITokenizer? Tokenizer, string Source, WeightFormat StoredFormat = WeightFormat.F32)
{
    /// <summary>The format to serve in: <paramref name="requested"/> ("f32", "q8_0", "q4_0") when given, else the file's own.</summary>
    public WeightFormat ServingFormat(string? requested) => requested is null ? StoredFormat : WeightFormats.Parse(requested);
}
