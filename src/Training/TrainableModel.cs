// One shard of a decoder for training, Llama or GPT-2 family (llm.c's gpt2_forward / gpt2_backward, cut the Megatron
// way): a pipeline stage's layers at one tensor-parallel rank, or the whole model when the shard is whole. The forward
// keeps every activation the backward needs; the backward accumulates fp32 gradients into tensors shaped like the
// shard's weights. Tensor parallelism (TensorParallelRegions, each forward crossing named with its backward pair): Q/K/V,
// gate/up and the LM head are column-parallel (CopyToRegion: identity forward, all-reduce of the input gradient backward;
// the logits leave through GatherFromRegion), the attention output and down projections row-parallel and the embedding
// vocab-parallel (ReduceFromRegion: all-reduce forward, identity backward). Sequences may pack several documents:
// each document's positions restart at 0 and attention never crosses documents. A whole shard's logits equal the
// inference TransformerModel's.
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class Cluster.Tests.Training.TrainableModelTests
using System.Numerics.Tensors;
using Cluster.Compute;
using Cluster.Compute.Collectives;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Parallel;
using static Cluster.Model.Parallel.TensorParallelRegions;

namespace Cluster.Training;

/// <summary>One training sequence: tokens (T,), next-token targets (T,; CrossEntropy.Ignore where not counted), and optionally document ids (T,).</summary>
public sealed record TrainingSequence(int[] Tokens, int[] Targets, int[]? Documents = null)
{
    public int CountedTargets => Targets.Count(t => t != CrossEntropy.Ignore);
}

/// <summary>
/// A parameter of a shard by its logical identity: the whole model's tensor <paramref name="Name"/> of shape
/// (Rows, Columns) (vectors: Columns = 1), of which this shard holds <paramref name="Range"/> along <paramref name="Axis"/>.
/// <paramref name="Counted"/>: this shard is the one whose copy counts once in a global norm (replicated tensors count on one rank).
/// </summary>
public sealed record ParameterSlice(string Name, float[] Parameter, float[] Gradient, int Rows, int Columns, int Axis, Slice Range, bool Counted)
{
    /// <summary>Elements of this slice (what Parameter holds, also while ZeRO-3 has dropped it).</summary>
    public int Length => Range.Count * (Axis == 0 ? Columns : Rows);

    /// <summary>
    /// A matrix (embedding, projection, head, LoRA factor), not a vector (norm weight, bias): by its shape, as nanoGPT's
    /// p.dim() >= 2. AdamW decays matrices only.
    /// </summary>
    public bool IsMatrix => Rows > 1 && Columns > 1;

    public void Deconstruct(out string name, out float[] parameter, out float[] gradient) => (name, parameter, gradient) = (Name, Parameter, Gradient);
}

/// <summary>What one micro-batch's forward keeps for its backward; T counts the tokens of the whole micro-batch.</summary>
public sealed class StageActivations
{
    internal StageActivations(int layers) => (LayerInput, AttnNormed, Q, K, V, Probs, Attention, Residual, FfnNormed, Gate, Up, Hidden) =
        (new float[layers][], new float[layers][], new float[layers][], new float[layers][], new float[layers][], new float[layers][][],
         new float[layers][], new float[layers][], new float[layers][], new float[layers][], new float[layers][], new float[layers][]);

    internal int[] Tokens = [];                       // (T,)
    internal int[] Targets = [];                      // (T,)
    internal int[] Positions = [];                    // (T,)
    internal (int Offset, int Length, int[] Documents)[] Sequences = [];   // each sequence's rows and document ids (or empty)
    internal readonly float[][] LayerInput;           // (T, C)
    internal readonly float[][] AttnNormed;           // (T, C)
    internal readonly float[][] Q;                    // (T, Cq)   this rank's heads, after RoPE
    internal readonly float[][] K;                    // (T, Ckv)  after RoPE
    internal readonly float[][] V;                    // (T, Ckv)
    internal readonly float[][][] Probs;              // per sequence (nh_local, Ti, Ti)
    internal readonly float[][] Attention;            // (T, Cq)
    internal readonly float[][] Residual;             // (T, C)    x after attention
    internal readonly float[][] FfnNormed;            // (T, C)
    internal readonly float[][] Gate;                 // (T, Hl)   before the activation
    internal readonly float[][] Up;                   // (T, Hl)   Llama
    internal readonly float[][] Hidden;               // (T, Hl)   activation output
    internal float[] FinalNormed = [];                // (T, C)    last stage
    internal readonly Dictionary<(int Layer, string Target), (float[] Input, float[] Low)> Lora = [];   // drop(x) (T, K), drop(x)·Aᵀ (T, r)
    internal int DropoutSeed;

    /// <summary>Lets go of layer <paramref name="l"/>'s activations but its input (activation checkpointing).</summary>
    internal void ForgetLayer(int l)
    {
        AttnNormed[l] = Q[l] = K[l] = V[l] = Attention[l] = Residual[l] = FfnNormed[l] = Gate[l] = Up[l] = Hidden[l] = null!;
        Probs[l] = null!;
        foreach (var key in Lora.Keys.Where(k => k.Layer == l).ToList()) Lora.Remove(key);
    }

    /// <summary>The stage's output (T, C): the hidden state for the next stage, or the last layer's output on the last stage.</summary>
    public float[] Output { get; internal set; } = [];
    /// <summary>The logits (T, V) of every position, whole vocabulary (last stage only).</summary>
    public float[] Logits { get; internal set; } = [];
}

