// The serving forward over a batch of sequences at different positions, on any IDevice, against a paged KV cache:
// the embedding (GPT-2: plus learned positions), each layer's DecoderLayer.Forward (the one layer forward, shared with
// training) with its weights prepared once and its activations in reused scratch buffers, then the final norm and the
// head for the rows whose logits are wanted. Every token of the batch goes through each GEMM together (prefill chunks
// and decode steps of different sequences share one weight pass); attention reads each sequence's own pages.
// A model object is one shard (ShardingPlan): a pipeline stage's layers cut to a tensor-parallel rank's slices,
// or, with the default layout, the whole model.
using Cluster.Compute;
using Cluster.Compute.Collectives;
using Cluster.Model.Parallel;
using static Cluster.Model.Parallel.TensorParallelRegions;

namespace Cluster.Model;

/// <summary>
/// One sequence's part of a forward batch: its next <see cref="Tokens"/> (they take positions
/// cache.Length(Sequence) onwards) and whether logits are wanted for every token or only the last.
/// </summary>
public sealed record SequenceChunk(int Sequence, int[] Tokens, bool AllLogits = false)
{
    public int LogitRows => AllLogits ? Tokens.Length : 1;
}

public sealed class TransformerModel : ILocalModel
{
    private readonly IDevice _device;
    private readonly DeviceMatrix? _tokenEmbedding;      // (Vr, C) first stage: this rank's vocab rows (the head itself when tied on one stage)
    private readonly DeviceBuffer? _positionEmbedding;   // (maxT, C) GPT-2
    private readonly Layer[] _layers;
    private readonly DeviceBuffer? _finalNorm;           // (C,)
    private readonly DeviceBuffer? _finalNormBias;       // (C,) GPT-2
    private readonly DeviceMatrix? _output;              // (Vr, C)
    private Activations? _scratch;

    private sealed class Layer
    {
        public required DeviceBuffer AttnNorm, FfnNorm;
        public DeviceBuffer? AttnNormBias, FfnNormBias, Bq, Bk, Bv, Bo, B1, B2, RouterBias;
        public required DeviceMatrix Wq, Wk, Wv, Wo;
        public DeviceMatrix? W1, W2, W3;                     // the dense MLP
        public DeviceMatrix? Router;                         // (E, C) MoE
        public DeviceMatrix[]? ExpertW1, ExpertW2, ExpertW3; // MoE: each expert's W1, W3 (H, C) and W2 (C, H)
        public DeviceMatrix? SharedW1, SharedW2, SharedW3;   // MoE: this rank's slice of the shared expert, (Hs, C) and (C, Hs)
        public DeviceMatrix? SharedExpertGate;               // (1, C)

        /// <summary>Every weight matrix of the layer.</summary>
        public IEnumerable<DeviceMatrix> Matrices() =>
            new[] { Wq, Wk, Wv, Wo, W1, W2, W3, Router, SharedW1, SharedW2, SharedW3, SharedExpertGate }
                .Concat(ExpertW1 ?? []).Concat(ExpertW2 ?? []).Concat(ExpertW3 ?? []).OfType<DeviceMatrix>();
    }

    /// <summary>The whole model on one device.</summary>
    public TransformerModel(IDevice device, ModelConfig config, ModelWeights weights, WeightFormat weightFormat = WeightFormat.F32, KvFormat kvFormat = KvFormat.F32)
        : this(device, config, ShardWeights.Slice(config, weights, ShardSpec.Whole(config)), weightFormat: weightFormat, kvFormat: kvFormat) { }

