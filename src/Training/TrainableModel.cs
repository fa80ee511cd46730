// One shard of a decoder for training, Llama or GPT-2 family (llm.c's gpt2_forward / gpt2_backward, cut the Megatron
// way): a pipeline stage's layers at one tensor-parallel rank, or the whole model when the shard is whole. The forward
// keeps every activation the backward needs; the backward accumulates fp32 gradients into tensors shaped like the
// shard's weights. Every kernel runs on the shard's IDevice (CpuDevice by default, or the mode's device): activations
// stay on the device for the whole forward and backward; the host tensors (parameters, gradients, adapters) reach it
// through DeviceTensors (on the CPU device, the host arrays themselves). Tensor parallelism (TensorParallelRegions, each forward crossing named with its backward pair): Q/K/V,
// gate/up and the LM head are column-parallel (CopyToRegion: identity forward, all-reduce of the input gradient backward;
// the loss reads the vocab-cut logits where they are, VocabParallelCrossEntropy; Logits() joins them through
// GatherFromRegion), the attention output and down projections row-parallel and the embedding
// vocab-parallel (ReduceFromRegion: all-reduce forward, identity backward). Sequences may pack several documents:
// each document's positions restart at 0 and attention never crosses documents. A whole shard's logits equal the
// inference TransformerModel's.
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class Cluster.Tests.Training.TrainableModelTests
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
/// <paramref name="Layer"/>: the decoder layer it belongs to, by its index in this shard; null outside the layers.
/// </summary>
public sealed record ParameterSlice(string Name, float[] Parameter, float[] Gradient, int Rows, int Columns, int Axis, Slice Range, bool Counted, int? Layer = null)
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

/// <summary>
/// What one micro-batch's forward keeps for its backward, on the device; T counts the tokens of the whole micro-batch.
/// The backward returns its buffers to the model's pool (dispose one that is not differentiated).
/// </summary>
public sealed class StageActivations : IDisposable
{
    private readonly BufferPool _pool;

    internal StageActivations(int layers, BufferPool pool)
    {
        _pool = pool;
        (LayerInput, AttnNormed, Q, K, V, Probs, Attention, Residual, FfnNormed, Gate, Up, Hidden) =
            (new DeviceBuffer?[layers], new DeviceBuffer?[layers], new DeviceBuffer?[layers], new DeviceBuffer?[layers], new DeviceBuffer?[layers],
             new DeviceBuffer?[layers], new DeviceBuffer?[layers], new DeviceBuffer?[layers], new DeviceBuffer?[layers], new DeviceBuffer?[layers],
             new DeviceBuffer?[layers], new DeviceBuffer?[layers]);
        (RouterLogits, Routing) = (new DeviceBuffer?[layers], new MoeRouting?[layers]);
    }

    internal int[] Tokens = [];                       // (T,)
    internal int[] Targets = [];                      // (T,)
    internal int[] Positions = [];                    // (T,)
    internal int[] Starts = [];                       // (S + 1,) where each sequence's rows start
    internal int[] Documents = [];                    // (T,) document ids, or empty (one document per sequence)
    internal readonly DeviceBuffer?[] LayerInput;     // (T, C)
    internal readonly DeviceBuffer?[] AttnNormed;     // (T, C)
    internal readonly DeviceBuffer?[] Q;              // (T, Cq)   this rank's heads, after RoPE
    internal readonly DeviceBuffer?[] K;              // (T, Ckv)  after RoPE
    internal readonly DeviceBuffer?[] V;              // (T, Ckv)
    internal readonly DeviceBuffer?[] Probs;          // per sequence (nh_local, Ti, Ti), one after another
    internal readonly DeviceBuffer?[] Attention;      // (T, Cq)
    internal readonly DeviceBuffer?[] Residual;       // (T, C)    x after attention
    internal readonly DeviceBuffer?[] FfnNormed;      // (T, C)
    internal readonly DeviceBuffer?[] Gate;           // (T, Hl)   before the activation
    internal readonly DeviceBuffer?[] Up;             // (T, Hl)   Llama
    internal readonly DeviceBuffer?[] Hidden;         // (T, Hl)   activation output
    internal readonly DeviceBuffer?[] RouterLogits;   // (T, E)    MoE
    internal readonly MoeRouting?[] Routing;          //           MoE: each layer's routing of the micro-batch
    // MoE: each expert's rows of the layer, (Te, C) or (Te, H), kept for the backward
    internal readonly Dictionary<(int Layer, int Expert, ExpertActivation Which), DeviceBuffer> Experts = [];
    // MoE: the shared expert's activations of the layer, (T, Hs), (T, C) or (T,), kept for the backward
    internal readonly Dictionary<(int Layer, LayerActivation Which), DeviceBuffer> SharedExpert = [];

    /// <summary>Each layer's routing of the micro-batch (null for a dense layer): expert loads, drops.</summary>
    public IReadOnlyList<MoeRouting?> Routings => Routing;
    internal DeviceBuffer? X;                         // (T, C)    the stage's output
    internal DeviceBuffer? FinalNormed;               // (T, C)    last stage
    internal DeviceBuffer? LocalLogits;               // (T, Vl)   last stage: this rank's vocab columns (every column without TP)
    // drop(x) (T, K) (x itself without dropout), drop(x)·Aᵀ (T, r), the dropout mask (T, K) or null
    internal readonly Dictionary<(int Layer, string Target), (DeviceBuffer Input, DeviceBuffer Low, DeviceBuffer? Mask)> Lora = [];
    internal int DropoutSeed;

    internal DeviceBuffer Rent(int length, bool zeroed = false) => _pool.Rent(length, zeroed);

    /// <summary>Lets go of layer <paramref name="l"/>'s activations but its input (activation checkpointing, or its backward done).</summary>
    internal void ForgetLayer(int l)
    {
        foreach (var kept in new[] { AttnNormed, Q, K, V, Probs, Attention, Residual, FfnNormed, Gate, Up, Hidden, RouterLogits })
        {
            _pool.Return(kept[l]);
            kept[l] = null;
        }
        foreach (var key in Experts.Keys.Where(k => k.Layer == l).ToList())
        {
            _pool.Return(Experts[key]);
            Experts.Remove(key);
        }
        foreach (var key in SharedExpert.Keys.Where(k => k.Layer == l).ToList())
        {
            _pool.Return(SharedExpert[key]);
            SharedExpert.Remove(key);
        }
        foreach (var key in Lora.Keys.Where(k => k.Layer == l).ToList())
        {
            var (input, low, mask) = Lora[key];
            if (mask is not null) _pool.Return(input);   // without dropout the input is the layer's own activation
            _pool.Return(low);
            _pool.Return(mask);
            Lora.Remove(key);
        }
    }

    /// <summary>The stage's output (T, C) on the host: the hidden state the next stage takes (stages before the last only).</summary>
    public float[] Output { get; internal set; } = [];

    public void Dispose()
    {
        for (int l = 0; l < LayerInput.Length; l++)
        {
            ForgetLayer(l);
            _pool.Return(LayerInput[l]);
            LayerInput[l] = null;
        }
        foreach (var buffer in new[] { X, FinalNormed, LocalLogits }) _pool.Return(buffer);
        X = FinalNormed = LocalLogits = null;
    }
}

