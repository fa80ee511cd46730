// One decoder layer's forward, the only one in the code base: serving (TransformerModel, against a paged KV cache) and
// training (Cluster.Training's TrainableModel, keeping what its backward needs) both run it. Llama family: RMSNorm
// pre-norm, RoPE, GQA, SwiGLU; GPT-2 family: LayerNorm, GELU, biases. What differs between the two is behind
// ILayerPass: where each activation is written (serving reuses scratch buffers, training keeps one per layer), how a
// projection multiplies (serving's weights are prepared once, training's change every step and may carry LoRA), and
// how attention reads its keys (serving's paged cache, training's causal attention over the packed sequences).
// Tensor parallelism crosses the named regions of TensorParallelRegions: q/k/v and gate/up are column-parallel, the
// attention output and down projections row-parallel. A mixture-of-experts model runs MixtureOfExperts in place of the MLP.
using Cluster.Compute;
using Cluster.Compute.Collectives;
using static Cluster.Model.Parallel.TensorParallelRegions;

namespace Cluster.Model;

/// <summary>A layer's projections, each y (T, out) = x (T, in) · Wᵀ (+ b).</summary>
public enum LayerProjection { Wq, Wk, Wv, Wo, W1, W2, W3, Router, SharedW1, SharedW2, SharedW3, SharedExpertGate }

/// <summary>A layer's norm weights and biases, and the biases of its row-parallel projections (wo's and w2's: added once, after the ranks' sum).</summary>
public enum LayerVector { AttnNorm, AttnNormBias, FfnNorm, FfnNormBias, WoBias, W2Bias, RouterBias }

/// <summary>The activations a layer's forward writes, in order.</summary>
public enum LayerActivation
{
    AttnNormed, Q, K, V, Attention, Residual, FfnNormed, Gate, Up, Hidden, Output, RouterLogits,
    SharedGate, SharedUp, SharedHidden, SharedOutput, SharedScales, SharedWeighted,   // MoE: the shared expert's, in the order written
}

/// <summary>One layer's run of the forward: its weights, where its activations go, and how its attention reads keys.</summary>
public interface ILayerPass
{
    /// <summary>A norm's weight or bias on the device; null for a bias the architecture has not.</summary>
    DeviceBuffer? Vector(LayerVector which);

    /// <summary>
    /// y (T, out) = x (T, in) · Wᵀ (and whatever else the pass adds, e.g. LoRA), plus the bias of a column-parallel
    /// projection (q/k/v, w1: each rank its slice). Wo and W2 get no bias here: the layer adds theirs after the ranks' sum.
    /// </summary>
    void Project(LayerProjection which, DeviceBuffer x, DeviceBuffer y, int tokens);

    /// <summary>
    /// Where <paramref name="which"/> is written (at least <paramref name="length"/> floats). The layer's input is never
    /// handed out again before the layer is done with it; Hidden may be Gate itself (the activation then runs in place),
    /// SharedHidden SharedGate, and SharedWeighted SharedOutput.
    /// </summary>
    DeviceBuffer Activation(LayerActivation which, int length);

    /// <summary>output (T, heads·hd) = causal attention of q over the keys and values so far, k and v (T, kvHeads·hd) included.</summary>
    void Attend(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output);

    /// <summary>MoE: y = x · W_eᵀ for W1, W2 or W3 of this shard's <paramref name="block"/>-th expert (its block of the stacked tensor).</summary>
    void ProjectExpert(LayerProjection which, int block, DeviceBuffer x, DeviceBuffer y, int tokens);

    /// <summary>MoE: where expert <paramref name="expert"/> (the layer's index) writes <paramref name="which"/> (Hidden may be Gate, Weighted may be Output: in place).</summary>
    DeviceBuffer ExpertActivation(ExpertActivation which, int expert, int length);

    /// <summary>MoE: the layer's routing of this batch (training keeps it for the backward).</summary>
    void Routed(MoeRouting routing);
}

/// <summary>
/// A shard's layer widths: the whole model's, cut to a tensor-parallel rank's heads and hidden slice; an MoE shard's
/// experts are [FirstExpert, FirstExpert + LocalExperts) of each layer's, and SharedHidden its shared expert's hidden units.
/// </summary>
public sealed record DecoderShape(ModelConfig Config, int Heads, int KvHeads, int Hidden, int FirstExpert = 0, int LocalExperts = 1, int SharedHidden = 0)
{
    /// <summary>Whether this shard holds only some heads: attention's collectives run (else every rank of the group has them all).</summary>
    public bool SplitsAttention => Heads < Config.Heads;

    public int Dim => Config.Dim;
    public int QueryDim => Heads * Config.HeadDim;
    public int KvDim => KvHeads * Config.HeadDim;
    public bool Llama => Config.Architecture == Architecture.Llama;

    public static DecoderShape Of(ModelConfig config, Parallel.ShardSpec spec) =>
        new(config, spec.QueryHeads.Count, spec.KvHeads.Count, spec.Hidden.Count, spec.Experts.Offset, spec.Experts.Count, spec.SharedHidden.Count);
}

