using Cluster.Model.Tokenizers;

namespace Cluster.Model;

/// <summary>What a loader returns: the config, the host weights and (where the format carries or names one) the tokenizer.</summary>
public sealed record LoadedModel(ModelConfig Config, ModelWeights Weights, ITokenizer? Tokenizer, string Source);
