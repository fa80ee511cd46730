// Whole-model weights from shards' parameters: each ParameterSlice names its logical tensor, shape and slice, so the
// shards of any layout put the model back together (for publishing a trained model, or checking a sharded run).
using Cluster.Model;

namespace Cluster.Training;

public static class WeightAssembly
{
    /// <summary>Copies every slice into its place in a whole tensor; tensors are keyed by logical name. Slices of one tensor must agree on its shape.</summary>
    public static Dictionary<string, float[]> Tensors(IEnumerable<ParameterSlice> slices)
    {
        var tensors = new Dictionary<string, (float[] Data, int Rows, int Columns)>();
        foreach (var p in slices)
        {
            if (!tensors.TryGetValue(p.Name, out var whole))
                tensors[p.Name] = whole = (new float[p.Rows * p.Columns], p.Rows, p.Columns);
            if ((whole.Rows, whole.Columns) != (p.Rows, p.Columns))
                throw new ArgumentException($"{p.Name}: slices disagree on the shape ({whole.Rows}×{whole.Columns} vs {p.Rows}×{p.Columns})");
            CopySlice(p.Parameter, whole.Data, p, toWhole: true);
        }
        return tensors.ToDictionary(t => t.Key, t => t.Value.Data);
    }

    /// <summary>Moves a slice's elements between its own array and the whole tensor (row ranges are one block, column ranges a strided copy per row).</summary>
    public static void CopySlice(float[] slice, float[] whole, ParameterSlice p, bool toWhole)
    {
        if (p.Axis == 0)
        {
            var place = whole.AsSpan(p.Range.Offset * p.Columns, p.Range.Count * p.Columns);
            if (toWhole) slice.AsSpan().CopyTo(place); else place.CopyTo(slice);
            return;
        }
        for (int r = 0; r < p.Rows; r++)
        {
            var part = slice.AsSpan(r * p.Range.Count, p.Range.Count);
            var place = whole.AsSpan(r * p.Columns + p.Range.Offset, p.Range.Count);
            if (toWhole) part.CopyTo(place); else place.CopyTo(part);
        }
    }

    /// <summary>The whole model's weights from the slices of every shard of one replica.</summary>
    public static ModelWeights Assemble(ModelConfig c, IEnumerable<ParameterSlice> slices) => Assemble(c, Tensors(slices));

    /// <summary>The whole model's weights from whole tensors by logical name (Tensors, Checkpoint.ReadTensors).</summary>
    public static ModelWeights Assemble(ModelConfig c, Dictionary<string, float[]> t)
    {
        float[] Get(string name) => t.TryGetValue(name, out var v) ? v : throw new ArgumentException($"no shard holds {name}");
        float[]? Optional(string name) => t.GetValueOrDefault(name);
        var weights = new ModelWeights
        {
            TokenEmbedding = Get("token_embedding"),
            PositionEmbedding = Optional("position_embedding"),
            Layers = [.. Enumerable.Range(0, c.Layers).Select(l => $"layers.{l}.").Select(p => new LayerWeights
            {
                AttnNorm = Get(p + "attn_norm"), AttnNormBias = Optional(p + "attn_norm.bias"),
                Wq = Get(p + "wq"), Wk = Get(p + "wk"), Wv = Get(p + "wv"), Wo = Get(p + "wo"),
                Bq = Optional(p + "bq"), Bk = Optional(p + "bk"), Bv = Optional(p + "bv"), Bo = Optional(p + "bo"),
                FfnNorm = Get(p + "ffn_norm"), FfnNormBias = Optional(p + "ffn_norm.bias"),
                W1 = Get(p + "w1"), W2 = Get(p + "w2"), W3 = Optional(p + "w3"), B1 = Optional(p + "b1"), B2 = Optional(p + "b2"),
                Router = Optional(p + "router"), RouterBias = Optional(p + "router_bias"),
                SharedW1 = Optional(p + "shared_w1"), SharedW2 = Optional(p + "shared_w2"), SharedW3 = Optional(p + "shared_w3"),
                SharedExpertGate = Optional(p + "shared_gate"),
            })],
            FinalNorm = Get("final_norm"),
            FinalNormBias = Optional("final_norm.bias"),
            Output = Optional("output"),
        };
        weights.Validate(c, "assembled shards");
        return weights;
    }
}