    /// <summary>One shard: the layers of its pipeline stage, cut to its tensor-parallel slices.</summary>
    /// <param name="releaseHostWeights">
    /// Let go of each layer's host tensors (weights.Layers[i] becomes null) as soon as they are on the device, so that
    /// loading peaks near one copy of the weights rather than two: for a caller that keeps no other reference to them.
    /// </param>
    /// <param name="weightFormat">
    /// How the layers' weight matrices are kept and multiplied: float32, or quantized to Q8_0 / Q4_0 blocks (each matrix
    /// whose rows are whole blocks; the token embedding and the head in Q8_0). Norms, biases, GPT-2's position
    /// embedding and the MoE router stay float32.
    /// </param>
    /// <param name="kvFormat">How the caches this model makes (CreateCache) keep keys and values.</param>
    public TransformerModel(IDevice device, ModelConfig config, ShardWeights weights, bool releaseHostWeights = false, WeightFormat weightFormat = WeightFormat.F32,
        KvFormat kvFormat = KvFormat.F32)
    {
        var spec = weights.Spec;
        _device = device;
        Config = config;
        Spec = spec;
        int C = config.Dim, H = spec.Hidden.Count, q = QueryDim, kv = KvDim;
        DeviceBuffer? Vector(float[]? v) => v is null ? null : device.Upload(v);
        DeviceMatrix Matrix(ReadOnlySpan<float> w, int rows, int cols) => device.UploadMatrix(w, rows, cols, WeightFormats.For(weightFormat, cols));
        WeightFormat = weightFormat;
        KvFormat = kvFormat;
        // A tied head on the embedding's own stage multiplies by the embedding table itself: one copy of the matrix.
        bool sharedHead = config.TiedEmbeddings && spec.IsFirstStage && spec.IsLastStage;
        // The embedding table (a tied head too) and an untied head in Q8_0 under a block format, as llama.cpp keeps
        // token_embd and output wider than Q4_0.
        var tableFormat = WeightFormats.For(weightFormat == WeightFormat.F32 ? WeightFormat.F32 : WeightFormat.Q8_0, C);
        _tokenEmbedding = weights.TokenEmbedding is { } table ? device.UploadMatrix(table, spec.Vocab.Count, C, tableFormat) : null;
        _positionEmbedding = Vector(weights.PositionEmbedding);
        _layers = new Layer[weights.Layers.Length];
        // The packed copies live outside the managed heap, so a released layer lowers the process's memory only once the GC
        // gives its pages back: a decommitting collection after each eighth of the layers' bytes, so loading peaks near one
        // copy plus an eighth, in at most eight collections whatever the model's size.
        var hostMemory = new HostMemory(weights.Layers.Sum(w => w.Bytes) / 8);
        bool moe = config.Moe is not null;
        DeviceMatrix[] Experts(float[] stack, int rows, int cols) =>   // this shard's experts, stacked
            [.. Enumerable.Range(0, spec.Experts.Count).Select(e => Matrix(stack.AsSpan(e * rows * cols, rows * cols), rows, cols))];
        for (int i = 0; i < _layers.Length; i++)
        {
            var w = weights.Layers[i];
            _layers[i] = new Layer
            {
                AttnNorm = device.Upload(w.AttnNorm), AttnNormBias = Vector(w.AttnNormBias),
                FfnNorm = device.Upload(w.FfnNorm), FfnNormBias = Vector(w.FfnNormBias),
                Wq = Matrix(w.Wq, q, C), Wk = Matrix(w.Wk, kv, C), Wv = Matrix(w.Wv, kv, C), Wo = Matrix(w.Wo, C, q),
                W1 = moe ? null : Matrix(w.W1, H, C), W2 = moe ? null : Matrix(w.W2, C, H),
                W3 = moe || w.W3 is null ? null : Matrix(w.W3, H, C),
                Router = moe ? device.UploadMatrix(w.Router!, config.FfnBlocks, C) : null,
                ExpertW1 = moe ? Experts(w.W1, H, C) : null, ExpertW2 = moe ? Experts(w.W2, C, H) : null, ExpertW3 = moe ? Experts(w.W3!, H, C) : null,
                Bq = Vector(w.Bq), Bk = Vector(w.Bk), Bv = Vector(w.Bv), Bo = Vector(w.Bo), B1 = Vector(w.B1), B2 = Vector(w.B2), RouterBias = Vector(w.RouterBias),
                SharedW1 = w.SharedW1 is null ? null : Matrix(w.SharedW1, spec.SharedHidden.Count, C),
                SharedW3 = w.SharedW3 is null ? null : Matrix(w.SharedW3, spec.SharedHidden.Count, C),
                SharedW2 = w.SharedW2 is null ? null : Matrix(w.SharedW2, C, spec.SharedHidden.Count),
                SharedExpertGate = w.SharedExpertGate is null ? null : device.UploadMatrix(w.SharedExpertGate, 1, C),
            };
            if (releaseHostWeights)
            {
                hostMemory.Released(weights.Layers[i].Bytes);
                weights.Layers[i] = null!;
            }
        }
        if (releaseHostWeights) hostMemory.Flush();
        _finalNorm = Vector(weights.FinalNorm);
        _finalNormBias = Vector(weights.FinalNormBias);
        _output = sharedHead ? _tokenEmbedding : weights.Output is null ? null : device.UploadMatrix(weights.Output, spec.Vocab.Count, C, tableFormat);
        WeightBytes = CountWeightBytes();
    }