public static class DecoderLayer
{
    /// <summary>
    /// The layer on x (T, C) at the given positions (T,); returns its output (T, C) (the pass's Output buffer). Every
    /// rank of <paramref name="group"/> must run the same layers on the same batches in the same order.
    /// </summary>
    public static DeviceBuffer Forward(IDevice device, ILayerPass pass, DecoderShape shape, DeviceBuffer x, ReadOnlySpan<int> positions, CollectiveGroup? group)
    {
        var c = shape.Config;
        int T = positions.Length, C = shape.Dim, H = shape.Hidden, q = shape.QueryDim, kv = shape.KvDim;
        var attentionGroup = shape.SplitsAttention ? group : null;                            // an MoE group under ep with tp = 1 repeats attention on every rank
        var n1 = Normalize(device, pass, shape, x, LayerVector.AttnNorm, LayerVector.AttnNormBias, pass.Activation(LayerActivation.AttnNormed, T * C), T);   // (T, C)
        CopyToRegion.Forward(device, n1, T * C, attentionGroup);                            // into the column-parallel q/k/v
        var query = pass.Activation(LayerActivation.Q, T * q);                                // (T, qr)   this rank's heads
        var key = pass.Activation(LayerActivation.K, T * kv);                                 // (T, kvr)
        var value = pass.Activation(LayerActivation.V, T * kv);                               // (T, kvr)
        pass.Project(LayerProjection.Wq, n1, query, T);
        pass.Project(LayerProjection.Wk, n1, key, T);
        pass.Project(LayerProjection.Wv, n1, value, T);
        if (shape.Llama)
        {
            device.Rope(query, positions, shape.Heads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
            device.Rope(key, positions, shape.KvHeads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
        }
        var attention = pass.Activation(LayerActivation.Attention, T * q);                    // (T, qr)
        pass.Attend(query, key, value, attention);
        var x1 = pass.Activation(LayerActivation.Residual, T * C);                            // (T, C)
        ProjectRowParallel(device, pass, LayerProjection.Wo, LayerVector.WoBias, attention, x1, T, C, attentionGroup);   // row-parallel wo: summed, then its bias
        device.Add(x1, x, T * C);                                                             // x1 = x + attention's output

        var n2 = Normalize(device, pass, shape, x1, LayerVector.FfnNorm, LayerVector.FfnNormBias, pass.Activation(LayerActivation.FfnNormed, T * C), T);
        if (c.Moe is not null)                                                                // experts in place of the MLP, spread over the group's ranks
        {
            var mixed = pass.Activation(LayerActivation.Output, T * C);                       // (T, C)
            MixtureOfExperts.Forward(device, pass, shape, n2, mixed, T, group);
            device.Add(mixed, x1, T * C);
            return mixed;
        }
        CopyToRegion.Forward(device, n2, T * C, group);                                     // into the column-parallel w1/w3
        var gate = pass.Activation(LayerActivation.Gate, T * H);                              // (T, Hr)   before the activation
        pass.Project(LayerProjection.W1, n2, gate, T);
        var hidden = pass.Activation(LayerActivation.Hidden, T * H);                          // (T, Hr)   after it
        if (!ReferenceEquals(hidden, gate)) device.Copy(gate, hidden, T * H);
        if (shape.Llama)
        {
            var up = pass.Activation(LayerActivation.Up, T * H);                              // (T, Hr)
            pass.Project(LayerProjection.W3, n2, up, T);
            device.SwiGlu(hidden, up, T * H);
        }
        else device.Gelu(hidden, T * H);
        var output = pass.Activation(LayerActivation.Output, T * C);                          // (T, C)
        ProjectRowParallel(device, pass, LayerProjection.W2, LayerVector.W2Bias, hidden, output, T, C, group);
        device.Add(output, x1, T * C);                                                        // x_out = x1 + the MLP's output
        return output;
    }

    /// <summary>A row-parallel projection y (T, C): each rank's partial product, summed over the ranks, then the bias once.</summary>
    private static void ProjectRowParallel(IDevice device, ILayerPass pass, LayerProjection which, LayerVector bias, DeviceBuffer x, DeviceBuffer y,
        int tokens, int dim, CollectiveGroup? group)
    {
        pass.Project(which, x, y, tokens);
        ReduceFromRegion.Forward(device, y, tokens * dim, group);                             // (T, C) partial sums over ranks: summed
        if (pass.Vector(bias) is { } b) device.AddBias(y, b, tokens, dim);
    }

    private static DeviceBuffer Normalize(IDevice device, ILayerPass pass, DecoderShape shape, DeviceBuffer x, LayerVector weight, LayerVector bias, DeviceBuffer y, int rows)
    {
        Normalize(device, shape.Config, x, pass.Vector(weight)!, pass.Vector(bias), y, rows);
        return y;
    }

    /// <summary>
    /// The architecture's norm of each row of x (rows, C) into y: RMSNorm (Llama) or LayerNorm with its bias (GPT-2). The
    /// layers' two norms and the final one of serving and training alike.
    /// </summary>
    public static void Normalize(IDevice device, ModelConfig config, DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y, int rows)
    {
        if (config.Architecture == Architecture.Llama) device.RmsNorm(x, weight, y, rows, config.Dim, config.NormEps);
        else device.LayerNorm(x, weight, bias ?? throw new ArgumentException("LayerNorm needs its bias", nameof(bias)), y, rows, config.Dim, config.NormEps);
    }
}
