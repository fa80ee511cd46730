// Which tensors a loader reads: a shard reads only its stage's layers, the embedding where its stage embeds tokens
// (or computes logits with a tied head) and the LM head on the last stage, so a silo's memory holds its slices and
// not the whole model. Tensors left out are empty arrays; the config is known before the filter is chosen.
using Cluster.Model.Parallel;

namespace Cluster.Model;

public sealed record WeightFilter(Slice Layers, bool Embedding, bool Output)
{
    public static WeightFilter Everything(ModelConfig c) => new(new Slice(0, c.Layers), true, true);

    public static WeightFilter For(ShardSpec spec) => new(spec.Layers, spec.IsFirstStage, spec.IsLastStage);

    public bool Layer(int layer) => layer >= Layers.Offset && layer < Layers.End;

    /// <summary>The token embedding: for embedding tokens, and for the logits when the head is tied to it.</summary>
    public bool TokenEmbedding(ModelConfig c) => Embedding || (Output && c.TiedEmbeddings);

    /// <summary>A separate LM head.</summary>
    public bool Head(ModelConfig c) => Output && !c.TiedEmbeddings;
}