public sealed class TrainableModel : IDisposable
{
    private readonly IDevice _device;
    private readonly bool _ownsDevice;                // the CPU device it made for itself (a mode's device is its caller's)
    private readonly WorkerPool? _ownHostPool;        // the optimizer's host threads beside a device that is not the CPU
    private readonly DeviceTensors _tensors;
    private readonly BufferPool _buffers;
    private readonly CollectiveGroup? _tensorGroup;
    private readonly CollectiveGroup? _attentionGroup;   // the tensor group where attention is split over it (not under ep with tp = 1)
    private readonly float[]? _head, _headGradient;   // (Vl, C) the LM head; the embedding slice itself when tied on one stage
    private readonly int _cq, _ckv, _hidden, _vocab, _heads, _kvHeads;   // this rank's widths
    private readonly TrainingMode _mode;
    private readonly LoraOptions? _lora;
    private readonly Dictionary<(int Layer, string Target), LoraAdapter> _adapters = [];   // by local layer
    private readonly float[] _frozenNormGradient;   // where a frozen norm's unused weight gradient goes
    private float[] _hostLogits = [], _hostLogitGradient = [];   // (T, Vl) a vocab-parallel head's logits and their gradient on the host
    private readonly Nf4Tensor?[][] _quantized = [];
    private readonly ShardWeights _gradients;         // ∂loss/∂parameter, same shapes as Weights (read them through Parameters)  // QLoRA: per local layer, its projections (Parameters order: wq wk wv wo w1 w2 w3) in NF4

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
        _attentionGroup = DecoderShape.Of(config, spec).SplitsAttention ? _tensorGroup : null;
        int hd = config.HeadDim;
        (_heads, _kvHeads) = (spec.QueryHeads.Count, spec.KvHeads.Count);
        (_cq, _ckv, _hidden, _vocab) = (_heads * hd, _kvHeads * hd, spec.Hidden.Count, spec.Vocab.Count);
        _lora = lora;
        // A frozen base needs no gradients: its tensors get empty ones, which the products skip.
        _gradients = ShardWeights.Map(weights, a => lora is null ? new float[a.Length] : []);
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
        _headGradient = sharedHead ? _gradients.TokenEmbedding : _gradients.Output;
        if (_mode.Device is not null && _mode.Precision == Precision.BFloat16) throw new ArgumentException("bf16 products run on the CPU device only", nameof(mode));
        _ownsDevice = _mode.Device is null;
        _device = _mode.Device ?? new CpuDevice(threads, bfloat16Linear: _mode.Precision == Precision.BFloat16);
        if (_device is not CpuDevice) _ownHostPool = new WorkerPool(threads);
        _tensors = new DeviceTensors(_device);
        _buffers = new BufferPool(_device);
        ResetExpertStats();
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
        _buffers.Dispose();
        _tensors.Dispose();
        _ownHostPool?.Dispose();
        if (_ownsDevice) _device.Dispose();
    }

    public ModelConfig Config { get; }
    public ShardSpec Spec { get; }
    /// <summary>Memory of the activations and backward temporaries (the buffer pool; it grows to the largest micro-batch).</summary>
    public long WorkspaceBytes => _buffers.Bytes;

    /// <summary>Bytes of the trained parameters and their gradients as they are now (ZeRO-3 and ZeRO-2 hold only a slice between uses).</summary>
    public long ParameterAndGradientBytes() => TrainedTensors().Sum(p => (long)(p.Parameter.Length + p.Gradient.Length) * sizeof(float));

    /// <summary>Where this shard's kernels run.</summary>
    public IDevice Device => _device;
    /// <summary>The host threads of this shard (its CPU device's workers): optimizers update the host parameters on them.</summary>
    public WorkerPool HostPool => _ownHostPool ?? ((CpuDevice)_device).Pool;
    /// <summary>The parameters, updated in place by an optimizer.</summary>
    public ShardWeights Weights { get; }

    /// <summary>The head's gradient when it is a tied copy of the first stage's embedding (sum it with that stage's), else null.</summary>
    private float[]? TiedHeadGradient => Config.TiedEmbeddings && Spec.IsLastStage && !Spec.IsFirstStage && _lora is null ? _headGradient : null;
    /// <summary>The embedding's gradient that a last stage's tied head copy sums with (first stage of a pipeline with a tied head), else null.</summary>
    private float[]? TiedEmbeddingGradient => Config.TiedEmbeddings && Spec.IsFirstStage && !Spec.IsLastStage && _lora is null ? _gradients.TokenEmbedding : null;

    /// <summary>
    /// The gradient a pipeline's two copies of a tied embedding sum (the first stage's embedding, the last stage's head),
    /// whole on the host; null on other stages.
    /// </summary>
    internal float[]? TiedGradientOnHost()
    {
        if ((TiedEmbeddingGradient ?? TiedHeadGradient) is not { } gradient) return null;
        _tensors.FlushGradients();
        return gradient;
    }

    /// <summary>Which end of a pipeline's tied embedding this stage holds (its peer is the other end).</summary>
    internal bool HoldsTiedEmbedding => TiedEmbeddingGradient is not null;

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
            W2 = Next(present.W2)!, B2 = Next(present.B2), W3 = Next(present.W3), Router = Next(present.Router), RouterBias = Next(present.RouterBias),
            SharedW1 = Next(present.SharedW1), SharedW2 = Next(present.SharedW2), SharedW3 = Next(present.SharedW3), SharedExpertGate = Next(present.SharedExpertGate),
        };
        if (i != tensors.Count) throw new ArgumentException($"layer {l} has {i} tensors, {tensors.Count} given", nameof(tensors));
    }

    /// <summary>Lets go of layer <paramref name="l"/>'s weights (and their packed copies) until they are set again (ZeRO-3).</summary>
    internal void ReleaseLayerWeights(int l)
    {
        var layer = Weights.Layers[l];
        Weights.Layers[l] = ShardWeights.MapLayer(layer, w =>
        {
            _tensors.Forget(w);
            return [];
        });
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
        foreach (var w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3 }) if (w is not null) _tensors.Forget(w);
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
    internal void ReleaseLayerGradients(int l) => _gradients.Layers[l] = ShardWeights.MapLayer(_gradients.Layers[l], g =>
    {
        _tensors.Forget(g);
        return [];
    });

    /// <summary>Layer <paramref name="l"/>'s gradients, allocated (zeroed) again when ZeRO-2 released them.</summary>
    private LayerWeights LayerGradients(int l)
    {
        if (_lora is null && _gradients.Layers[l].Wq.Length == 0)
            _gradients.Layers[l] = ShardWeights.MapLayer(Weights.Layers[l], a => new float[a.Length]);
        return _gradients.Layers[l];
    }

    /// <summary>Whether this shard trains LoRA adapters on a frozen base.</summary>
    public bool IsLora => _lora is not null;

    /// <summary>
    /// Every trained parameter of this shard by its logical identity, in a fixed order (optimizers, clipping,
    /// checkpoints): with LoRA, the adapters only ("layers.N.wq.lora_a" (r, K), "….lora_b" (N, r)). The host arrays
    /// hold the newest values: what the device holds newer (after an optimizer step there) comes down first.
    /// </summary>
    public IEnumerable<ParameterSlice> Parameters()
    {
        _tensors.SyncToHost();
        return TrainedTensors();
    }

    /// <summary>
    /// As Parameters, without bringing anything down from the device: the host arrays of a device that is not the CPU
    /// may be stale (the trainer's own bookkeeping, and gradients it flushed itself).
    /// </summary>
    internal IEnumerable<ParameterSlice> TrainedTensors()
    {
        if (_lora is not null)
        {
            foreach (var ((layer, target), adapter) in _adapters.OrderBy(a => a.Key.Layer).ThenBy(a => Array.IndexOf(LoraTargets, a.Key.Target)))
            {
                string name = $"layers.{Spec.Layers.Offset + layer}.{target}.";
                yield return new ParameterSlice(name + "lora_a", adapter.A, adapter.GradA, _lora.Rank, adapter.K, 0, new Slice(0, _lora.Rank), true, layer);
                yield return new ParameterSlice(name + "lora_b", adapter.B, adapter.GradB, adapter.N, _lora.Rank, 0, new Slice(0, adapter.N), true, layer);
            }
            yield break;
        }
        var c = Config;
        int C = c.Dim, hd = c.HeadDim, E = c.FfnBlocks;
        bool rank0 = Spec.Rank == 0;
        // An MoE layer's experts are stacked whole, each rank its own: W1 and W3 (E·H, C), W2 (E·C, H), by rows.
        var experts = Spec.Experts;
        var hidden = c.Moe is null ? Spec.Hidden : new Slice(experts.Offset * c.HiddenDim, experts.Count * c.HiddenDim);
        int sharedHidden = c.Moe?.SharedExpertHidden ?? 0;   // a shared expert is cut by hidden units, as a dense MLP
        var q = new Slice(Spec.QueryHeads.Offset * hd, _cq);
        var kv = new Slice(Spec.KvHeads.Offset * hd, _ckv);
        ParameterSlice? Whole(string name, float[]? p, float[]? g, int rows, int columns = 1) =>
            p is null ? null : new(name, p, g!, rows, columns, 0, new Slice(0, rows), rank0);
        ParameterSlice? Split(string name, float[]? p, float[]? g, int rows, int columns, int axis, Slice range) =>
            p is null ? null : new(name, p, g!, rows, columns, axis, range, range.Count != (axis == 0 ? rows : columns) || rank0);

        var all = new List<ParameterSlice?>();
        if (Spec.IsFirstStage)
            all.AddRange([Split("token_embedding", Weights.TokenEmbedding, _gradients.TokenEmbedding, c.VocabSize, C, 0, Spec.Vocab),
                Whole("position_embedding", Weights.PositionEmbedding, _gradients.PositionEmbedding, c.MaxSeqLen, C)]);
        for (int i = 0; i < Weights.Layers.Length; i++)
        {
            LayerWeights w = Weights.Layers[i], g = _gradients.Layers[i];
            string p = $"layers.{Spec.Layers.Offset + i}.";
            int layer = i;
            all.AddRange(new[]
            {
                Whole(p + "attn_norm", w.AttnNorm, g.AttnNorm, C), Whole(p + "attn_norm.bias", w.AttnNormBias, g.AttnNormBias, C),
                Split(p + "wq", w.Wq, g.Wq, C, C, 0, q), Split(p + "bq", w.Bq, g.Bq, C, 1, 0, q),
                Split(p + "wk", w.Wk, g.Wk, c.KvDim, C, 0, kv), Split(p + "bk", w.Bk, g.Bk, c.KvDim, 1, 0, kv),
                Split(p + "wv", w.Wv, g.Wv, c.KvDim, C, 0, kv), Split(p + "bv", w.Bv, g.Bv, c.KvDim, 1, 0, kv),
                Split(p + "wo", w.Wo, g.Wo, C, C, 1, q), Whole(p + "bo", w.Bo, g.Bo, C),
                Whole(p + "ffn_norm", w.FfnNorm, g.FfnNorm, C), Whole(p + "ffn_norm.bias", w.FfnNormBias, g.FfnNormBias, C),
                Split(p + "w1", w.W1, g.W1, E * c.HiddenDim, C, 0, hidden), Split(p + "b1", w.B1, g.B1, c.HiddenDim, 1, 0, Spec.Hidden),
                c.Moe is null ? Split(p + "w2", w.W2, g.W2, C, c.HiddenDim, 1, Spec.Hidden) : Split(p + "w2", w.W2, g.W2, E * C, c.HiddenDim, 0, new Slice(experts.Offset * C, experts.Count * C)),
                Whole(p + "b2", w.B2, g.B2, C),
                Split(p + "w3", w.W3, g.W3, E * c.HiddenDim, C, 0, hidden), Whole(p + "router", w.Router, g.Router, E, C),
                Whole(p + "router_bias", w.RouterBias, g.RouterBias, E),   // no gradient: moved by the loads (UpdateRouterBiases), so AdamW leaves it be
                Split(p + "shared_w1", w.SharedW1, g.SharedW1, sharedHidden, C, 0, Spec.SharedHidden),
                Split(p + "shared_w2", w.SharedW2, g.SharedW2, C, sharedHidden, 1, Spec.SharedHidden),
                Split(p + "shared_w3", w.SharedW3, g.SharedW3, sharedHidden, C, 0, Spec.SharedHidden),
                Whole(p + "shared_gate", w.SharedExpertGate, g.SharedExpertGate, 1, C),
            }.Select(t => t is null ? null : t with { Layer = layer }));
        }
        if (Spec.IsLastStage)
        {
            all.AddRange([Whole("final_norm", Weights.FinalNorm, _gradients.FinalNorm, C), Whole("final_norm.bias", Weights.FinalNormBias, _gradients.FinalNormBias, C)]);
            if (!ReferenceEquals(_head, Weights.TokenEmbedding))
                all.Add(TiedHeadGradient is not null
                    ? new ParameterSlice("token_embedding", _head!, _headGradient!, c.VocabSize, C, 0, Spec.Vocab, false)   // the first stage's counts
                    : Split("output", _head, _headGradient, c.VocabSize, C, 0, Spec.Vocab));
        }
        foreach (var parameter in all)
            if (parameter is not null) yield return parameter;   // the tensors this architecture and shard have
    }

    /// <summary>This shard's LoRA adapters by global layer, as PEFT saves them.</summary>
    public IEnumerable<Cluster.Model.Formats.LoraTensors> Adapters()
    {
        _tensors.SyncToHost();
        return _adapters.OrderBy(a => a.Key.Layer).ThenBy(a => Array.IndexOf(LoraTargets, a.Key.Target))
            .Select(a => new Cluster.Model.Formats.LoraTensors(Spec.Layers.Offset + a.Key.Layer, a.Key.Target, a.Value.A, a.Value.B));
    }

    /// <summary>Begins a step: clears the gradients (on the device too), and takes up parameters the host changed.</summary>
    public void ZeroGradients()
    {
        ResetExpertStats();
        ReadHostChanges();
        _tensors.ZeroGradients(TrainedTensors().Select(p => p.Gradient));
    }

    /// <summary>
    /// Parameters may have changed on the host since they went to the device (a host optimizer's step, a restored
    /// checkpoint, a test's edit): the device reads them again, and packed layouts are rebuilt. Not when the device
    /// holds the newest parameters itself (its own optimizer's step): the host has not seen them, so cannot have
    /// changed them.
    /// </summary>
    private void ReadHostChanges()
    {
        if (!_tensors.DeviceIsNewer) _tensors.HostChanged();
    }

    /// <summary>The host changed parameters or optimizer moments (a checkpoint restored, a host optimizer's step): the device reads them again.</summary>
    internal void HostStateChanged() => _tensors.HostChanged();

    /// <summary>Moves every gradient's device part into its host array (collectives read them there).</summary>
    internal void FlushGradients() => _tensors.FlushGradients();

    /// <summary>
    /// Σ gradient² over the parameters this shard counts (see ParameterSlice.Counted), computed where the gradients
    /// are: one sum per tensor on the device, one download of the sums.
    /// </summary>
    public double CountedGradientSquares()
    {
        var tensors = TrainedTensors().ToArray();
        _tensors.GradientsToDevice(tensors.Select(p => p.Gradient));
        var counted = tensors.Where(p => p.Counted && p.Gradient.Length > 0).ToArray();
        if (counted.Length == 0) return 0;
        var sums = _buffers.Rent(counted.Length);
        for (int i = 0; i < counted.Length; i++) _device.SumOfSquares(_tensors.Gradient(counted[i].Gradient)!, counted[i].Gradient.Length, sums, i);
        var host = new float[counted.Length];
        _device.Download(sums, host);
        _buffers.Return(sums);
        return host.Sum(square => (double)square);
    }

    /// <summary>
    /// One AdamW step (AdamW's arithmetic, Cpu/AdamW) of every trained tensor, on the device: gradients scaled by
    /// <paramref name="clip"/> first, weight decay on matrices only (nanoGPT: norms and biases are not decayed).
    /// <paramref name="moments"/> are (M, V) per tensor in TrainedTensors order, host arrays the device keeps as it
    /// keeps parameters.
    /// </summary>
    internal void AdamWStep(IReadOnlyList<(float[] M, float[] V)> moments, int step, float learningRate, float clip, OptimizerOptions options)
    {
        var tensors = TrainedTensors().ToArray();
        if (tensors.Length != moments.Count) throw new ArgumentException($"{moments.Count} moment pairs for {tensors.Length} tensors", nameof(moments));
        _tensors.GradientsToDevice(tensors.Select(p => p.Gradient));
        for (int i = 0; i < tensors.Length; i++)
        {
            var p = tensors[i];
            int n = p.Parameter.Length;
            var gradient = _tensors.Gradient(p.Gradient)!;
            if (clip != 1f) _device.Scale(gradient, clip, n);
            _device.AdamW(_tensors.State(p.Parameter), gradient, _tensors.State(moments[i].M), _tensors.State(moments[i].V), n,
                step, learningRate, options.Beta1, options.Beta2, options.Eps, p.IsMatrix ? options.WeightDecay : 0f);
        }
        _tensors.UpdatedOnDevice();
    }

    /// <summary>
    /// Forward and backward of a whole model over a batch: returns the mean cross-entropy over every counted target of
    /// the batch and adds its gradient to <see cref="Gradients"/> (call ZeroGradients between optimizer steps). The
    /// batch's sequences go through every product together, as rows of one matrix; attention keeps to each sequence.
    /// </summary>
    public float ForwardBackward(IReadOnlyList<TrainingSequence> batch)
    {
        if (!Spec.IsFirstStage || !Spec.IsLastStage) throw new InvalidOperationException($"shard {Spec} is one stage of a pipeline: run it with a PipelineTrainer");
        if (batch.All(s => s.CountedTargets == 0)) throw new ArgumentException("the batch has no counted targets", nameof(batch));
        ReadHostChanges();   // a host optimizer or the caller may have changed the weights since the last call
        var activations = Forward(batch);
        return Backward(activations, null, 1f).Loss;
    }

    /// <summary>
    /// This shard's MoE layers' loads, drops and router losses (their gradients are in the step's) since the gradients
    /// were zeroed, or since the model was made (null for a dense model).
    /// </summary>
    public MoeStepStats? ExpertStats { get; private set; }

    private long[][] _layerLoads = [];   // (layers, E) each MoE layer's choices since the gradients were zeroed

    private void ResetExpertStats()
    {
        ExpertStats = Config.Moe is { } moe ? new MoeStepStats(moe.Experts) : null;
        _layerLoads = Config.Moe is { } m ? [.. Weights.Layers.Select(_ => new long[m.Experts])] : [];
    }

    /// <summary>
    /// Aux-loss-free balancing (DeepSeek-V3), after a step's optimizer update: each MoE layer's router bias moves by γ
    /// towards an even load, b_e += γ·sign(mean − load_e), from the step's loads summed over the data-parallel replicas
    /// by <paramref name="sumOverReplicas"/> (in place). Expert-parallel ranks route alike, so they move alike.
    /// </summary>
    internal void UpdateRouterBiases(Action<float[]> sumOverReplicas)
    {
        if (RouterBiasSteps(sumOverReplicas) is not { } steps) return;
        for (int l = 0; l < Weights.Layers.Length; l++)
        {
            var bias = Weights.Layers[l].RouterBias!;
            for (int e = 0; e < bias.Length; e++) bias[e] += steps[l][e];
            _device.Write(_tensors.State(bias), bias);   // the device's copy, which may be the newer state
        }
    }

    /// <summary>
    /// Each local layer's router-bias step γ·sign(mean − load_e) from the step's loads summed by
    /// <paramref name="sumOverReplicas"/> (every replica must call it together), or null without aux-loss-free balancing:
    /// for a caller that keeps the biases' master copy itself (ZeRO-3).
    /// </summary>
    internal float[][]? RouterBiasSteps(Action<float[]> sumOverReplicas)
    {
        if (Config.Moe is not { BiasUpdateRate: > 0 } moe) return null;
        var steps = new float[Weights.Layers.Length][];
        for (int l = 0; l < steps.Length; l++)
        {
            float[] load = [.. _layerLoads[l].Select(n => (float)n)];   // exact: counts far below 2^24
            sumOverReplicas(load);
            float mean = load.Average();
            steps[l] = [.. load.Select(n => moe.BiasUpdateRate * MathF.Sign(mean - n))];
        }
        return steps;
    }

    /// <summary>Whether <paramref name="p"/> is a layer's router bias (moved by the loads, not by AdamW).</summary>
    internal static bool IsRouterBias(ParameterSlice p) => p.Name.EndsWith(".router_bias", StringComparison.Ordinal);

    /// <summary>The logits (T, V) of every position (no gradients).</summary>
    public float[] Logits(int[] tokens, int[]? documents = null)
    {
        if (!Spec.IsLastStage) throw new InvalidOperationException($"shard {Spec} has no LM head: only the last stage gives logits");
        ReadHostChanges();
        using var activations = Forward([new TrainingSequence(tokens, new int[tokens.Length], documents)]);
        var local = new float[tokens.Length * _vocab];
        _device.Download(activations.LocalLogits!, local);
        return GatherFromRegion.Forward(local, tokens.Length, Config.VocabSize, _tensorGroup);   // (T, V)   vocab-parallel head: joined
    }

    /// <summary>
    /// This stage's forward over a micro-batch. The first stage embeds the tokens; later stages take the previous
    /// stage's <paramref name="input"/> (T, C). The last stage also computes the logits.
    /// </summary>
    /// <param name="dropoutSeed">Seeds LoRA dropout's masks (a trainer passes one per step and micro-batch, so a resumed run draws the same).</param>
    public StageActivations Forward(IReadOnlyList<TrainingSequence> batch, float[]? input = null, int dropoutSeed = 0)
    {
        var c = Config;
        int T = batch.Sum(s => s.Tokens.Length), C = c.Dim;
        if (batch.Count == 0 || batch.Any(s => s.Tokens.Length == 0)) throw new ArgumentException("every training sequence needs tokens", nameof(batch));
        if (Spec.IsFirstStage != input is null) throw new ArgumentException(Spec.IsFirstStage ? "the first stage embeds tokens: no input" : $"stage {Spec.Stage} needs the previous stage's output", nameof(input));
        if (input is not null && input.Length != T * C) throw new ArgumentException($"the input holds {input.Length} floats, not {T}×{C}", nameof(input));
        var starts = new int[batch.Count + 1];
        var positions = new int[T];
        for (int i = 0; i < batch.Count; i++)
        {
            var (tokens, targets, documents) = batch[i];
            if (targets.Length != tokens.Length) throw new ArgumentException("a sequence needs one target per token", nameof(batch));
            if (tokens.Length > c.MaxSeqLen) throw new ArgumentException($"a sequence of {tokens.Length} tokens is longer than the context of {c.MaxSeqLen}", nameof(batch));
            if (documents is not null && documents.Length != tokens.Length) throw new ArgumentException("documents must give one id per token", nameof(batch));
            foreach (int token in tokens)
                if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), token, $"token outside the vocabulary of {c.VocabSize}");
            starts[i + 1] = starts[i] + tokens.Length;
            PositionsOf(tokens.Length, documents).CopyTo(positions, starts[i]);
        }
        var a = new StageActivations(Weights.Layers.Length, _buffers)
        {
            DropoutSeed = dropoutSeed,
            Tokens = [.. batch.SelectMany(s => s.Tokens)], Targets = [.. batch.SelectMany(s => s.Targets)], Positions = positions, Starts = starts,
            // Sequences without document ids are one document each: id 0 within their own rows.
            Documents = batch.Any(s => s.Documents is not null) ? [.. batch.SelectMany(s => s.Documents ?? new int[s.Tokens.Length])] : [],
        };

        DeviceBuffer x;                                                                      // (T, C)
        if (input is null) x = Embed(a);
        else
        {
            x = a.Rent(T * C);
            _device.Write(x, input);
        }
        for (int l = 0; l < Weights.Layers.Length; l++)
        {
            LayerWeightsNeeded?.Invoke(l);
            var next = ForwardLayer(a, l, x);
            LayerWeightsDone?.Invoke(l);
            if (_mode.ActivationCheckpointing) a.ForgetLayer(l);   // only its input stays; the backward recomputes the rest
            x = next;
        }
        a.X = x;
        if (!Spec.IsLastStage)
        {
            a.Output = new float[T * C];
            _device.Download(x, a.Output);                                                   // the stage's edge: to the next stage
            return a;
        }
        a.FinalNormed = NormalizeRows(a, x, Weights.FinalNorm!, Weights.FinalNormBias, T);   // (T, C)
        CopyToRegion.Forward(_device, a.FinalNormed, T * C, _tensorGroup);                   // into the vocab-parallel head
        a.LocalLogits = a.Rent(T * _vocab);                                                  // (T, Vl)
        _device.Linear(a.FinalNormed, _tensors.State(_head!), a.LocalLogits, T, _vocab, C);
        return a;   // with TP the logits stay cut by vocabulary: the loss needs three numbers per row from each rank (VocabParallelCrossEntropy)
    }

    /// <summary>Layer <paramref name="l"/> of this stage on x (T, C): keeps its activations in <paramref name="a"/>, returns its output (T, C).</summary>
    private DeviceBuffer ForwardLayer(StageActivations a, int l, DeviceBuffer x)
    {
        a.LayerInput[l] = x;
        return DecoderLayer.Forward(_device, new TrainingPass(this, a, l), DecoderShape.Of(Config, Spec), x, a.Positions, _tensorGroup);
    }

    /// <summary>
    /// One layer of a training forward: weights from the host tensors (changed every step; with their LoRA update),
    /// every activation kept for the backward, causal attention over the packed sequences keeping its weights.
    /// </summary>
    private sealed class TrainingPass(TrainableModel model, StageActivations a, int layer) : ILayerPass
    {
        private readonly LayerWeights _w = model.Weights.Layers[layer];

        public DeviceBuffer? Vector(LayerVector which) => (which switch
        {
            LayerVector.AttnNorm => _w.AttnNorm, LayerVector.AttnNormBias => _w.AttnNormBias,
            LayerVector.FfnNorm => _w.FfnNorm, LayerVector.FfnNormBias => _w.FfnNormBias,
            LayerVector.WoBias => _w.Bo, LayerVector.W2Bias => _w.B2, LayerVector.RouterBias => _w.RouterBias,
            _ => throw new ArgumentOutOfRangeException(nameof(which)),
        }) is { } host ? model._tensors.State(host) : null;

        public void Project(LayerProjection which, DeviceBuffer x, DeviceBuffer y, int tokens)
        {
            int C = model.Config.Dim, H = model._hidden, q = model._cq, kv = model._ckv, Hs = model.Spec.SharedHidden.Count;
            var (target, weight, bias, n, k) = which switch
            {
                LayerProjection.Wq => ("wq", _w.Wq, _w.Bq, q, C), LayerProjection.Wk => ("wk", _w.Wk, _w.Bk, kv, C),
                LayerProjection.Wv => ("wv", _w.Wv, _w.Bv, kv, C), LayerProjection.Wo => ("wo", _w.Wo, null, C, q),
                LayerProjection.W1 => ("w1", _w.W1, _w.B1, H, C), LayerProjection.W2 => ("w2", _w.W2, null, C, H),
                LayerProjection.W3 => ("w3", _w.W3!, null, H, C), LayerProjection.Router => ("router", _w.Router!, null, model.Config.FfnBlocks, C),
                LayerProjection.SharedW1 => ("shared_w1", _w.SharedW1!, null, Hs, C), LayerProjection.SharedW2 => ("shared_w2", _w.SharedW2!, null, C, Hs),
                LayerProjection.SharedW3 => ("shared_w3", _w.SharedW3!, null, Hs, C), LayerProjection.SharedExpertGate => ("shared_gate", _w.SharedExpertGate!, null, 1, C),
                _ => throw new ArgumentOutOfRangeException(nameof(which)),
            };
            model.Project(a, layer, target, x, weight, bias, y, tokens, n, k);
        }

        public void ProjectExpert(LayerProjection which, int block, DeviceBuffer x, DeviceBuffer y, int tokens)
        {
            int C = model.Config.Dim, H = model._hidden;
            var (weight, n, k) = which switch
            {
                LayerProjection.W1 => (_w.W1, H, C), LayerProjection.W2 => (_w.W2, C, H), LayerProjection.W3 => (_w.W3!, H, C),
                _ => throw new ArgumentOutOfRangeException(nameof(which)),
            };
            model._device.Linear(x, model._tensors.State(weight), y, tokens, n, k, block);
        }

        public DeviceBuffer ExpertActivation(ExpertActivation which, int expert, int length)
        {
            var buffer = a.Rent(length);
            a.Experts[(layer, expert, which)] = buffer;   // all kept until the layer's backward (Weighted and Scales only to be returned with them)
            return buffer;
        }

        public void Routed(MoeRouting routing) => a.Routing[layer] = routing;

        public DeviceBuffer Activation(LayerActivation which, int length)
        {
            var buffer = a.Rent(length);
            if (which is LayerActivation.SharedGate or LayerActivation.SharedUp or LayerActivation.SharedHidden or LayerActivation.SharedOutput
                or LayerActivation.SharedScales or LayerActivation.SharedWeighted)   // the shared expert's: kept until the layer's backward (Weighted only to be returned with them)
            {
                a.SharedExpert[(layer, which)] = buffer;
                return buffer;
            }
            var kept = which switch
            {
                LayerActivation.AttnNormed => a.AttnNormed, LayerActivation.Q => a.Q, LayerActivation.K => a.K, LayerActivation.V => a.V,
                LayerActivation.Attention => a.Attention, LayerActivation.Residual => a.Residual, LayerActivation.FfnNormed => a.FfnNormed,
                LayerActivation.Gate => a.Gate, LayerActivation.Up => a.Up, LayerActivation.Hidden => a.Hidden,
                LayerActivation.Output => null,   // the next layer's input (or the stage's output)
                LayerActivation.RouterLogits => a.RouterLogits,
                _ => throw new ArgumentOutOfRangeException(nameof(which)),
            };
            if (kept is not null) kept[layer] = buffer;
            return buffer;
        }

        public void Attend(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output)
        {
            var probs = a.Probs[layer] = a.Rent(TrainingAttention.ProbsOffsets(a.Starts, model._heads)[^1]);
            model._device.CausalAttention(q, k, v, output, probs, a.Starts, a.Documents, model._heads, model._kvHeads, model.Config.HeadDim);
        }
    }

    /// <summary>
    /// This stage's backward of a micro-batch: the last stage starts from the cross-entropy of its logits, scaled by
    /// <paramref name="lossScale"/> (the micro-batch's share of the global mean); other stages from the next stage's
    /// <paramref name="outputGradient"/> (T, C). Adds to the gradients; returns the loss (last stage, unscaled)
    /// and ∂L/∂input (T, C) for the previous stage (null on the first). The activations go back to the pool.
    /// </summary>
    public (float Loss, float[]? InputGradient) Backward(StageActivations a, float[]? outputGradient, float lossScale)
    {
        var c = Config;
        int T = a.Tokens.Length, C = c.Dim, H = _hidden, kv = _ckv, Cq = _cq, V = c.VocabSize;
        if (Spec.IsLastStage == outputGradient is not null) throw new ArgumentException(Spec.IsLastStage ? "the last stage starts from its loss" : "a stage before the last needs the next stage's gradient", nameof(outputGradient));
        if (outputGradient is not null && outputGradient.Length != T * C) throw new ArgumentException($"the output gradient holds {outputGradient.Length} floats, not {T}×{C}", nameof(outputGradient));
        float loss = 0;
        var dx = a.Rent(T * C, zeroed: outputGradient is null);                              // ∂L/∂(stage output) (T, C)
        if (outputGradient is not null) _device.Write(dx, outputGradient);
        var temporaries = new List<DeviceBuffer>();
        DeviceBuffer Temporary(int length, bool zeroed = true)
        {
            var buffer = a.Rent(length, zeroed);
            temporaries.Add(buffer);
            return buffer;
        }
        if (Spec.IsLastStage)
        {
            // (T, Vl): the step's largest temporary (65 MB for stories15M's micro-batch of 512 tokens, split over the
            // tensor-parallel ranks); the cross-entropy writes every element, so it is not zeroed first.
            var dLocalLogits = Temporary(T * _vocab, zeroed: false);
            int counted = Cluster.Compute.Cpu.CrossEntropy.Counted(a.Targets, V);
            if (counted == 0) _device.Zero(dLocalLogits, T * _vocab);
            else if (_tensorGroup is null || _tensorGroup.WorldSize == 1)
            {
                var losses = Temporary(T, zeroed: false);
                _device.CrossEntropy(a.LocalLogits!, a.Targets, dLocalLogits, losses, V, counted);
                var rowLosses = new float[T];
                _device.Download(losses, rowLosses);                                         // the loss: T floats out
                loss = (float)(rowLosses.Sum(r => (double)r) / counted);
            }
            else loss = VocabParallelLoss(a, dLocalLogits, counted);
            if (lossScale != 1f) _device.Scale(dLocalLogits, lossScale, T * _vocab);
            var dFinalNormed = Temporary(T * C);
            _device.LinearBackward(a.FinalNormed!, _tensors.State(_head!), dLocalLogits, dFinalNormed, _tensors.Gradient(_headGradient!), null, T, _vocab, C);
            CopyToRegion.Backward(_device, dFinalNormed, T * C, _tensorGroup);               // (T, C) the head's input gradient, summed over ranks
            NormalizeRowsBackward(a.X!, Weights.FinalNorm!, dFinalNormed, dx, _gradients.FinalNorm!, _gradients.FinalNormBias, T);
        }
        bool llama = c.Architecture == Architecture.Llama;
        for (int l = Weights.Layers.Length - 1; l >= 0; l--)
        {
            LayerWeightsNeeded?.Invoke(l);
            LayerWeights w = Weights.Layers[l], g = LayerGradients(l);
            if (_mode.ActivationCheckpointing) _buffers.Return(ForwardLayer(a, l, a.LayerInput[l]!));   // recompute what the forward let go
            // x_out = x1 + W2·swiglu(W1·n2, W3·n2)   (GPT-2: W2·gelu(W1·n2 + b1) + b2)
            var dx1 = Temporary(T * C, zeroed: false);
            _device.Copy(dx, dx1, T * C);
            var dn2 = Temporary(T * C);
            if (c.Moe is not null) MoeBackward(a, l, w, g, dx, dn2, lossScale, Temporary);
            else
            {
                ReduceFromRegion.Backward(_device, dx, T * C, _tensorGroup);                 // (T, C) w2's summed output: each partial's gradient
                var dHidden = Temporary(T * H);
                ProjectBackward(a, l, "w2", a.Hidden[l]!, w.W2, dx, dHidden, g.W2, g.B2, T, C, H, Temporary);
                var dGate = Temporary(T * H);
                if (llama)
                {
                    var dUp = Temporary(T * H);
                    _device.SwiGluBackward(a.Gate[l]!, a.Up[l]!, dHidden, dGate, dUp, T * H);
                    ProjectBackward(a, l, "w3", a.FfnNormed[l]!, w.W3!, dUp, dn2, g.W3!, null, T, H, C, Temporary);
                }
                else _device.GeluBackward(a.Gate[l]!, dHidden, dGate, T * H);
                ProjectBackward(a, l, "w1", a.FfnNormed[l]!, w.W1, dGate, dn2, g.W1, g.B1, T, H, C, Temporary);
                CopyToRegion.Backward(_device, dn2, T * C, _tensorGroup);                    // (T, C) w1/w3's input gradient, summed over ranks
            }
            NormalizeRowsBackward(a.Residual[l]!, w.FfnNorm, dn2, dx1, g.FfnNorm, g.FfnNormBias, T);
            // x1 = x_in + Wo·attention(rope(Wq·n1), rope(Wk·n1), Wv·n1)
            var dxIn = a.Rent(T * C);
            _device.Copy(dx1, dxIn, T * C);
            ReduceFromRegion.Backward(_device, dx1, T * C, _attentionGroup);                 // (T, C) wo's summed output: each partial's gradient
            var dAtt = Temporary(T * Cq);
            ProjectBackward(a, l, "wo", a.Attention[l]!, w.Wo, dx1, dAtt, g.Wo, g.Bo, T, C, Cq, Temporary);
            var dq = Temporary(T * Cq);
            var dk = Temporary(T * kv);
            var dv = Temporary(T * kv);
            _device.CausalAttentionBackward(a.Q[l]!, a.K[l]!, a.V[l]!, a.Probs[l]!, dAtt, dq, dk, dv, a.Starts, _heads, _kvHeads, c.HeadDim);
            if (llama)
            {
                _device.RopeBackward(dq, a.Positions, _heads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
                _device.RopeBackward(dk, a.Positions, _kvHeads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
            }
            var dn1 = Temporary(T * C);
            ProjectBackward(a, l, "wq", a.AttnNormed[l]!, w.Wq, dq, dn1, g.Wq, g.Bq, T, Cq, C, Temporary);
            ProjectBackward(a, l, "wk", a.AttnNormed[l]!, w.Wk, dk, dn1, g.Wk, g.Bk, T, kv, C, Temporary);
            ProjectBackward(a, l, "wv", a.AttnNormed[l]!, w.Wv, dv, dn1, g.Wv, g.Bv, T, kv, C, Temporary);
            CopyToRegion.Backward(_device, dn1, T * C, _attentionGroup);                     // (T, C) q/k/v's input gradient, summed over ranks
            NormalizeRowsBackward(a.LayerInput[l]!, w.AttnNorm, dn1, dxIn, g.AttnNorm, g.AttnNormBias, T);
            _buffers.Return(dx);
            foreach (var buffer in temporaries) _buffers.Return(buffer);
            temporaries.Clear();
            a.ForgetLayer(l);
            dx = dxIn;
            if (LayerGradientsDone is { } layerGradientsDone)
            {
                _tensors.FlushGradients();   // the hook reads this layer's gradients on the host
                layerGradientsDone(l);
            }
            LayerWeightsDone?.Invoke(l);
        }
        float[]? inputGradient = null;
        if (!Spec.IsFirstStage)
        {
            inputGradient = new float[T * C];                                                // the stage's edge: to the previous stage
            _device.Download(dx, inputGradient);
        }
        else if (_lora is null)                                                              // a frozen embedding needs no gradient
        {
            ReduceFromRegion.Backward(_device, dx, T * C, _tensorGroup);                     // (T, C) the summed embedding's gradient
            var vocab = Spec.Vocab;
            int[] rows = [.. a.Tokens.Select(token => token >= vocab.Offset && token < vocab.End ? token - vocab.Offset : -1)];   // vocab-parallel: this rank's rows only
            _device.EmbeddingBackward(rows, dx, _tensors.Gradient(_gradients.TokenEmbedding!)!, C);
            if (_gradients.PositionEmbedding is { } dPositions) _device.EmbeddingBackward(a.Positions, dx, _tensors.Gradient(dPositions)!, C);
        }
        _buffers.Return(dx);
        foreach (var buffer in temporaries) _buffers.Return(buffer);
        a.Dispose();   // the gradients stay on the device until a collective, an optimizer or a reader needs them
        return (loss, inputGradient);
    }

    /// <summary>
    /// Backward of layer <paramref name="l"/>'s mixture of experts (MixtureOfExperts.Forward) from dOut (T, C), the
    /// gradient of its output (whole on every rank of an expert-parallel group): this rank's experts' W1, W2, W3
    /// gradients (their blocks), the router's, and dn2 (T, C) += the gradient of the normed input, through every rank's
    /// experts (summed over the group) and through the router (the same on every rank).
    /// </summary>
    private void MoeBackward(StageActivations a, int l, LayerWeights w, LayerWeights g, DeviceBuffer dOut, DeviceBuffer dn2, float lossScale,
        Func<int, bool, DeviceBuffer> temporary)
    {
        var routing = a.Routing[l]!;
        var moe = Config.Moe!;
        int T = a.Tokens.Length, C = Config.Dim, H = _hidden, E = moe.Experts, k = moe.ExpertsPerToken;
        ExpertStats?.Add(routing, lossScale);
        for (int e = 0; e < E; e++) _layerLoads[l][e] += routing.Load[e];
        var choiceGradients = new float[T * k];                                              // (T, k) ∂L/∂weight of each choice; 0 where dropped or another rank's
        for (int e = Spec.Experts.Offset; e < Spec.Experts.End; e++)
        {
            var rows = routing.ExpertTokens[e];
            int n = rows.Length, block = e - Spec.Experts.Offset;
            if (n == 0) continue;
            DeviceBuffer Kept(ExpertActivation which) => a.Experts[(l, e, which)];
            var dOutput = temporary(n * C, false);                                           // (Te, C) the gradient of its rows of the output
            _device.GatherRows(dOut, rows, dOutput, C);
            var dots = temporary(n, false);                                                  // (Te,) ∂L/∂weight = dOut · expert output
            _device.RowDots(dOutput, Kept(ExpertActivation.Output), dots, n, C);
            var hostDots = new float[n];
            _device.Download(dots, hostDots);                                                // Te floats out: the router's gradient is made on the host
            for (int r = 0; r < n; r++) choiceGradients[routing.ExpertChoices[e][r]] = hostDots[r];
            _device.ScaleRows(dOutput, Kept(ExpertActivation.Scales), n, C);                 // (Te, C) ∂L/∂(expert output) = weight · dOut
            var dHidden = temporary(n * H, true);                                            // (Te, H)
            _device.LinearBackward(Kept(ExpertActivation.Hidden), _tensors.State(w.W2), dOutput, dHidden, _tensors.Gradient(g.W2), null, n, C, H, block);
            var dGate = temporary(n * H, true);
            var dUp = temporary(n * H, true);
            _device.SwiGluBackward(Kept(ExpertActivation.Gate), Kept(ExpertActivation.Up), dHidden, dGate, dUp, n * H);
            var dInput = temporary(n * C, true);                                             // (Te, C)
            _device.LinearBackward(Kept(ExpertActivation.Input), _tensors.State(w.W1), dGate, dInput, _tensors.Gradient(g.W1), null, n, H, C, block);
            _device.LinearBackward(Kept(ExpertActivation.Input), _tensors.State(w.W3!), dUp, dInput, _tensors.Gradient(g.W3!), null, n, H, C, block);
            _device.EmbeddingBackward(rows, dInput, dn2, C);                                 // dn2[rows[r]] += dInput[r]: back to the tokens' rows
        }
        // (T,) ∂L/∂(x·g) of the shared expert's gate: this rank's part (its hidden units' share of the output) until summed
        float[] gateGradients = w.SharedW1 is null ? [] : SharedExpertBackward(a, l, w, g, dOut, dn2, temporary);
        CopyToRegion.Backward(_device, dn2, T * C, _tensorGroup);                            // (T, C) every rank's experts' input gradient, summed
        if (_tensorGroup is not null)                                                        // each rank knows its experts' choices: summed, all know all
        {
            float[] both = [.. choiceGradients, .. gateGradients];                           // one all-reduce for the router's and the gate's
            var summed = temporary(both.Length, false);
            _device.Write(summed, both);
            ReduceFromRegion.Forward(_device, summed, both.Length, _tensorGroup);
            _device.Download(summed, both);
            both.AsSpan(0, T * k).CopyTo(choiceGradients);
            both.AsSpan(T * k).CopyTo(gateGradients);
        }
        var dLogits = temporary(T * E, false);                                               // (T, E) the same on every rank
        _device.Write(dLogits, routing.RouterGradient(choiceGradients, lossScale));
        _device.LinearBackward(a.FfnNormed[l]!, _tensors.State(w.Router!), dLogits, dn2, _tensors.Gradient(g.Router!), null, T, E, C);
        if (gateGradients.Length > 0)                                                        // the gate's gradient, the same on every rank
        {
            var dScores = temporary(T, false);                                               // (T, 1)
            _device.Write(dScores, gateGradients);
            _device.LinearBackward(a.FfnNormed[l]!, _tensors.State(w.SharedExpertGate!), dScores, dn2, _tensors.Gradient(g.SharedExpertGate!), null, T, 1, C);
        }
    }

    /// <summary>
    /// Backward of layer <paramref name="l"/>'s shared expert (MixtureOfExperts.SharedExpert) from dOut (T, C): this rank's
    /// slice of W1s, W2s, W3s gets its gradients and dn2 (T, C) its part of the input gradient (summed over the group with
    /// the routed experts'). Returns ∂L/∂(x·g) (T,) from this rank's part of the output (empty without a gate): σ'·(dOut · output).
    /// </summary>
    private float[] SharedExpertBackward(StageActivations a, int l, LayerWeights w, LayerWeights g, DeviceBuffer dOut, DeviceBuffer dn2,
        Func<int, bool, DeviceBuffer> temporary)
    {
        int T = a.Tokens.Length, C = Config.Dim, Hs = Spec.SharedHidden.Count;
        DeviceBuffer Kept(LayerActivation which) => a.SharedExpert[(l, which)];
        var dOutput = temporary(T * C, false);                                               // (T, C) ∂L/∂(ungated output)
        _device.Copy(dOut, dOutput, T * C);
        float[] gateGradients = [];
        if (Config.Moe!.SharedExpertGate)
        {
            var dots = temporary(T, false);                                                  // (T,) dOut · ungated output
            _device.RowDots(dOut, Kept(LayerActivation.SharedOutput), dots, T, C);
            gateGradients = new float[T];
            var sigmoid = new float[T];
            _device.Download(dots, gateGradients);
            _device.Download(Kept(LayerActivation.SharedScales), sigmoid);
            for (int t = 0; t < T; t++) gateGradients[t] *= sigmoid[t] * (1 - sigmoid[t]);
            _device.ScaleRows(dOutput, Kept(LayerActivation.SharedScales), T, C);           // ∂L/∂(ungated output) = σ · dOut
        }
        var dHidden = temporary(T * Hs, true);                                               // (T, Hs)
        _device.LinearBackward(Kept(LayerActivation.SharedHidden), _tensors.State(w.SharedW2!), dOutput, dHidden, _tensors.Gradient(g.SharedW2!), null, T, C, Hs);
        var dGate = temporary(T * Hs, true);
        var dUp = temporary(T * Hs, true);
        _device.SwiGluBackward(Kept(LayerActivation.SharedGate), Kept(LayerActivation.SharedUp), dHidden, dGate, dUp, T * Hs);
        _device.LinearBackward(a.FfnNormed[l]!, _tensors.State(w.SharedW1!), dGate, dn2, _tensors.Gradient(g.SharedW1!), null, T, Hs, C);
        _device.LinearBackward(a.FfnNormed[l]!, _tensors.State(w.SharedW3!), dUp, dn2, _tensors.Gradient(g.SharedW3!), null, T, Hs, C);
        return gateGradients;
    }

    /// <summary>
    /// The mean loss and dLocal (T, Vl) over a vocab-parallel head (VocabParallelCrossEntropy), through host copies of
    /// this rank's logits and gradient (kept between steps): the ranks exchange three floats per row, not (T, V) logits.
    /// </summary>
    private float VocabParallelLoss(StageActivations a, DeviceBuffer dLocalLogits, int counted)
    {
        int length = a.Tokens.Length * _vocab;
        if (_hostLogits.Length < length) (_hostLogits, _hostLogitGradient) = (new float[length], new float[length]);
        _device.Download(a.LocalLogits!, _hostLogits.AsSpan(0, length));
        double loss = VocabParallelCrossEntropy.LossAndGradient(_hostLogits, _hostLogitGradient, a.Targets, Spec.Vocab.Offset, _vocab, counted, _tensorGroup!);
        _device.Write(dLocalLogits, _hostLogitGradient.AsSpan(0, length));
        return (float)(loss / counted);
    }

    /// <summary>y (T, n) = x (T, k)·Wᵀ (+ b), plus the LoRA update (α/r)·drop(x)·Aᵀ·Bᵀ when this projection is adapted.</summary>
    private void Project(StageActivations a, int layer, string target, DeviceBuffer x, float[] w, float[]? b, DeviceBuffer y, int T, int n, int k)
    {
        _device.Linear(x, _tensors.State(w), y, T, n, k);
        AddBias(y, b, T);
        if (!_adapters.TryGetValue((layer, target), out var adapter)) return;
        var input = x;                                                                       // (T, k)
        DeviceBuffer? mask = null;
        if (DropoutMask(a, layer, target, T * k) is { } drawn)
        {
            mask = a.Rent(T * k);
            _device.Write(mask, drawn);
            input = a.Rent(T * k);
            _device.Copy(x, input, T * k);
            _device.Multiply(input, mask, T * k);
        }
        var low = a.Rent(T * _lora!.Rank);                                                   // (T, r) = drop(x)·Aᵀ
        _device.Linear(input, _tensors.State(adapter.A), low, T, _lora.Rank, k);
        var update = a.Rent(T * n);                                                          // (T, n) = low·Bᵀ
        _device.Linear(low, _tensors.State(adapter.B), update, T, n, _lora.Rank);
        _device.AddScaled(y, update, _lora.Scale, T * n);
        _buffers.Return(update);
        a.Lora[(layer, target)] = (input, low, mask);
    }

    /// <summary>dx += dy·W (and dW, db unless frozen); with an adapter also dB, dA and its part of dx (through the dropout mask).</summary>
    private void ProjectBackward(StageActivations a, int layer, string target, DeviceBuffer x, float[] w, DeviceBuffer dy, DeviceBuffer dx, float[] dw, float[]? db,
        int T, int n, int k, Func<int, bool, DeviceBuffer> temporary)
    {
        _device.LinearBackward(x, _tensors.State(w), dy, dx, _tensors.Gradient(dw), db is null ? null : _tensors.Gradient(db), T, n, k);
        if (!_adapters.TryGetValue((layer, target), out var adapter)) return;
        var (input, low, mask) = a.Lora[(layer, target)];
        int r = _lora!.Rank;
        var scaled = temporary(T * n, false);                                                // (T, n) ∂L/∂update
        _device.Copy(dy, scaled, T * n);
        _device.Scale(scaled, _lora.Scale, T * n);
        var dLow = temporary(T * r, true);                                                   // (T, r)
        _device.LinearBackward(low, _tensors.State(adapter.B), scaled, dLow, _tensors.Gradient(adapter.GradB), null, T, n, r);
        var dInput = temporary(T * k, true);                                                 // (T, k)
        _device.LinearBackward(input, _tensors.State(adapter.A), dLow, dInput, _tensors.Gradient(adapter.GradA), null, T, r, k);
        if (mask is not null) _device.Multiply(dInput, mask, T * k);
        _device.Add(dx, dInput, T * k);
    }

    /// <summary>LoRA dropout's mask for one projection and micro-batch: 0 or 1/keep per element; null without dropout.</summary>
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
    private DeviceBuffer Embed(StageActivations a)
    {
        int T = a.Tokens.Length, C = Config.Dim;
        var vocab = Spec.Vocab;
        int[] rows = [.. a.Tokens.Select(token => token >= vocab.Offset && token < vocab.End ? token - vocab.Offset : -1)];   // −1: another rank's row, zeros here
        var x = a.Rent(T * C);
        _device.Embedding(_tensors.State(Weights.TokenEmbedding!), rows, x, C);
        ReduceFromRegion.Forward(_device, x, T * C, _tensorGroup);                           // (T, C) vocab-parallel: the ranks' rows summed
        if (Weights.PositionEmbedding is { } learned)                                        // GPT-2: learned positions
            _device.AddEmbedding(x, _tensors.State(learned), a.Positions, C);
        return x;
    }

    private void AddBias(DeviceBuffer y, float[]? bias, int rows)
    {
        if (bias is not null) _device.AddBias(y, _tensors.State(bias), rows, bias.Length);
    }

    /// <summary>Positions restart at 0 with each document (llama-style packing), else run 0..T-1.</summary>
    private static int[] PositionsOf(int tokens, int[]? documents)
    {
        var positions = new int[tokens];
        for (int t = 1; t < tokens; t++)
            positions[t] = documents is not null && documents[t] != documents[t - 1] ? 0 : positions[t - 1] + 1;
        return positions;
    }

    /// <summary>The final norm (DecoderLayer.Normalize) of each row of x (rows, C), into a buffer of the activations'.</summary>
    private DeviceBuffer NormalizeRows(StageActivations a, DeviceBuffer x, float[] weight, float[]? bias, int rows)
    {
        var y = a.Rent(rows * Config.Dim);
        DecoderLayer.Normalize(_device, Config, x, _tensors.State(weight), bias is null ? null : _tensors.State(bias), y, rows);
        return y;
    }

    private void NormalizeRowsBackward(DeviceBuffer x, float[] weight, DeviceBuffer dy, DeviceBuffer dx, float[] dWeight, float[]? dBias, int rows)
    {
        int C = Config.Dim;
        if (dWeight.Length == 0) (dWeight, dBias) = (_frozenNormGradient, dBias is null ? null : _frozenNormGradient);   // frozen: the weight's gradient is not kept
        if (dBias is null) _device.RmsNormBackward(x, _tensors.State(weight), dy, dx, _tensors.Gradient(dWeight)!, rows, C, Config.NormEps);
        else _device.LayerNormBackward(x, _tensors.State(weight), dy, dx, _tensors.Gradient(dWeight)!, _tensors.Gradient(dBias)!, rows, C, Config.NormEps);
    }
}