    public ModelConfig Config { get; }
    public ShardSpec Spec { get; }
    /// <summary>The format the layers' weight matrices were asked to be kept in.</summary>
    public WeightFormat WeightFormat { get; }
    /// <summary>The format of the KV caches this model makes.</summary>
    public KvFormat KvFormat { get; }

    /// <summary>Device memory of this shard's weights (the packed layout the kernels read is their only copy).</summary>
    public long WeightBytes { get; }

    private long CountWeightBytes() =>
        new[] { _positionEmbedding, _finalNorm, _finalNormBias }.Sum(b => (b?.Length ?? 0) * (long)sizeof(float))
        + (_tokenEmbedding?.Bytes ?? 0) + (ReferenceEquals(_output, _tokenEmbedding) ? 0 : _output?.Bytes ?? 0)
        + _layers.Sum(w => new[] { w.AttnNorm, w.FfnNorm, w.AttnNormBias, w.FfnNormBias, w.Bq, w.Bk, w.Bv, w.Bo, w.B1, w.B2, w.RouterBias }.Sum(b => (b?.Length ?? 0) * (long)sizeof(float))
            + w.Matrices().Sum(m => m.Bytes));

    /// <summary>Device memory of the forward's scratch buffers, sized by the largest batch so far.</summary>
    public long WorkspaceBytes => _scratch?.Bytes ?? 0;
    public IDevice Device => _device;
    private int QueryDim => Spec.QueryHeads.Count * Config.HeadDim;
    /// <summary>K (and V) floats per token and layer this shard caches: its KV heads only.</summary>
    public int KvDim => Spec.KvHeads.Count * Config.HeadDim;

    /// <summary>A paged KV cache for this shard's layers and KV heads.</summary>
    public PagedKvCache CreateCache(int blocks, int blockSize = 16) => new(_device, Spec.Layers.Count, KvDim, blocks, blockSize, format: KvFormat, headDim: Config.HeadDim);

    /// <summary>A cache big enough for <paramref name="sequences"/> sequences of <paramref name="tokens"/> tokens each.</summary>
    public PagedKvCache CreateCache(int sequences, int tokens, int blockSize) => CreateCache(sequences * ((tokens + blockSize - 1) / blockSize), blockSize);

    /// <summary>A sequence in a KV cache of its own (the whole model on one device: TextGenerator).</summary>
    public ILocalSequence Start(int tokens)
    {
        if (Spec.TensorParallel > 1 || !Spec.IsFirstStage || !Spec.IsLastStage)
            throw new InvalidOperationException($"shard {Spec} is not the whole model: run a layout's shards through LocalPipeline");
        var cache = CreateCache(1, tokens, blockSize: 16);
        return new OwnSequence(this, cache, cache.CreateSequence());
    }

    private sealed class OwnSequence(TransformerModel model, PagedKvCache cache, int id) : ILocalSequence
    {
        public void Forward(int[] tokens, Span<float> logits) => model.ForwardInto([new SequenceChunk(id, tokens)], cache, logits);
        public void Dispose() => cache.Dispose();
    }

