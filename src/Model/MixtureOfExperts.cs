// A mixture-of-experts MLP (Mixtral's routing, Switch Transformer's balancing losses), the one forward serving and
// training both run in place of a dense layer's MLP (DecoderLayer calls it); training's backward (TrainableModel) uses
// MoeRouting.RouterGradient beside it. The router's logits (T, E) come to the host, which picks each token's top-k experts
// (MoeRouting: a few floats per token); every expert then runs as a grouped GEMM over its own tokens on the device
// (gather its rows, SwiGLU, scale by the router weights, add back into the output rows). Under expert parallelism each
// rank of the stage's group runs its own experts on the same tokens and the partial outputs are summed. A shared expert
// (every token runs it, beside its routed ones) is cut over the ranks by hidden units.
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class "*MixtureOfExpertsTests"
using Cluster.Compute;

namespace Cluster.Model;

/// <summary>The buffers one expert's pass over its tokens writes, in order.</summary>
public enum ExpertActivation { Input, Gate, Up, Hidden, Output, Weighted, Scales }

/// <summary>
/// Which tokens each expert takes and with what weight, for one MoE layer and batch: decided on the host from the
/// router's logits (T, E). s = softmax over all experts; each token takes its k highest (ties to the lower expert id);
/// its weights are s renormalized over those k (Mixtral) or s itself. With a capacity factor each expert takes at most
/// ⌈factor·T·k/E⌉ tokens, first choices before second ones (GShard), token order within a choice rank; the rest are dropped.
/// </summary>
public sealed class MoeRouting
{
    private MoeRouting(MoeConfig moe, int tokens)
    {
        Config = moe;
        Tokens = tokens;
        Probabilities = new float[tokens * moe.Experts];
        Choices = new int[tokens * moe.ExpertsPerToken];
        Weights = new float[tokens * moe.ExpertsPerToken];
        Kept = new bool[tokens * moe.ExpertsPerToken];
        LogSumExp = new float[tokens];
        Load = new int[moe.Experts];
    }

    public MoeConfig Config { get; }
    public int Tokens { get; }
    /// <summary>(T, E) the router's softmax over every expert.</summary>
    public float[] Probabilities { get; }
    /// <summary>(T,) log Σ_e exp(logit) per token (the z-loss's).</summary>
    public float[] LogSumExp { get; }
    /// <summary>(T, k) each token's experts, highest first.</summary>
    public int[] Choices { get; }
    /// <summary>(T, k) the weight of each choice in the token's output.</summary>
    public float[] Weights { get; }
    /// <summary>(T, k) false where the expert was full (capacity factor): that choice adds nothing.</summary>
    public bool[] Kept { get; }
    /// <summary>(E,) tokens that chose each expert, dropped ones included (the balancing loss's f).</summary>
    public int[] Load { get; }
    /// <summary>Per expert: the tokens it runs on, in the order its rows are gathered.</summary>
    public int[][] ExpertTokens { get; private set; } = [];
    /// <summary>Per expert: for each of its rows, the choice (t·k + j) it serves.</summary>
    public int[][] ExpertChoices { get; private set; } = [];
    public int Dropped { get; private set; }
    /// <summary>Switch Transformer's load-balancing loss α·E·Σ_e f_e·P_e (f_e: share of the choices, P_e: mean probability).</summary>
    public double AuxLoss { get; private set; }
    /// <summary>The router z-loss β·mean_t (log Σ_e exp(logit))² (ST-MoE).</summary>
    public double ZLoss { get; private set; }

