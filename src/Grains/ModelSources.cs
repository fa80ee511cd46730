// Turns a ModelSource message into weights or a tokenizer, through the Model project's loaders.
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Tokenizers;

namespace Cluster.Grains;

public static class ModelSources
{
    /// <param name="select">Which tensors of a model file to read (a shard's), and how each layer is cut (WeightFilter.Cutting);
    /// presets are made whole, then cut.</param>
    public static LoadedModel Load(ModelSource source, Func<ModelConfig, WeightFilter>? select = null)
    {
        // A LoRA adapter merges into whole layers: with one, layers are cut after the merge instead of as they are read.
        bool cutAsRead = source.Path is not null && source.AdapterPath is null;
        var read = cutAsRead || select is null ? select : config => select(config) with { CutLayer = null };
        var loaded = source.Path is not null ? ModelLoader.Load(source.Path, source.TokenizerPath, read)
            : source.Preset is not null ? RandomModel.Create(source.Preset, source.Seed)
            : throw new ArgumentException("a model source needs a path or a preset", nameof(source));
        if (source.AdapterPath is not null) PeftAdapter.Merge(loaded.Weights, loaded.Config, source.AdapterPath);   // the layers this shard loaded
        if (!cutAsRead && select?.Invoke(loaded.Config) is { CutLayer: { } cut } filter)
            for (int l = 0; l < loaded.Weights.Layers.Length; l++)
                if (filter.Layer(l)) loaded.Weights.Layers[l] = cut(loaded.Weights.Layers[l]);
        return loaded;
    }

    /// <summary>The tokenizer alone: cheap for presets; of a model file no weight is read.</summary>
    public static ITokenizer LoadTokenizer(ModelSource source) =>
        source.Path is null && source.Preset is not null
            ? RandomModel.Tokenizer(source.Preset, source.Seed)
            : Load(source, _ => WeightFilter.Nothing).Tokenizer ?? throw new ArgumentException($"{source} carries no tokenizer: give a tokenizer path", nameof(source));

    public static string Describe(ModelConfig c) =>
        $"{c.Architecture} dim {c.Dim} hidden {c.HiddenDim} layers {c.Layers} heads {c.Heads}/{c.KvHeads} vocab {c.VocabSize} ctx {c.MaxSeqLen}";
}