    /// <summary>
    /// Runs the batch through this shard's layers, appending its K and V to the cache. The first stage embeds the
    /// tokens; a later stage takes the previous stage's <paramref name="hidden"/> states (T, C). The last stage returns
    /// the logits (R, V): for each chunk in order, one row per token when AllLogits, else one row for its last token;
    /// another stage returns its hidden states (T, C) for the next. With tensor parallelism, <paramref name="tensorGroup"/>
    /// connects the ranks of the stage (group rank = Spec.Rank) and this blocks on its collectives, so every rank must
    /// run the same batches in the same order.
    /// </summary>
    public float[] Forward(IReadOnlyList<SequenceChunk> batch, PagedKvCache cache, float[]? hidden = null, CollectiveGroup? tensorGroup = null)
    {
        var output = new float[OutputLength(batch)];
        ForwardInto(batch, cache, output, hidden, tensorGroup);
        return output;
    }

    /// <summary>Floats <see cref="Forward"/> returns for <paramref name="batch"/>: logits (R, V) on the last stage, hidden states (T, C) on another.</summary>
    public int OutputLength(IReadOnlyList<SequenceChunk> batch) =>
        checked(Spec.IsLastStage ? batch.Sum(c => c.LogitRows) * Config.VocabSize : batch.Sum(c => c.Tokens.Length) * Config.Dim);

    /// <summary>
    /// <see cref="Forward"/> into <paramref name="output"/> (<see cref="OutputLength"/> floats), for a caller that reuses
    /// its buffers: a decode step's logits are a megabyte or more, and a fresh array each step costs its page faults.
    /// <paramref name="hidden"/> is empty on the first stage.
    /// </summary>
    public void ForwardInto(IReadOnlyList<SequenceChunk> batch, PagedKvCache cache, Span<float> output, ReadOnlySpan<float> hidden = default, CollectiveGroup? tensorGroup = null)
    {
        if (Spec.TensorParallel > 1 && (tensorGroup is null || tensorGroup.WorldSize != Spec.TensorParallel || tensorGroup.Rank != Spec.Rank))
            throw new ArgumentException($"shard {Spec} needs its tensor-parallel group (rank {Spec.Rank} of {Spec.TensorParallel})", nameof(tensorGroup));
        var group = Spec.TensorParallel > 1 ? tensorGroup : null;
        var layout = Plan(batch, cache, out int[] tokens, out int[] logitRows);
        int T = tokens.Length, C = Config.Dim;
        int outputLength = Spec.IsLastStage ? logitRows.Length * Config.VocabSize : T * C;
        if (output.Length != outputLength)
            throw new ArgumentException($"the batch's output is {outputLength} floats, the buffer given holds {output.Length}", nameof(output));
        var a = _scratch is { } s && s.Tokens >= T && s.Rows >= logitRows.Length ? s : Grow(T, logitRows.Length);
        int[] slots = layout.TokenSlots();

        if (Spec.IsFirstStage)
        {
            if (!hidden.IsEmpty) throw new ArgumentException("the first stage embeds tokens; it takes no hidden states", nameof(hidden));
            EmbedTokens(tokens, a.X, group);                                                                     // x (T, C)
            if (_positionEmbedding is not null) _device.AddEmbedding(a.X, _positionEmbedding, layout.TokenPosition, C);
        }
        else
        {
            if (hidden.Length != T * C)
                throw new ArgumentException($"stage {Spec.Stage} needs ({T}, {C}) hidden states from the previous stage, got {hidden.Length} floats", nameof(hidden));
            _device.Write(a.X, hidden);                                                                   // x (T, C)
        }
        // Serving routes dropless: a token's experts never depend on which other sequences share its batch.
        var shape = DecoderShape.Of(Config.Moe is { } moe ? Config with { Moe = moe with { CapacityFactor = 0 } } : Config, Spec);
        var x = a.X;                                                                                       // (T, C)
        for (int l = 0; l < _layers.Length; l++)
            x = DecoderLayer.Forward(_device, new ServingPass(_device, _layers[l], a, x, cache, l, slots, layout, KvDim), shape, x, layout.TokenPosition, group);

        if (Spec.IsLastStage)
        {
            // Only the rows whose logits are wanted go through the final norm and the (Vr, C) head.
            int R = logitRows.Length;
            _device.GatherRows(x, logitRows, a.Selected, C);                                              // (R, C)
            DecoderLayer.Normalize(_device, Config, a.Selected, _finalNorm!, _finalNormBias, a.SelectedNormed, R);
            _device.MatMul(a.SelectedNormed, _output!, a.Logits, R);                                     // (R, Vr)
            if (group is null) _device.Download(a.Logits, output);                                       // (R, V)
            else
            {
                var local = new float[R * Spec.Vocab.Count];
                _device.Download(a.Logits, local);
                GatherFromRegion.Forward(local, R, Config.VocabSize, group).CopyTo(output);               // (R, V)   vocab-parallel head: joined
            }
        }
        else _device.Download(x, output);                                                                 // (T, C)
        foreach (var chunk in batch) cache.Advance(chunk.Sequence, chunk.Tokens);
    }