    /// <summary>
    /// The routing of <paramref name="tokens"/> tokens from their router logits (T, E); a <paramref name="bias"/> (E,)
    /// is added to choose the experts, not to weigh them.
    /// </summary>
    public static MoeRouting Route(ReadOnlySpan<float> logits, int tokens, MoeConfig moe, ReadOnlySpan<float> bias = default)
    {
        int E = moe.Experts, k = moe.ExpertsPerToken;
        if (logits.Length < tokens * E) throw new ArgumentException($"{logits.Length} router logits for {tokens} tokens of {E} experts", nameof(logits));
        if (!bias.IsEmpty && bias.Length != E) throw new ArgumentException($"a router bias of {bias.Length} for {E} experts", nameof(bias));
        var r = new MoeRouting(moe, tokens);
        for (int t = 0; t < tokens; t++)
        {
            var row = logits.Slice(t * E, E);
            var p = r.Probabilities.AsSpan(t * E, E);
            float max = float.NegativeInfinity;
            foreach (float v in row) max = Math.Max(max, v);
            if (!float.IsFinite(max)) throw new ArgumentException($"token {t}'s router logits are not finite", nameof(logits));
            double sum = 0;
            for (int e = 0; e < E; e++) sum += p[e] = MathF.Exp(row[e] - max);
            for (int e = 0; e < E; e++) p[e] = (float)(p[e] / sum);
            r.LogSumExp[t] = max + (float)Math.Log(sum);
            var choices = r.Choices.AsSpan(t * k, k);
            for (int j = 0; j < k; j++)
            {
                int best = -1;
                for (int e = 0; e < E; e++)
                    if (choices[..j].IndexOf(e) < 0 && (best < 0 || Score(row, bias, e) > Score(row, bias, best))) best = e;
                choices[j] = best;
                r.Load[best]++;
            }
            double chosen = 0;
            foreach (int e in choices) chosen += p[e];
            for (int j = 0; j < k; j++) r.Weights[t * k + j] = moe.NormalizeTopK ? (float)(p[choices[j]] / chosen) : p[choices[j]];
        }
        int capacity = moe.CapacityFactor == 0 ? int.MaxValue : (int)Math.Ceiling(moe.CapacityFactor * tokens * k / E);
        var expertTokens = Enumerable.Range(0, E).Select(_ => new List<int>()).ToArray();
        var expertChoices = Enumerable.Range(0, E).Select(_ => new List<int>()).ToArray();
        for (int j = 0; j < k; j++)
            for (int t = 0; t < tokens; t++)
            {
                int choice = t * k + j, e = r.Choices[choice];
                if (expertTokens[e].Count >= capacity)
                {
                    r.Dropped++;
                    continue;
                }
                r.Kept[choice] = true;
                expertTokens[e].Add(t);
                expertChoices[e].Add(choice);
            }
        r.ExpertTokens = [.. expertTokens.Select(l => l.ToArray())];
        r.ExpertChoices = [.. expertChoices.Select(l => l.ToArray())];
        if (tokens > 0)
        {
            double aux = 0;
            for (int e = 0; e < E; e++)
            {
                double meanProbability = 0;
                for (int t = 0; t < tokens; t++) meanProbability += r.Probabilities[t * E + e];
                aux += (double)r.Load[e] / (tokens * k) * (meanProbability / tokens);
            }
            r.AuxLoss = moe.AuxLossCoefficient * E * aux;
            r.ZLoss = moe.ZLossCoefficient * r.LogSumExp.Average(l => (double)l * l);
        }
        return r;
    }

    private static float Score(ReadOnlySpan<float> logits, ReadOnlySpan<float> bias, int e) => bias.IsEmpty ? logits[e] : logits[e] + bias[e];

    /// <summary>Expert e's router weights, one per row it runs (its scales).</summary>
    public float[] ExpertWeights(int e) => [.. ExpertChoices[e].Select(choice => Weights[choice])];

    /// <summary>
    /// ∂L/∂logits (T, E) from <paramref name="choiceGradients"/> (T, k), ∂L/∂weight of each choice (its expert's
    /// output against the MoE output's gradient; 0 for a dropped one), plus the balancing and z-losses' gradients scaled
    /// by <paramref name="lossScale"/> (the micro-batch's share of the step's loss). f counts as a constant (it is
    /// piecewise constant in the logits).
    /// </summary>
    public float[] RouterGradient(ReadOnlySpan<float> choiceGradients, float lossScale)
    {
        int E = Config.Experts, k = Config.ExpertsPerToken, T = Tokens;
        var dlogits = new float[T * E];
        var ds = new double[E];
        for (int t = 0; t < T; t++)
        {
            var p = Probabilities.AsSpan(t * E, E);
            var dl = dlogits.AsSpan(t * E, E);
            Array.Clear(ds);
            if (Config.NormalizeTopK)
            {
                // w = softmax over the chosen logits: dl_j = w_j (g_j − Σ_i w_i g_i) for the chosen j.
                double mean = 0;
                for (int j = 0; j < k; j++) mean += Weights[t * k + j] * choiceGradients[t * k + j];
                for (int j = 0; j < k; j++) dl[Choices[t * k + j]] += (float)(Weights[t * k + j] * (choiceGradients[t * k + j] - mean));
            }
            else
                for (int j = 0; j < k; j++) ds[Choices[t * k + j]] += choiceGradients[t * k + j];   // w = s: through the full softmax below
            for (int e = 0; e < E; e++) ds[e] += lossScale * Config.AuxLossCoefficient * E * ((double)Load[e] / (T * k)) / T;
            double dot = 0;
            for (int e = 0; e < E; e++) dot += p[e] * ds[e];
            for (int e = 0; e < E; e++)
                dl[e] += (float)(p[e] * (ds[e] - dot) + lossScale * Config.ZLossCoefficient * 2 * LogSumExp[t] * p[e] / T);
        }
        return dlogits;
    }
}

