// Which tensors a loader reads: a shard reads only its stage's layers, the embedding where its stage embeds tokens
// (or computes logits with a tied head) and the LM head on the last stage, so a silo's memory holds its slices and
// not the whole model. Tensors left out are empty arrays; the config is known before the filter is chosen. A filter
// may also cut each layer to a tensor-parallel rank's slices as it is read (Cutting), so a rank never holds every whole
// layer at once, only the one being read.
using Cluster.Model.Parallel;

namespace Cluster.Model;

public sealed record WeightFilter(Slice Layers, bool Embedding, bool Output)
{
    public static WeightFilter Everything(ModelConfig c) => new(new Slice(0, c.Layers), true, true);

    /// <summary>No tensor: the config and tokenizer alone (a scheduler's tokenizer, a job's check of its model).</summary>
    public static WeightFilter Nothing { get; } = new(new Slice(0, 0), false, false);

    public static WeightFilter For(ShardSpec spec) => new(spec.Layers, spec.IsFirstStage, spec.IsLastStage);

    /// <summary><see cref="For"/>, each layer cut to <paramref name="spec"/>'s slices as it is read (ShardWeights.FromCutLoad assembles them).</summary>
    public static WeightFilter Cutting(ModelConfig c, ShardSpec spec)
    {
        // The whole layers are garbage once cut, but a load allocates too fast for the GC to keep up: collected every
        // 64 MB let go, a rank does not peak near the whole layers' bytes.
        var hostMemory = new HostMemory(64 << 20);
        return For(spec) with
        {
            CutLayer = whole =>
            {
                var cut = ShardWeights.CutLayer(c, spec, whole);
                hostMemory.Released(whole.Bytes - cut.Bytes);
                return cut;
            },
        };
    }

    /// <summary>What a loader keeps of each whole layer it reads; null keeps it whole.</summary>
    public Func<LayerWeights, LayerWeights>? CutLayer { get; init; }

    /// <summary>A loader's last step for each selected layer: checks it whole against the config, then cuts it (if this filter cuts).</summary>
    public LayerWeights Keep(LayerWeights whole, ModelConfig c, int layer, string source)
    {
        if (CutLayer is null) return whole;   // ModelWeights.Validate checks it with the rest
        whole.Validate(c, layer, source);
        return CutLayer(whole);
    }

    public bool Layer(int layer) => layer >= Layers.Offset && layer < Layers.End;

    /// <summary>The token embedding: for embedding tokens, and for the logits when the head is tied to it.</summary>
    public bool TokenEmbedding(ModelConfig c) => Embedding || (Output && c.TiedEmbeddings);

    /// <summary>A separate LM head.</summary>
    public bool Head(ModelConfig c) => Output && !c.TiedEmbeddings;
}