    /// <summary>x (T, C) = the embedding rows of the tokens; with TP each rank holds a vocab slice, zeros elsewhere, summed.</summary>
    private void EmbedTokens(int[] tokens, DeviceBuffer x, CollectiveGroup? group)
    {
        var rows = new int[tokens.Length];                                                                // (T,) rows of this rank's table
        for (int t = 0; t < tokens.Length; t++)
        {
            int local = tokens[t] - Spec.Vocab.Offset;
            rows[t] = (uint)local < (uint)Spec.Vocab.Count ? local : -1;                                   // another rank's: zeros
        }
        _device.Embedding(_tokenEmbedding!, rows, x);
        ReduceFromRegion.Forward(_device, x, tokens.Length * Config.Dim, group);                          // x (T, C)   summed over ranks
    }

    /// <summary>Validates the batch, reserves cache room, and lays out tokens, positions and block tables.</summary>
    private AttentionLayout Plan(IReadOnlyList<SequenceChunk> batch, PagedKvCache cache, out int[] tokens, out int[] logitRows)
    {
        if (batch.Count == 0) throw new ArgumentException("the batch is empty", nameof(batch));
        if (cache.Layers != _layers.Length || cache.KvDim != KvDim)
            throw new ArgumentException($"the KV cache holds {cache.Layers} layers of {cache.KvDim} floats; this shard needs {_layers.Length} of {KvDim}", nameof(cache));
        int total = 0, rows = 0;
        var seen = new HashSet<int>();
        foreach (var chunk in batch)
        {
            if (chunk.Tokens.Length == 0) throw new ArgumentException($"sequence {chunk.Sequence} has no tokens in the batch", nameof(batch));
            if (!seen.Add(chunk.Sequence)) throw new ArgumentException($"sequence {chunk.Sequence} appears twice in the batch", nameof(batch));
            foreach (int token in chunk.Tokens)
                if ((uint)token >= (uint)Config.VocabSize)
                    throw new ArgumentOutOfRangeException(nameof(batch), token, $"token id outside the vocabulary of {Config.VocabSize}");
            int end = cache.Length(chunk.Sequence) + chunk.Tokens.Length;
            if (end > Config.MaxSeqLen)
                throw new ArgumentException($"sequence {chunk.Sequence} would reach {end} tokens, past the model's context of {Config.MaxSeqLen}", nameof(batch));
            total += chunk.Tokens.Length;
            rows += chunk.LogitRows;
        }
        foreach (var chunk in batch) cache.Reserve(chunk.Sequence, chunk.Tokens.Length);

        int maxBlocks = batch.Max(c => cache.BlockTable(c.Sequence).Count);
        var blockTables = new int[batch.Count * maxBlocks];   // (S, maxBlocks)
        tokens = new int[total];
        logitRows = new int[rows];
        var tokenSequence = new int[total];
        var tokenPosition = new int[total];
        int t = 0, r = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            var chunk = batch[s];
            var table = cache.BlockTable(chunk.Sequence);
            for (int b = 0; b < table.Count; b++) blockTables[s * maxBlocks + b] = table[b];
            int start = cache.Length(chunk.Sequence);
            for (int i = 0; i < chunk.Tokens.Length; i++, t++)
            {
                tokens[t] = chunk.Tokens[i];
                tokenSequence[t] = s;
                tokenPosition[t] = start + i;
                if (chunk.AllLogits || i == chunk.Tokens.Length - 1) logitRows[r++] = t;
            }
        }
        return new AttentionLayout(tokenSequence, tokenPosition, blockTables, maxBlocks, cache.BlockSize, Spec.QueryHeads.Count, Spec.KvHeads.Count, Config.HeadDim);
    }

    /// <summary>
    /// One layer of a serving forward: weights prepared once (DeviceMatrix), activations in the forward's scratch buffers
    /// (the layer's output alternating between two, so its input stays intact), attention over the paged cache.
    /// </summary>
    private sealed class ServingPass(IDevice device, Layer w, Activations a, DeviceBuffer input, PagedKvCache cache, int layer, int[] slots,
        AttentionLayout layout, int kvDim) : ILayerPass
    {
        public DeviceBuffer? Vector(LayerVector which) => which switch
        {
            LayerVector.AttnNorm => w.AttnNorm, LayerVector.AttnNormBias => w.AttnNormBias,
            LayerVector.FfnNorm => w.FfnNorm, LayerVector.FfnNormBias => w.FfnNormBias,
            LayerVector.WoBias => w.Bo, LayerVector.W2Bias => w.B2, LayerVector.RouterBias => w.RouterBias,
            _ => throw new ArgumentOutOfRangeException(nameof(which)),
        };

        public void Project(LayerProjection which, DeviceBuffer x, DeviceBuffer y, int tokens)
        {
            var (matrix, bias) = which switch
            {
                LayerProjection.Wq => (w.Wq, w.Bq), LayerProjection.Wk => (w.Wk, w.Bk), LayerProjection.Wv => (w.Wv, w.Bv),
                LayerProjection.Wo => (w.Wo, null), LayerProjection.W1 => (w.W1!, w.B1), LayerProjection.W2 => (w.W2!, null),
                LayerProjection.W3 => (w.W3!, null), LayerProjection.Router => (w.Router!, null),
                LayerProjection.SharedW1 => (w.SharedW1!, null), LayerProjection.SharedW2 => (w.SharedW2!, null),
                LayerProjection.SharedW3 => (w.SharedW3!, null), LayerProjection.SharedExpertGate => (w.SharedExpertGate!, null),
                _ => throw new ArgumentOutOfRangeException(nameof(which)),
            };
            device.MatMul(x, matrix, y, tokens);
            if (bias is not null) device.AddBias(y, bias, tokens, matrix.Rows);
        }

        public DeviceBuffer Activation(LayerActivation which, int length) => which switch
        {
            LayerActivation.AttnNormed or LayerActivation.FfnNormed => a.Xb,
            LayerActivation.Q => a.Q, LayerActivation.K => a.K, LayerActivation.V => a.V, LayerActivation.Attention => a.Attention,
            LayerActivation.Residual => a.Residual,
            LayerActivation.Gate or LayerActivation.Hidden => a.Hidden,   // the activation runs in place: serving keeps no gate
            LayerActivation.Up => a.Hidden2,
            LayerActivation.Output => ReferenceEquals(input, a.X) ? a.X2 : a.X,
            LayerActivation.RouterLogits => a.RouterLogits,
            LayerActivation.SharedGate or LayerActivation.SharedHidden => a.Hidden,   // the routed experts are done with these by now
            LayerActivation.SharedUp => a.Hidden2,
            LayerActivation.SharedOutput or LayerActivation.SharedWeighted => a.ExpertY,
            LayerActivation.SharedScales => a.Scales,
            _ => throw new ArgumentOutOfRangeException(nameof(which)),
        };

        public void ProjectExpert(LayerProjection which, int block, DeviceBuffer x, DeviceBuffer y, int tokens) =>
            device.MatMul(x, (which switch
            {
                LayerProjection.W1 => w.ExpertW1, LayerProjection.W2 => w.ExpertW2, LayerProjection.W3 => w.ExpertW3,
                _ => throw new ArgumentOutOfRangeException(nameof(which)),
            })![block], y, tokens);

        public DeviceBuffer ExpertActivation(ExpertActivation which, int expert, int length) => which switch
        {
            Model.ExpertActivation.Input => a.ExpertX,
            Model.ExpertActivation.Gate or Model.ExpertActivation.Hidden => a.Hidden,   // in place, as the dense MLP
            Model.ExpertActivation.Up => a.Hidden2,
            Model.ExpertActivation.Output or Model.ExpertActivation.Weighted => a.ExpertY,   // scaled in place: serving has no backward
            Model.ExpertActivation.Scales => a.Scales,
            _ => throw new ArgumentOutOfRangeException(nameof(which)),
        };

        public void Routed(MoeRouting routing) { }

        public void Attend(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output)
        {
            device.WriteKv(k, v, cache.Keys[layer], cache.Values[layer], slots, kvDim);
            device.PagedAttention(q, cache.Keys[layer], cache.Values[layer], output, layout);
        }
    }

    private Activations Grow(int tokens, int rows)
    {
        _scratch?.Dispose();
        // Round up so a growing prompt does not reallocate on every step.
        tokens = Math.Max(tokens, (_scratch?.Tokens ?? 0) * 2);
        rows = Math.Max(rows, (_scratch?.Rows ?? 0) * 2);
        _scratch = new Activations(_device, Config.Dim, QueryDim, KvDim, Math.Max(Spec.Hidden.Count, Spec.SharedHidden.Count), Spec.Vocab.Count,
            Config.Moe?.Experts ?? 0, tokens, rows);
        return _scratch;
    }

    /// <summary>Scratch buffers for a batch of up to Tokens tokens and Rows logit rows.</summary>
    private sealed class Activations : IDisposable
    {
        /// <param name="hidden">The widest MLP activation: this shard's hidden units, or its slice of a shared expert's if wider.</param>
        /// <param name="experts">An MoE model's experts per layer (0: dense, whose expert buffers are left minimal).</param>
        public Activations(IDevice d, int dim, int queryDim, int kvDim, int hidden, int vocab, int experts, int tokens, int rows)
        {
            Tokens = tokens;
            Rows = rows;
            X = d.Allocate(tokens * dim); X2 = d.Allocate(tokens * dim); Residual = d.Allocate(tokens * dim); Xb = d.Allocate(tokens * dim);
            Q = d.Allocate(tokens * queryDim); K = d.Allocate(tokens * kvDim); V = d.Allocate(tokens * kvDim);
            Attention = d.Allocate(tokens * queryDim);
            Hidden = d.Allocate(tokens * hidden); Hidden2 = d.Allocate(tokens * hidden);
            Selected = d.Allocate(rows * dim); SelectedNormed = d.Allocate(rows * dim);
            Logits = d.Allocate(rows * vocab);
            int moeTokens = experts == 0 ? 1 : tokens;
            ExpertX = d.Allocate(moeTokens * dim); ExpertY = d.Allocate(moeTokens * dim); Scales = d.Allocate(moeTokens);
            RouterLogits = d.Allocate(moeTokens * Math.Max(1, experts));
        }

        public int Tokens { get; }
        public int Rows { get; }
        public DeviceBuffer X, X2, Residual, Xb, Q, K, V, Attention, Hidden, Hidden2, Selected, SelectedNormed, Logits;
        public DeviceBuffer ExpertX, ExpertY, Scales, RouterLogits;   // MoE: an expert's rows in and out, their weights; the router's logits
        private DeviceBuffer[] All => [X, X2, Residual, Xb, Q, K, V, Attention, Hidden, Hidden2, Selected, SelectedNormed, Logits, ExpertX, ExpertY, Scales, RouterLogits];
        public long Bytes => All.Sum(b => b.Length * (long)sizeof(float));

        public void Dispose()
        {
            foreach (var b in All) b.Dispose();
        }
    }

    public void Dispose()
    {
        _scratch?.Dispose();
        _tokenEmbedding?.Dispose();
        _positionEmbedding?.Dispose();
        foreach (var w in _layers)
        {
            foreach (var b in new[] { w.AttnNorm, w.FfnNorm, w.AttnNormBias, w.FfnNormBias, w.Bq, w.Bk, w.Bv, w.Bo, w.B1, w.B2, w.RouterBias }) b?.Dispose();
            foreach (var m in w.Matrices()) m.Dispose();
        }
        _finalNorm?.Dispose();
        _finalNormBias?.Dispose();
        if (!ReferenceEquals(_output, _tokenEmbedding)) _output?.Dispose();
    }
}