/// <summary>
/// What a shard's MoE layers did over one training step (every micro-batch, every layer): the choices of each expert,
/// the choices dropped over capacity, and the balancing and z-losses weighted as the step's loss is (by each
/// micro-batch's share).
/// </summary>
public sealed class MoeStepStats(long[] load, long dropped = 0, double routerLoss = 0)
{
    public MoeStepStats(int experts) : this(new long[experts]) { }

    public long[] Load { get; } = load;
    public long Dropped { get; private set; } = dropped;
    public double RouterLoss { get; private set; } = routerLoss;

    /// <summary>Several shards' (stages', replicas') stats as one model's: loads, drops and losses added.</summary>
    public static MoeStepStats Sum(IReadOnlyList<MoeStepStats> parts) =>
        new([.. Enumerable.Range(0, parts[0].Load.Length).Select(e => parts.Sum(p => p.Load.ElementAtOrDefault(e)))],
            parts.Sum(p => p.Dropped), parts.Sum(p => p.RouterLoss));

    /// <summary>The busiest expert's load over the mean (1 = even; E = every choice on one expert).</summary>
    public double Imbalance => Load.Sum() is > 0 and var total ? Load.Max() * (double)Load.Length / total : 0;

    public void Add(MoeRouting routing, float lossShare)
    {
        for (int e = 0; e < Load.Length; e++) Load[e] += routing.Load[e];
        Dropped += routing.Dropped;
        RouterLoss += lossShare * (routing.AuxLoss + routing.ZLoss);
    }
}

public static class MixtureOfExperts
{
    /// <summary>
    /// output (T, C) = Σ over each token's kept choices of weight · expert(x) (SwiGLU: W2 · (silu(W1·x) ⊙ W3·x)), for
    /// x (T, C) the normed input. The routing goes to the pass (training keeps it for the backward). Under expert
    /// parallelism every rank of <paramref name="group"/> routes the same tokens alike, runs its own experts on theirs,
    /// and the ranks' partial outputs are summed (a reduce-from-region: its backward is the identity).
    /// </summary>
    public static void Forward(IDevice device, ILayerPass pass, DecoderShape shape, DeviceBuffer x, DeviceBuffer output, int tokens,
        Compute.Collectives.CollectiveGroup? group = null)
    {
        var moe = shape.Config.Moe ?? throw new ArgumentException("a dense model has no experts", nameof(shape));
        int E = moe.Experts, C = shape.Dim, H = shape.Hidden;
        Parallel.TensorParallelRegions.CopyToRegion.Forward(device, x, tokens * C, group);   // x whole on every rank: its gradient is summed in the backward
        var logits = pass.Activation(LayerActivation.RouterLogits, tokens * E);          // (T, E)
        pass.Project(LayerProjection.Router, x, logits, tokens);
        var hostLogits = new float[tokens * E];
        device.Download(logits, hostLogits);                                              // the routing decision: T·E floats out
        float[] bias = [];                                                                // (E,) aux-loss-free balancing's, where the model has one
        if (pass.Vector(LayerVector.RouterBias) is { } biasBuffer) device.Download(biasBuffer, bias = new float[E]);
        var routing = MoeRouting.Route(hostLogits, tokens, moe, bias);
        pass.Routed(routing);
        device.Zero(output, tokens * C);
        for (int e = shape.FirstExpert; e < shape.FirstExpert + shape.LocalExperts; e++)   // this rank's experts (their blocks in its stacks: e − FirstExpert)
        {
            var rows = routing.ExpertTokens[e];
            int n = rows.Length;
            if (n == 0) continue;
            var input = pass.ExpertActivation(ExpertActivation.Input, e, n * C);           // (Te, C) the expert's tokens
            device.GatherRows(x, rows, input, C);
            var gate = pass.ExpertActivation(ExpertActivation.Gate, e, n * H);             // (Te, H) before the activation
            pass.ProjectExpert(LayerProjection.W1, e - shape.FirstExpert, input, gate, n);
            var hidden = pass.ExpertActivation(ExpertActivation.Hidden, e, n * H);         // (Te, H) after it
            if (!ReferenceEquals(hidden, gate)) device.Copy(gate, hidden, n * H);
            var up = pass.ExpertActivation(ExpertActivation.Up, e, n * H);                 // (Te, H)
            pass.ProjectExpert(LayerProjection.W3, e - shape.FirstExpert, input, up, n);
            device.SwiGlu(hidden, up, n * H);
            var expertOutput = pass.ExpertActivation(ExpertActivation.Output, e, n * C);  // (Te, C) unweighted (the router's gradient reads it)
            pass.ProjectExpert(LayerProjection.W2, e - shape.FirstExpert, hidden, expertOutput, n);
            var weighted = pass.ExpertActivation(ExpertActivation.Weighted, e, n * C);    // (Te, C) may be the output itself
            if (!ReferenceEquals(weighted, expertOutput)) device.Copy(expertOutput, weighted, n * C);
            var scales = pass.ExpertActivation(ExpertActivation.Scales, e, n);            // (Te,)
            device.Write(scales, routing.ExpertWeights(e));
            device.ScaleRows(weighted, scales, n, C);
            device.EmbeddingBackward(rows, weighted, output, C);                          // output[rows[r]] += weighted[r]: a scatter-add (an expert's rows are distinct tokens)
        }
        if (shape.SharedHidden > 0) SharedExpert(device, pass, shape, x, output, tokens);
        Parallel.TensorParallelRegions.ReduceFromRegion.Forward(device, output, tokens * C, group);   // (T, C) the ranks' experts summed
    }

