// The weights one shard holds: its stage's layers cut to its tensor-parallel slices, plus the vocab-parallel
// embedding (first stage) and LM head with the final norm (last stage). Cut from a whole model's host weights.
namespace Cluster.Model.Parallel;

public sealed class ShardWeights
{
    public required ShardSpec Spec { get; init; }
    public float[]? TokenEmbedding { get; init; }      // (Vr, C)        first stage
    public float[]? PositionEmbedding { get; init; }   // (maxT, C)      first stage, GPT-2
    /// <summary>Per layer of the stage: Wq/Wk/Wv/W1/W3 and their biases hold this rank's rows, Wo/W2 its columns; norms and Bo/B2 whole.</summary>
    public required LayerWeights[] Layers { get; init; }
    public float[]? FinalNorm { get; init; }           // (C,)           last stage
    public float[]? FinalNormBias { get; init; }       // (C,)           last stage, GPT-2
    public float[]? Output { get; init; }              // (Vr, C)        last stage (a copy of the embedding slice when tied)

    /// <summary>
    /// Cuts <paramref name="spec"/>'s slices out of <paramref name="weights"/>, which must hold (at least) the tensors
    /// WeightFilter.For(spec) selects: a loader given that filter reads no more than this shard needs.
    /// </summary>
    public static ShardWeights Slice(ModelConfig c, ModelWeights weights, ShardSpec spec, string source = "weights")
    {
        weights.Validate(c, source, WeightFilter.For(spec));
        return Assemble(c, weights, spec, layer => CutLayer(c, spec, layer));
    }

    /// <summary>
    /// The shard from weights loaded through <see cref="WeightFilter.Cutting"/>: its layers already hold this shard's
    /// slices (each cut as it was read); the embedding and head are cut here.
    /// </summary>
    public static ShardWeights FromCutLoad(ModelConfig c, ModelWeights weights, ShardSpec spec, string source = "weights")
    {
        weights.Validate(c, source, WeightFilter.Cutting(c, spec));
        long queryRows = (long)spec.QueryHeads.Count * c.HeadDim * c.Dim;
        for (int l = spec.Layers.Offset; l < spec.Layers.End; l++)
            if (weights.Layers[l].Wq.LongLength != queryRows)
                throw new ArgumentException($"layer {l} holds {weights.Layers[l].Wq.LongLength} query weights, not shard {spec}'s {queryRows}: it was not loaded through WeightFilter.Cutting", nameof(weights));
        return Assemble(c, weights, spec, layer => layer);
    }

    /// <summary>
    /// Rank <paramref name="spec"/>'s slices of a whole layer: Wq/Wk/Wv/W1/W3 and their biases its rows, Wo/W2 its
    /// columns (an MoE layer: its experts whole, and its slice of the shared expert's hidden units); norms and Bo/B2 whole.
    /// </summary>
    public static LayerWeights CutLayer(ModelConfig c, ShardSpec spec, LayerWeights w)
    {
        int C = c.Dim, hd = c.HeadDim, H = c.HiddenDim;
        var q = new Slice(spec.QueryHeads.Offset * hd, spec.QueryHeads.Count * hd);
        var kv = new Slice(spec.KvHeads.Offset * hd, spec.KvHeads.Count * hd);
        return new LayerWeights
        {
            AttnNorm = w.AttnNorm, AttnNormBias = w.AttnNormBias, FfnNorm = w.FfnNorm, FfnNormBias = w.FfnNormBias,
            Wq = Rows(w.Wq, C, q), Wk = Rows(w.Wk, C, kv), Wv = Rows(w.Wv, C, kv),
            Bq = Part(w.Bq, q), Bk = Part(w.Bk, kv), Bv = Part(w.Bv, kv),
            Wo = Columns(w.Wo, C, C, q), Bo = w.Bo,
            B1 = Part(w.B1, spec.Hidden), B2 = w.B2, Router = w.Router, RouterBias = w.RouterBias,
            // MoE: this rank's experts, whole (rows of the stacks); dense: this rank's hidden units.
            W1 = c.Moe is null ? Rows(w.W1, C, spec.Hidden) : Rows(w.W1, C, Scaled(spec.Experts, H)),
            W3 = w.W3 is null ? null : c.Moe is null ? Rows(w.W3, C, spec.Hidden) : Rows(w.W3, C, Scaled(spec.Experts, H)),
            W2 = c.Moe is null ? Columns(w.W2, C, c.HiddenDim, spec.Hidden) : Rows(w.W2, H, Scaled(spec.Experts, C)),
            // A shared expert: this rank's hidden units (column-parallel gate/up, row-parallel down); its gate whole.
            SharedW1 = w.SharedW1 is null ? null : Rows(w.SharedW1, C, spec.SharedHidden),
            SharedW3 = w.SharedW3 is null ? null : Rows(w.SharedW3, C, spec.SharedHidden),
            SharedW2 = w.SharedW2 is null ? null : Columns(w.SharedW2, C, c.Moe!.SharedExpertHidden, spec.SharedHidden),
            SharedExpertGate = w.SharedExpertGate,
        };
    }