public sealed class TrainableModel : IDisposable
{
    private readonly WorkerPool _pool;
    private readonly ITrainingKernels _kernels;
    private readonly CollectiveGroup? _tensorGroup;
    private readonly float[]? _head, _headGradient;   // (Vl, C) the LM head; the embedding slice itself when tied on one stage
    private readonly int _cq, _ckv, _hidden, _vocab, _heads, _kvHeads;   // this rank's widths
    private readonly TrainingMode _mode;
    private readonly LoraOptions? _lora;
    private readonly Dictionary<(int Layer, string Target), LoraAdapter> _adapters = [];   // by local layer
    private BackwardScratch _scratch;   // Backward's temporaries, reused across layers and backwards of one shape
    private readonly float[] _frozenNormGradient;   // where a frozen norm's unused weight gradient goes
    private readonly Nf4Tensor?[][] _quantized = [];  // QLoRA: per local layer, its projections (Parameters order: wq wk wv wo w1 w2 w3) in NF4

    /// <summary>The whole model on one device.</summary>
    public TrainableModel(ModelConfig config, ModelWeights weights, int threads = 1)
        : this(config, ShardWeights.Slice(config, weights, ShardSpec.Whole(config)), threads) { }

    /// <param name="weights">This shard's slices (ShardWeights.Slice); trained in place.</param>
    /// <param name="tensorGroup">The stage's tensor-parallel group, rank order = ShardSpec.Rank (null when tp = 1).</param>
    /// <param name="threads">CPU threads the model's products run on.</param>
    /// <param name="mode">LoRA, activation checkpointing, precision (default: every weight, all activations kept, fp32).</param>
    public TrainableModel(ModelConfig config, ShardWeights weights, int threads = 1, CollectiveGroup? tensorGroup = null, TrainingMode? mode = null)
    {
        var spec = weights.Spec;
        _mode = mode ?? new TrainingMode();
        var lora = _mode.Lora;
        if (lora is not null)
        {
            lora.Validate(config);
            if (spec.TensorParallel > 1) throw new ArgumentException("LoRA training runs without tensor parallelism (tp = 1)", nameof(mode));
        }
        if ((tensorGroup?.WorldSize ?? 1) != spec.TensorParallel || (tensorGroup?.Rank ?? 0) != spec.Rank)
            throw new ArgumentException($"shard {spec} needs a tensor group of {spec.TensorParallel} ranks where it is rank {spec.Rank}", nameof(tensorGroup));
        Config = config;
        Spec = spec;
        Weights = weights;
        _tensorGroup = spec.TensorParallel > 1 ? tensorGroup : null;
        int hd = config.HeadDim;
        (_heads, _kvHeads) = (spec.QueryHeads.Count, spec.KvHeads.Count);
        (_cq, _ckv, _hidden, _vocab) = (_heads * hd, _kvHeads * hd, spec.Hidden.Count, spec.Vocab.Count);
        _lora = lora;
        // A frozen base needs no gradients: its tensors get empty ones, which the products skip.
        Gradients = ShardWeights.Map(weights, a => lora is null ? new float[a.Length] : []);
        _frozenNormGradient = new float[lora is null ? 0 : config.Dim];
        if (lora is not null)
            for (int l = 0; l < weights.Layers.Length; l++)
                foreach (string target in lora.Targets)
                {
                    var (n, k) = Cluster.Model.Formats.PeftAdapter.Shape(config, target);
                    // Seeded by the global layer, so every layout initialises the same adapters.
                    _adapters[(l, target)] = new LoraAdapter(n, k, lora.Rank, new Random(lora.Seed * 1_000_003 + (spec.Layers.Offset + l) * 101 + Array.IndexOf(LoraTargets, target)));
                }
        // A tied head on the embedding's own stage is the embedding (one parameter, one gradient); on another stage it is
        // a copy whose gradient the trainer sums with the first stage's (TiedHeadGradient).
        bool sharedHead = config.TiedEmbeddings && spec.IsFirstStage && spec.IsLastStage;
        _head = sharedHead ? weights.TokenEmbedding : weights.Output;
        _headGradient = sharedHead ? Gradients.TokenEmbedding : Gradients.Output;
        _pool = new WorkerPool(threads);
        if (_mode.Device is not null && _mode.Precision == Precision.BFloat16) throw new ArgumentException("bf16 products run on the CPU path only", nameof(mode));
        _kernels = _mode.Device is { } device ? new DeviceTrainingKernels(device) : new CpuTrainingKernels(_pool, _mode.Precision == Precision.BFloat16);
        if (lora is { QuantizeBase: true })
        {
            _quantized = [.. weights.Layers.Select(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.W1, l.W2, l.W3 }.Select(w => w is null ? null : Nf4Tensor.Quantize(w)).ToArray())];
            for (int l = 0; l < weights.Layers.Length; l++) DropProjections(l);
            LayerWeightsNeeded = DequantizeProjections;
            LayerWeightsDone = DropProjections;
        }
    }

    public void Dispose()
    {
        _kernels.Dispose();
        _pool.Dispose();
    }

    public ModelConfig Config { get; }
    public ShardSpec Spec { get; }
    /// <summary>Where this shard's kernels run (the optimizers update its parameters there too).</summary>
    public ITrainingKernels Kernels => _kernels;
    /// <summary>The parameters, updated in place by an optimizer.</summary>
    public ShardWeights Weights { get; }
    /// <summary>∂loss/∂parameter, same shapes as <see cref="Weights"/>.</summary>
    public ShardWeights Gradients { get; }

    /// <summary>The head's gradient when it is a tied copy of the first stage's embedding (sum it with that stage's), else null.</summary>
    public float[]? TiedHeadGradient => Config.TiedEmbeddings && Spec.IsLastStage && !Spec.IsFirstStage && _lora is null ? _headGradient : null;
    /// <summary>The embedding's gradient that a last stage's tied head copy sums with (first stage of a pipeline with a tied head), else null.</summary>
    public float[]? TiedEmbeddingGradient => Config.TiedEmbeddings && Spec.IsFirstStage && !Spec.IsLastStage && _lora is null ? Gradients.TokenEmbedding : null;

    private static readonly string[] LoraTargets = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"];

    /// <summary>Called after each layer's backward of a micro-batch with the layer's index in this shard (ZeRO-2 reduces and drops its gradient there).</summary>
    internal Action<int>? LayerGradientsDone { get; set; }

    /// <summary>Called before and after each use of a layer's weights (forward, recompute, backward): ZeRO-3 gathers and drops them there.</summary>
    internal Action<int>? LayerWeightsNeeded { get; set; }
    internal Action<int>? LayerWeightsDone { get; set; }

    /// <summary>Layer <paramref name="l"/>'s weights again, from its tensors in Parameters order (ZeRO-3 after a gather; the released layer tells which exist).</summary>
    internal void SetLayerWeights(int l, IReadOnlyList<float[]> tensors)
    {
        var present = Weights.Layers[l];
        int i = 0;
        float[]? Next(float[]? slot) => slot is null ? null : tensors[i++];
        Weights.Layers[l] = new LayerWeights   // in Parameters order: initialisers run in the order written
        {
            AttnNorm = Next(present.AttnNorm)!, AttnNormBias = Next(present.AttnNormBias), Wq = Next(present.Wq)!, Bq = Next(present.Bq),
            Wk = Next(present.Wk)!, Bk = Next(present.Bk), Wv = Next(present.Wv)!, Bv = Next(present.Bv), Wo = Next(present.Wo)!, Bo = Next(present.Bo),
            FfnNorm = Next(present.FfnNorm)!, FfnNormBias = Next(present.FfnNormBias), W1 = Next(present.W1)!, B1 = Next(present.B1),
            W2 = Next(present.W2)!, B2 = Next(present.B2), W3 = Next(present.W3),
        };
        if (i != tensors.Count) throw new ArgumentException($"layer {l} has {i} tensors, {tensors.Count} given", nameof(tensors));
    }

    /// <summary>Lets go of layer <paramref name="l"/>'s weights (and their packed copies) until they are set again (ZeRO-3).</summary>
    internal void ReleaseLayerWeights(int l)
    {
        var layer = Weights.Layers[l];
        foreach (var w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3 }) if (w is not null) _kernels.Forget(w);
        Weights.Layers[l] = ShardWeights.MapLayer(layer, _ => []);
    }

    /// <summary>QLoRA: layer <paramref name="l"/>'s projections in fp32 again, from their NF4 copies.</summary>
    private void DequantizeProjections(int l)
    {
        var q = _quantized[l];
        Weights.Layers[l] = WithProjections(Weights.Layers[l], [.. q.Select(t => t?.Dequantize())]);
    }

    /// <summary>QLoRA: drops layer <paramref name="l"/>'s fp32 projections (and their packed copies); the NF4 copies stay.</summary>
    private void DropProjections(int l)
    {
        var layer = Weights.Layers[l];
        foreach (var w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3 }) if (w is not null) _kernels.Forget(w);
        Weights.Layers[l] = WithProjections(layer, [.. new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3 }.Select(w => w is null ? null : Array.Empty<float>())]);
    }

    /// <summary>A layer with its norms and biases and these projections (wq wk wv wo w1 w2 w3).</summary>
    private static LayerWeights WithProjections(LayerWeights l, float[]?[] p) => new()
    {
        AttnNorm = l.AttnNorm, AttnNormBias = l.AttnNormBias, FfnNorm = l.FfnNorm, FfnNormBias = l.FfnNormBias,
        Bq = l.Bq, Bk = l.Bk, Bv = l.Bv, Bo = l.Bo, B1 = l.B1, B2 = l.B2,
        Wq = p[0]!, Wk = p[1]!, Wv = p[2]!, Wo = p[3]!, W1 = p[4]!, W2 = p[5]!, W3 = p[6],
    };

    /// <summary>Bytes the frozen base's projections occupy between uses (QLoRA: their NF4 copies; else fp32).</summary>
    public long ProjectionBytes() => _quantized.Length > 0
        ? _quantized.Sum(layer => layer.Sum(t => t?.Bytes ?? 0))
        : Weights.Layers.Sum(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.W1, l.W2, l.W3 }.Sum(w => (long)(w?.Length ?? 0) * sizeof(float)));

    /// <summary>Lets go of layer <paramref name="l"/>'s gradient tensors; its next backward starts from new zeroed ones (ZeRO-2).</summary>
    internal void ReleaseLayerGradients(int l) => Gradients.Layers[l] = ShardWeights.MapLayer(Gradients.Layers[l], _ => []);

    /// <summary>Layer <paramref name="l"/>'s gradients, allocated (zeroed) again when ZeRO-2 released them.</summary>
    private LayerWeights LayerGradients(int l)
    {
        if (_lora is null && Gradients.Layers[l].Wq.Length == 0)
            Gradients.Layers[l] = ShardWeights.MapLayer(Weights.Layers[l], a => new float[a.Length]);
        return Gradients.Layers[l];
    }

    /// <summary>Whether this shard trains LoRA adapters on a frozen base.</summary>
    public bool IsLora => _lora is not null;

    /// <summary>
    /// Every trained parameter of this shard by its logical identity, in a fixed order (optimizers, clipping,
    /// checkpoints): with LoRA, the adapters only ("layers.N.wq.lora_a" (r, K), "….lora_b" (N, r)).
    /// </summary>
    public IEnumerable<ParameterSlice> Parameters()
    {
        if (_lora is not null)
        {
            foreach (var ((layer, target), adapter) in _adapters.OrderBy(a => a.Key.Layer).ThenBy(a => Array.IndexOf(LoraTargets, a.Key.Target)))
            {
                string name = $"layers.{Spec.Layers.Offset + layer}.{target}.";
                yield return new ParameterSlice(name + "lora_a", adapter.A, adapter.GradA, _lora.Rank, adapter.K, 0, new Slice(0, _lora.Rank), true);
                yield return new ParameterSlice(name + "lora_b", adapter.B, adapter.GradB, adapter.N, _lora.Rank, 0, new Slice(0, adapter.N), true);
            }
            yield break;
        }
        var c = Config;
        int C = c.Dim, hd = c.HeadDim;
        bool rank0 = Spec.Rank == 0;
        var q = new Slice(Spec.QueryHeads.Offset * hd, _cq);
        var kv = new Slice(Spec.KvHeads.Offset * hd, _ckv);
        ParameterSlice? Whole(string name, float[]? p, float[]? g, int rows, int columns = 1) =>
            p is null ? null : new(name, p, g!, rows, columns, 0, new Slice(0, rows), rank0);
        ParameterSlice? Split(string name, float[]? p, float[]? g, int rows, int columns, int axis, Slice range) =>
            p is null ? null : new(name, p, g!, rows, columns, axis, range, range.Count != (axis == 0 ? rows : columns) || rank0);

        var all = new List<ParameterSlice?>();
        if (Spec.IsFirstStage)
            all.AddRange([Split("token_embedding", Weights.TokenEmbedding, Gradients.TokenEmbedding, c.VocabSize, C, 0, Spec.Vocab),
                Whole("position_embedding", Weights.PositionEmbedding, Gradients.PositionEmbedding, c.MaxSeqLen, C)]);
        for (int i = 0; i < Weights.Layers.Length; i++)
        {
            LayerWeights w = Weights.Layers[i], g = Gradients.Layers[i];
            string p = $"layers.{Spec.Layers.Offset + i}.";
            all.AddRange([
                Whole(p + "attn_norm", w.AttnNorm, g.AttnNorm, C), Whole(p + "attn_norm.bias", w.AttnNormBias, g.AttnNormBias, C),
                Split(p + "wq", w.Wq, g.Wq, C, C, 0, q), Split(p + "bq", w.Bq, g.Bq, C, 1, 0, q),
                Split(p + "wk", w.Wk, g.Wk, c.KvDim, C, 0, kv), Split(p + "bk", w.Bk, g.Bk, c.KvDim, 1, 0, kv),
                Split(p + "wv", w.Wv, g.Wv, c.KvDim, C, 0, kv), Split(p + "bv", w.Bv, g.Bv, c.KvDim, 1, 0, kv),
                Split(p + "wo", w.Wo, g.Wo, C, C, 1, q), Whole(p + "bo", w.Bo, g.Bo, C),
                Whole(p + "ffn_norm", w.FfnNorm, g.FfnNorm, C), Whole(p + "ffn_norm.bias", w.FfnNormBias, g.FfnNormBias, C),
                Split(p + "w1", w.W1, g.W1, c.HiddenDim, C, 0, Spec.Hidden), Split(p + "b1", w.B1, g.B1, c.HiddenDim, 1, 0, Spec.Hidden),
                Split(p + "w2", w.W2, g.W2, C, c.HiddenDim, 1, Spec.Hidden), Whole(p + "b2", w.B2, g.B2, C),
                Split(p + "w3", w.W3, g.W3, c.HiddenDim, C, 0, Spec.Hidden),
            ]);
        }
        if (Spec.IsLastStage)
        {
            all.AddRange([Whole("final_norm", Weights.FinalNorm, Gradients.FinalNorm, C), Whole("final_norm.bias", Weights.FinalNormBias, Gradients.FinalNormBias, C)]);
            if (!ReferenceEquals(_head, Weights.TokenEmbedding))
                all.Add(TiedHeadGradient is not null
                    ? new ParameterSlice("token_embedding", _head!, _headGradient!, c.VocabSize, C, 0, Spec.Vocab, false)   // the first stage's counts
                    : Split("output", _head, _headGradient, c.VocabSize, C, 0, Spec.Vocab));
        }
        foreach (var parameter in all)
            if (parameter is not null) yield return parameter;   // the tensors this architecture and shard have
    }

    /// <summary>This shard's LoRA adapters by global layer, as PEFT saves them.</summary>
    public IEnumerable<Cluster.Model.Formats.LoraTensors> Adapters() =>
        _adapters.OrderBy(a => a.Key.Layer).ThenBy(a => Array.IndexOf(LoraTargets, a.Key.Target))
            .Select(a => new Cluster.Model.Formats.LoraTensors(Spec.Layers.Offset + a.Key.Layer, a.Key.Target, a.Value.A, a.Value.B));

    /// <summary>Begins a step: clears the gradients and forgets weight layouts packed before an optimizer changed them.</summary>
    public void ZeroGradients()
    {
        _kernels.ForgetPacked();
        foreach (var (_, _, gradient) in Parameters()) Array.Clear(gradient);
    }

    /// <summary>Σ gradient² over the parameters this shard counts (see ParameterSlice.Counted).</summary>
    public double CountedGradientSquares() =>
        Parameters().Where(p => p.Counted).Sum(p => (double)TensorPrimitives.SumOfSquares(p.Gradient));

    /// <summary>
    /// Forward and backward of a whole model over a batch: returns the mean cross-entropy over every counted target of
    /// the batch and adds its gradient to <see cref="Gradients"/> (call ZeroGradients between optimizer steps). The
    /// batch's sequences go through every product together, as rows of one matrix; attention keeps to each sequence.
    /// </summary>
    public float ForwardBackward(IReadOnlyList<TrainingSequence> batch)
    {
        if (!Spec.IsFirstStage || !Spec.IsLastStage) throw new InvalidOperationException($"shard {Spec} is one stage of a pipeline: run it with a PipelineTrainer");
        if (batch.All(s => s.CountedTargets == 0)) throw new ArgumentException("the batch has no counted targets", nameof(batch));
        _kernels.ForgetPacked();   // an optimizer may have changed the weights since the last call
        var activations = Forward(batch);
        return Backward(activations, null, 1f).Loss;
    }

    /// <summary>The logits (T, V) of every position (no gradients).</summary>
    public float[] Logits(int[] tokens, int[]? documents = null)
    {
        _kernels.ForgetPacked();
        return Forward([new TrainingSequence(tokens, new int[tokens.Length], documents)]).Logits;
    }

    /// <summary>
    /// This stage's forward over a micro-batch. The first stage embeds the tokens; later stages take the previous
    /// stage's <paramref name="input"/> (T, C). The last stage also computes the logits.
    /// </summary>
    /// <param name="dropoutSeed">Seeds LoRA dropout's masks (a trainer passes one per step and micro-batch, so a resumed run draws the same).</param>
    public StageActivations Forward(IReadOnlyList<TrainingSequence> batch, float[]? input = null, int dropoutSeed = 0)
    {
        var c = Config;
        int T = batch.Sum(s => s.Tokens.Length), C = c.Dim, H = _hidden, kv = _ckv, Cq = _cq;
        if (batch.Count == 0 || batch.Any(s => s.Tokens.Length == 0)) throw new ArgumentException("every training sequence needs tokens", nameof(batch));
        if (Spec.IsFirstStage != input is null) throw new ArgumentException(Spec.IsFirstStage ? "the first stage embeds tokens: no input" : $"stage {Spec.Stage} needs the previous stage's output", nameof(input));
        if (input is not null && input.Length != T * C) throw new ArgumentException($"the input holds {input.Length} floats, not {T}×{C}", nameof(input));
        var sequences = new (int, int, int[])[batch.Count];
        var positions = new int[T];
        for (int i = 0, offset = 0; i < batch.Count; offset += batch[i].Tokens.Length, i++)
        {
            var (tokens, targets, documents) = batch[i];
            if (targets.Length != tokens.Length) throw new ArgumentException("a sequence needs one target per token", nameof(batch));
            if (tokens.Length > c.MaxSeqLen) throw new ArgumentException($"a sequence of {tokens.Length} tokens is longer than the context of {c.MaxSeqLen}", nameof(batch));
            if (documents is not null && documents.Length != tokens.Length) throw new ArgumentException("documents must give one id per token", nameof(batch));
            foreach (int token in tokens)
                if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), token, $"token outside the vocabulary of {c.VocabSize}");
            sequences[i] = (offset, tokens.Length, documents ?? []);
            PositionsOf(tokens.Length, documents).CopyTo(positions, offset);
        }
        var a = new StageActivations(Weights.Layers.Length)
        {
            DropoutSeed = dropoutSeed,
            Tokens = [.. batch.SelectMany(s => s.Tokens)], Targets = [.. batch.SelectMany(s => s.Targets)], Positions = positions, Sequences = sequences,
        };
        bool llama = c.Architecture == Architecture.Llama;

        var x = input ?? Embed(a);                                                           // (T, C)
        for (int l = 0; l < Weights.Layers.Length; l++)
        {
            LayerWeightsNeeded?.Invoke(l);
            var next = ForwardLayer(a, l, x);
            LayerWeightsDone?.Invoke(l);
            if (_mode.ActivationCheckpointing) a.ForgetLayer(l);   // only its input stays; the backward recomputes the rest
            x = next;
        }
        a.Output = x;
        if (!Spec.IsLastStage) return a;
        a.FinalNormed = NormalizeRows(x, Weights.FinalNorm!, Weights.FinalNormBias, T);     // (T, C)
        CopyToRegion.Forward(a.FinalNormed, _tensorGroup);                                   // into the vocab-parallel head
        var logits = new float[T * _vocab];                                                  // (T, Vl)
        _kernels.Forward(a.FinalNormed, _head!, [], logits, T, _vocab, C);
        a.Logits = GatherFromRegion.Forward(logits, T, c.VocabSize, _tensorGroup);           // (T, V)
        return a;
    }

    /// <summary>Layer <paramref name="l"/> of this stage on x (T, C): keeps its activations in <paramref name="a"/>, returns its output (T, C).</summary>
    private float[] ForwardLayer(StageActivations a, int l, float[] x)
    {
        var c = Config;
        int T = a.Tokens.Length, C = c.Dim, H = _hidden, kv = _ckv, Cq = _cq;
        bool llama = c.Architecture == Architecture.Llama;
        var w = Weights.Layers[l];
        a.LayerInput[l] = x;
        var n1 = a.AttnNormed[l] = NormalizeRows(x, w.AttnNorm, w.AttnNormBias, T);          // (T, C)
        CopyToRegion.Forward(n1, _tensorGroup);                                              // into the column-parallel q/k/v
        var q = a.Q[l] = new float[T * Cq];
        var k = a.K[l] = new float[T * kv];
        var v = a.V[l] = new float[T * kv];
        Project(a, l, "wq", n1, w.Wq, w.Bq, q, T, Cq, C);
        Project(a, l, "wk", n1, w.Wk, w.Bk, k, T, kv, C);
        Project(a, l, "wv", n1, w.Wv, w.Bv, v, T, kv, C);
        if (llama)
        {
            _kernels.Rope(q, a.Positions, _heads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout, backward: false);
            _kernels.Rope(k, a.Positions, _kvHeads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout, backward: false);
        }
        var att = a.Attention[l] = new float[T * Cq];
        var allProbs = a.Probs[l] = new float[a.Sequences.Length][];
        _pool.For(a.Sequences.Length, (s0, s1) =>   // sequences in parallel: each writes its own rows
        {
            for (int i = s0; i < s1; i++)
            {
                var (offset, length, documents) = a.Sequences[i];
                var probs = allProbs[i] = new float[_heads * length * length];
                _kernels.Attention(q.AsSpan(offset * Cq, length * Cq), k.AsSpan(offset * kv, length * kv), v.AsSpan(offset * kv, length * kv),
                    att.AsSpan(offset * Cq, length * Cq), probs, documents, length, _heads, _kvHeads, c.HeadDim);
            }
        });
        var x1 = a.Residual[l] = new float[T * C];
        Project(a, l, "wo", att, w.Wo, null, x1, T, C, Cq);
        ReduceFromRegion.Forward(x1, _tensorGroup);                                          // (T, C) row-parallel wo: the ranks' partial sums
        AddBias(x1, w.Bo, T);
        TensorPrimitives.Add(x1, x, x1);
        var n2 = a.FfnNormed[l] = NormalizeRows(x1, w.FfnNorm, w.FfnNormBias, T);            // (T, C)
        CopyToRegion.Forward(n2, _tensorGroup);                                              // into the column-parallel w1/w3
        var gate = a.Gate[l] = new float[T * H];
        Project(a, l, "w1", n2, w.W1, w.B1, gate, T, H, C);
        var hidden = a.Hidden[l] = (float[])gate.Clone();
        if (llama)
        {
            var up = a.Up[l] = new float[T * H];
            Project(a, l, "w3", n2, w.W3!, null, up, T, H, C);
            _kernels.SwiGlu(hidden, up);
        }
        else _kernels.Gelu(hidden);
        var next = new float[T * C];
        Project(a, l, "w2", hidden, w.W2, null, next, T, C, H);
        ReduceFromRegion.Forward(next, _tensorGroup);                                        // (T, C) row-parallel w2: the ranks' partial sums
        AddBias(next, w.B2, T);
        TensorPrimitives.Add(next, x1, next);
        return next;
    }

    /// <summary>
    /// This stage's backward of a micro-batch: the last stage starts from the cross-entropy of its logits, scaled by
    /// <paramref name="lossScale"/> (the micro-batch's share of the global mean); other stages from the next stage's
    /// <paramref name="outputGradient"/> (T, C). Adds to <see cref="Gradients"/>; returns the loss (last stage, unscaled)
    /// and ∂L/∂input (T, C) for the previous stage (null on the first).
    /// </summary>
    public (float Loss, float[]? InputGradient) Backward(StageActivations a, float[]? outputGradient, float lossScale)
    {
        var c = Config;
        int T = a.Tokens.Length, C = c.Dim, H = _hidden, kv = _ckv, Cq = _cq, V = c.VocabSize;
        if (Spec.IsLastStage == outputGradient is not null) throw new ArgumentException(Spec.IsLastStage ? "the last stage starts from its loss" : "a stage before the last needs the next stage's gradient", nameof(outputGradient));
        float loss = 0;
        var dx = outputGradient ?? new float[T * C];                                         // ∂L/∂(stage output) (T, C)
        if (Spec.IsLastStage)
        {
            // (T, V): the step's largest temporary (65 MB for stories15M's micro-batch of 512 tokens); CrossEntropy writes
            // every element, so it is not zeroed first.
            var dlogits = Scratch(ref _scratch.DLogits, T * V, zeroed: false);
            loss = _kernels.CrossEntropy(a.Logits, a.Targets, dlogits, V);
            if (lossScale != 1f) TensorPrimitives.Multiply(dlogits, lossScale, dlogits);
            var dFinalNormed = Scratch(ref _scratch.DFinalNormed, T * C);
            var dLocalLogits = GatherFromRegion.Backward(dlogits, T, V, _tensorGroup);       // (T, Vl) this rank's columns
            _kernels.Backward(a.FinalNormed, _head!, dLocalLogits, dFinalNormed, _headGradient!, [], T, _vocab, C);
            CopyToRegion.Backward(dFinalNormed, _tensorGroup);                               // (T, C) the head's input gradient, summed over ranks
            NormalizeRowsBackward(a.Output, Weights.FinalNorm!, dFinalNormed, dx, Gradients.FinalNorm!, Gradients.FinalNormBias, T);
        }
        bool llama = c.Architecture == Architecture.Llama;
        for (int l = Weights.Layers.Length - 1; l >= 0; l--)
        {
            LayerWeightsNeeded?.Invoke(l);
            LayerWeights w = Weights.Layers[l], g = LayerGradients(l);
            if (_mode.ActivationCheckpointing) ForwardLayer(a, l, a.LayerInput[l]);   // recompute what the forward let go
            // x_out = x1 + W2·swiglu(W1·n2, W3·n2)   (GPT-2: W2·gelu(W1·n2 + b1) + b2)
            var dx1 = Scratch(ref _scratch.Dx1, T * C);
            dx.CopyTo(dx1);
            ReduceFromRegion.Backward(dx, _tensorGroup);                                     // (T, C) w2's summed output: each partial's gradient
            var dHidden = Scratch(ref _scratch.DHidden, T * H);
            ProjectBackward(a, l, "w2", a.Hidden[l], w.W2, dx, dHidden, g.W2, g.B2, T, C, H);
            var dGate = Scratch(ref _scratch.DGate, T * H);
            var dn2 = Scratch(ref _scratch.Dn2, T * C);
            if (llama)
            {
                var dUp = Scratch(ref _scratch.DUp, T * H);
                _kernels.SwiGluBackward(a.Gate[l], a.Up[l], dHidden, dGate, dUp);
                ProjectBackward(a, l, "w3", a.FfnNormed[l], w.W3!, dUp, dn2, g.W3!, null, T, H, C);
            }
            else _kernels.GeluBackward(a.Gate[l], dHidden, dGate);
            ProjectBackward(a, l, "w1", a.FfnNormed[l], w.W1, dGate, dn2, g.W1, g.B1, T, H, C);
            CopyToRegion.Backward(dn2, _tensorGroup);                                        // (T, C) w1/w3's input gradient, summed over ranks
            NormalizeRowsBackward(a.Residual[l], w.FfnNorm, dn2, dx1, g.FfnNorm, g.FfnNormBias, T);
            // x1 = x_in + Wo·attention(rope(Wq·n1), rope(Wk·n1), Wv·n1)
            // Layer by layer dx alternates between two buffers: this layer's input gradient is written while the next
            // layer's (its dx) may still be the other one.
            var dxIn = Scratch(ref l % 2 == 0 ? ref _scratch.DxEven : ref _scratch.DxOdd, T * C);
            dx1.CopyTo(dxIn);
            ReduceFromRegion.Backward(dx1, _tensorGroup);                                    // (T, C) wo's summed output: each partial's gradient
            var dAtt = Scratch(ref _scratch.DAtt, T * Cq);
            ProjectBackward(a, l, "wo", a.Attention[l], w.Wo, dx1, dAtt, g.Wo, g.Bo, T, C, Cq);
            var dq = Scratch(ref _scratch.Dq, T * Cq);
            var dk = Scratch(ref _scratch.Dk, T * kv);
            var dv = Scratch(ref _scratch.Dv, T * kv);
            float[] lq = a.Q[l], lk = a.K[l], lv = a.V[l];
            float[][] lprobs = a.Probs[l];
            _pool.For(a.Sequences.Length, (s0, s1) =>   // sequences in parallel: each writes its own rows of dq, dk, dv
            {
                for (int i = s0; i < s1; i++)
                {
                    var (o, n, _) = a.Sequences[i];
                    _kernels.AttentionBackward(lq.AsSpan(o * Cq, n * Cq), lk.AsSpan(o * kv, n * kv), lv.AsSpan(o * kv, n * kv), lprobs[i],
                        dAtt.AsSpan(o * Cq, n * Cq), dq.AsSpan(o * Cq, n * Cq), dk.AsSpan(o * kv, n * kv), dv.AsSpan(o * kv, n * kv), n, _heads, _kvHeads, c.HeadDim);
                }
            });
            if (llama)
            {
                _kernels.Rope(dq, a.Positions, _heads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout, backward: true);
                _kernels.Rope(dk, a.Positions, _kvHeads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout, backward: true);
            }
            var dn1 = Scratch(ref _scratch.Dn1, T * C);
            ProjectBackward(a, l, "wq", a.AttnNormed[l], w.Wq, dq, dn1, g.Wq, g.Bq, T, Cq, C);
            ProjectBackward(a, l, "wk", a.AttnNormed[l], w.Wk, dk, dn1, g.Wk, g.Bk, T, kv, C);
            ProjectBackward(a, l, "wv", a.AttnNormed[l], w.Wv, dv, dn1, g.Wv, g.Bv, T, kv, C);
            CopyToRegion.Backward(dn1, _tensorGroup);                                        // (T, C) q/k/v's input gradient, summed over ranks
            NormalizeRowsBackward(a.LayerInput[l], w.AttnNorm, dn1, dxIn, g.AttnNorm, g.AttnNormBias, T);
            dx = dxIn;
            LayerGradientsDone?.Invoke(l);
            LayerWeightsDone?.Invoke(l);
        }
        // The input gradient leaves for the previous stage, which may use it while this stage's next backward runs: a copy.
        if (!Spec.IsFirstStage || _lora is not null) return (loss, Spec.IsFirstStage ? null : [.. dx]);   // a frozen embedding needs no gradient
        ReduceFromRegion.Backward(dx, _tensorGroup);                                         // (T, C) the summed embedding's gradient
        var vocab = Spec.Vocab;
        int[] rows = [.. a.Tokens.Select(token => token >= vocab.Offset && token < vocab.End ? token - vocab.Offset : -1)];   // vocab-parallel: this rank's rows only
        _kernels.EmbeddingBackward(rows, dx, Gradients.TokenEmbedding!, C);
        if (Gradients.PositionEmbedding is { } dPositions) _kernels.EmbeddingBackward(a.Positions, dx, dPositions, C);
        return (loss, null);
    }

    /// <summary>y (T, n) = x (T, k)·Wᵀ (+ b), plus the LoRA update (α/r)·drop(x)·Aᵀ·Bᵀ when this projection is adapted.</summary>
    private void Project(StageActivations a, int layer, string target, float[] x, float[] w, float[]? b, float[] y, int T, int n, int k)
    {
        _kernels.Forward(x, w, b, y, T, n, k);
        if (!_adapters.TryGetValue((layer, target), out var adapter)) return;
        var input = x;                                                                       // (T, k)
        if (DropoutMask(a, layer, target, x.Length) is { } mask)
        {
            input = new float[x.Length];
            TensorPrimitives.Multiply(x, mask, input);
        }
        var low = new float[T * _lora!.Rank];                                                  // (T, r) = drop(x)·Aᵀ
        _kernels.Forward(input, adapter.A, [], low, T, _lora.Rank, k);
        var update = new float[T * n];                                                        // (T, n) = low·Bᵀ
        _kernels.Forward(low, adapter.B, [], update, T, n, _lora.Rank);
        TensorPrimitives.MultiplyAdd(update, _lora.Scale, y, y);
        a.Lora[(layer, target)] = (input, low);
    }

    /// <summary>dx += dy·W (and dW, db unless frozen); with an adapter also dB, dA and its part of dx (through the dropout mask).</summary>
    private void ProjectBackward(StageActivations a, int layer, string target, float[] x, float[] w, float[] dy, float[] dx, float[] dw, float[]? db,
        int T, int n, int k)
    {
        _kernels.Backward(x, w, dy, dx, dw, db ?? [], T, n, k);
        if (!_adapters.TryGetValue((layer, target), out var adapter)) return;
        var (input, low) = a.Lora[(layer, target)];
        int r = _lora!.Rank;
        var scaled = new float[dy.Length];                                                   // (T, n) ∂L/∂update
        TensorPrimitives.Multiply(dy, _lora.Scale, scaled);
        var dLow = new float[T * r];                                                          // (T, r)
        _kernels.Backward(low, adapter.B, scaled, dLow, adapter.GradB, [], T, n, r);
        var dInput = new float[T * k];                                                        // (T, k)
        _kernels.Backward(input, adapter.A, dLow, dInput, adapter.GradA, [], T, r, k);
        if (DropoutMask(a, layer, target, dInput.Length) is { } mask) TensorPrimitives.Multiply(dInput, mask, dInput);
        TensorPrimitives.Add(dx, dInput, dx);
    }

    /// <summary>LoRA dropout's mask for one projection and micro-batch: 0 or 1/keep per element, drawn again identically for the backward; null without dropout.</summary>
    private float[]? DropoutMask(StageActivations a, int layer, string target, int length)
    {
        if (_lora!.Dropout == 0) return null;
        var random = new Random(unchecked(_lora.Seed * 1_000_003 + a.DropoutSeed * 7_919 + (Spec.Layers.Offset + layer) * 101 + Array.IndexOf(LoraTargets, target)));
        float keep = 1 - _lora.Dropout;
        var mask = new float[length];
        for (int i = 0; i < length; i++) mask[i] = random.NextSingle() < keep ? 1 / keep : 0;
        return mask;
    }

    /// <summary>x (T, C): this rank's embedding rows for the tokens in its vocab slice, summed over the ranks, plus learned positions.</summary>
    private float[] Embed(StageActivations a)
    {
        int T = a.Tokens.Length, C = Config.Dim;
        var vocab = Spec.Vocab;
        var x = new float[T * C];
        for (int t = 0; t < T; t++)
            if (a.Tokens[t] >= vocab.Offset && a.Tokens[t] < vocab.End)
                Weights.TokenEmbedding!.AsSpan((a.Tokens[t] - vocab.Offset) * C, C).CopyTo(x.AsSpan(t * C));
        ReduceFromRegion.Forward(x, _tensorGroup);                                           // (T, C) vocab-parallel: the ranks' rows summed
        if (Weights.PositionEmbedding is { } learned)                                        // GPT-2: learned positions
            for (int t = 0; t < T; t++)
                TensorPrimitives.Add(x.AsSpan(t * C, C), learned.AsSpan(a.Positions[t] * C, C), x.AsSpan(t * C, C));
        return x;
    }

    private void AddBias(float[] y, float[]? bias, int rows)
    {
        if (bias is null) return;
        for (int r = 0; r < rows; r++) TensorPrimitives.Add(y.AsSpan(r * bias.Length, bias.Length), bias, y.AsSpan(r * bias.Length, bias.Length));
    }

    /// <summary>Positions restart at 0 with each document (llama-style packing), else run 0..T-1.</summary>
    private static int[] PositionsOf(int tokens, int[]? documents)
    {
        var positions = new int[tokens];
        for (int t = 1; t < tokens; t++)
            positions[t] = documents is not null && documents[t] != documents[t - 1] ? 0 : positions[t - 1] + 1;
        return positions;
    }

    /// <summary>RMSNorm (Llama) or LayerNorm with its bias (GPT-2) over each row of x (rows, C).</summary>
    private float[] NormalizeRows(float[] x, float[] weight, float[]? bias, int rows)
    {
        int C = Config.Dim;
        var y = new float[x.Length];
        if (bias is null) _kernels.RmsNorm(x, weight, y, rows, Config.NormEps);
        else _kernels.LayerNorm(x, weight, bias, y, rows, Config.NormEps);
        return y;
    }

    private void NormalizeRowsBackward(float[] x, float[] weight, float[] dy, float[] dx, float[] dWeight, float[]? dBias, int rows)
    {
        int C = Config.Dim;
        if (dWeight.Length == 0) (dWeight, dBias) = (_frozenNormGradient, dBias is null ? null : _frozenNormGradient);   // frozen: the weight's gradient is not kept
        if (dBias is null) _kernels.RmsNormBackward(x, weight, dy, dx, dWeight, rows, Config.NormEps);
        else _kernels.LayerNormBackward(x, weight, dy, dx, dWeight, dBias, rows, Config.NormEps);
    }

    /// <summary>The gradients a backward needs only while it runs (kept by the model, reused by the next layer and backward).</summary>
    private struct BackwardScratch
    {
        public float[]? DLogits, DFinalNormed, Dx1, DxEven, DxOdd, DHidden, DGate, DUp, Dn2, DAtt, Dq, Dk, Dv, Dn1;
    }

    /// <summary>
    /// The array in <paramref name="slot"/> when it has <paramref name="length"/> floats, zeroed as a new one would be
    /// (unless the caller overwrites it all); else a new one, kept there.
    /// </summary>
    private static float[] Scratch(ref float[]? slot, int length, bool zeroed = true)
    {
        if (slot is { } kept && kept.Length == length)
        {
            if (zeroed) Array.Clear(kept);
            return kept;
        }
        return slot = new float[length];
    }
}