    /// <summary>
    /// output (T, C) += [σ(x·g) ⊙] W2s · (silu(W1s·x) ⊙ W3s·x): the shared expert every token runs (DeepSeek-MoE, Qwen2-MoE,
    /// whose gate g scales it per token). Under expert parallelism each rank holds a slice of its hidden units, so its
    /// partial output joins the routed experts' before the ranks' sum. The gate's T scores come to the host for σ.
    /// </summary>
    private static void SharedExpert(IDevice device, ILayerPass pass, DecoderShape shape, DeviceBuffer x, DeviceBuffer output, int tokens)
    {
        int C = shape.Dim, Hs = shape.SharedHidden;
        var gate = pass.Activation(LayerActivation.SharedGate, tokens * Hs);               // (T, Hs) before the activation
        pass.Project(LayerProjection.SharedW1, x, gate, tokens);
        var hidden = pass.Activation(LayerActivation.SharedHidden, tokens * Hs);           // (T, Hs) after it
        if (!ReferenceEquals(hidden, gate)) device.Copy(gate, hidden, tokens * Hs);
        var up = pass.Activation(LayerActivation.SharedUp, tokens * Hs);                   // (T, Hs)
        pass.Project(LayerProjection.SharedW3, x, up, tokens);
        device.SwiGlu(hidden, up, tokens * Hs);
        var sharedOutput = pass.Activation(LayerActivation.SharedOutput, tokens * C);      // (T, C) ungated (the gate's gradient reads it)
        pass.Project(LayerProjection.SharedW2, hidden, sharedOutput, tokens);
        if (!shape.Config.Moe!.SharedExpertGate)
        {
            device.Add(output, sharedOutput, tokens * C);
            return;
        }
        var scales = pass.Activation(LayerActivation.SharedScales, tokens);               // (T,) x·g, then σ(x·g)
        pass.Project(LayerProjection.SharedExpertGate, x, scales, tokens);
        var hostScales = new float[tokens];
        device.Download(scales, hostScales);
        for (int t = 0; t < tokens; t++) hostScales[t] = 1f / (1f + MathF.Exp(-hostScales[t]));
        device.Write(scales, hostScales);
        var weighted = pass.Activation(LayerActivation.SharedWeighted, tokens * C);        // (T, C) may be the output itself
        if (!ReferenceEquals(weighted, sharedOutput)) device.Copy(sharedOutput, weighted, tokens * C);
        device.ScaleRows(weighted, scales, tokens, C);
        device.Add(output, weighted, tokens * C);
    }
}