    private static ShardWeights Assemble(ModelConfig c, ModelWeights weights, ShardSpec spec, Func<LayerWeights, LayerWeights> layer) => new()
    {
        Spec = spec,
        TokenEmbedding = spec.IsFirstStage ? Rows(weights.TokenEmbedding, c.Dim, spec.Vocab) : null,
        PositionEmbedding = spec.IsFirstStage ? weights.PositionEmbedding : null,
        Layers = [.. Enumerable.Range(spec.Layers.Offset, spec.Layers.Count).Select(l => layer(weights.Layers[l]))],
        FinalNorm = spec.IsLastStage ? weights.FinalNorm : null,
        FinalNormBias = spec.IsLastStage ? weights.FinalNormBias : null,
        Output = spec.IsLastStage ? Rows(weights.Output ?? weights.TokenEmbedding, c.Dim, spec.Vocab) : null,
    };

    /// <summary>A shard of the same spec whose every tensor is <paramref name="map"/> of this one's (copies, zeros of the same shapes).</summary>
    public static ShardWeights Map(ShardWeights w, Func<float[], float[]> map)
    {
        float[]? Opt(float[]? a) => a is null ? null : map(a);
        return new ShardWeights
        {
            Spec = w.Spec,
            TokenEmbedding = Opt(w.TokenEmbedding),
            PositionEmbedding = Opt(w.PositionEmbedding),
            Layers = [.. w.Layers.Select(l => MapLayer(l, map))],
            FinalNorm = Opt(w.FinalNorm),
            FinalNormBias = Opt(w.FinalNormBias),
            Output = Opt(w.Output),
        };
    }

    /// <summary>A layer whose every tensor is <paramref name="map"/> of this one's.</summary>
    public static LayerWeights MapLayer(LayerWeights l, Func<float[], float[]> map)
    {
        float[]? Opt(float[]? a) => a is null ? null : map(a);
        return new LayerWeights
        {
            AttnNorm = map(l.AttnNorm), AttnNormBias = Opt(l.AttnNormBias), Wq = map(l.Wq), Wk = map(l.Wk), Wv = map(l.Wv), Wo = map(l.Wo),
            Bq = Opt(l.Bq), Bk = Opt(l.Bk), Bv = Opt(l.Bv), Bo = Opt(l.Bo),
            FfnNorm = map(l.FfnNorm), FfnNormBias = Opt(l.FfnNormBias), W1 = map(l.W1), W2 = map(l.W2), W3 = Opt(l.W3),
            B1 = Opt(l.B1), B2 = Opt(l.B2), Router = Opt(l.Router), RouterBias = Opt(l.RouterBias),
            SharedW1 = Opt(l.SharedW1), SharedW2 = Opt(l.SharedW2), SharedW3 = Opt(l.SharedW3), SharedExpertGate = Opt(l.SharedExpertGate),
        };
    }

    // Whole slices share the source array: a single-shard model costs no copy.

    /// <summary>Rows [slice) of a row-major (rows, cols) matrix.</summary>
    private static float[] Rows(float[] m, int cols, Slice rows) =>
        rows.Count * cols == m.Length ? m : m.AsSpan(rows.Offset * cols, rows.Count * cols).ToArray();

    /// <summary>Columns [slice) of a row-major (rows, cols) matrix, as a (rows, slice.Count) matrix.</summary>
    private static float[] Columns(float[] m, int rows, int cols, Slice columns)
    {
        if (columns.Count == cols) return m;
        var result = new float[rows * columns.Count];
        for (int r = 0; r < rows; r++) m.AsSpan(r * cols + columns.Offset, columns.Count).CopyTo(result.AsSpan(r * columns.Count));
        return result;
    }

    /// <summary>The rows of blocks [slice) of a stack of blocks of <paramref name="rows"/> rows each.</summary>
    private static Slice Scaled(Slice blocks, int rows) => new(blocks.Offset * rows, blocks.Count * rows);

    private static float[]? Part(float[]? v, Slice slice) => v is null || slice.Count == v.Length ? v : v.AsSpan(slice.Offset, slice.Count).ToArray();
}
