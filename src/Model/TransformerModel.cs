// The decoder forward pass over a batch of sequences at different positions, on any IDevice, against a
// paged KV cache. Llama family: RMSNorm pre-norm, RoPE, GQA, SwiGLU. GPT-2 family: LayerNorm, learned
// positions, GELU, biases. Every token of the batch goes through each GEMM together (prefill chunks and
// decode steps of different sequences share one weight pass); attention reads each sequence's own pages.
using Cluster.Compute;

namespace Cluster.Model;

/// <summary>
/// One sequence's part of a forward batch: its next <see cref="Tokens"/> (they take positions
/// cache.Length(Sequence) onwards) and whether logits are wanted for every token or only the last.
/// </summary>
public sealed record SequenceChunk(int Sequence, int[] Tokens, bool AllLogits = false)
{
    public int LogitRows => AllLogits ? Tokens.Length : 1;
}

public sealed class TransformerModel : IDisposable
{
    private readonly IDevice _device;
    private readonly DeviceBuffer _tokenEmbedding;       // (V, C)
    private readonly DeviceBuffer? _positionEmbedding;   // (maxT, C) GPT-2
    private readonly Layer[] _layers;
    private readonly DeviceBuffer _finalNorm;            // (C,)
    private readonly DeviceBuffer? _finalNormBias;       // (C,) GPT-2
    private readonly DeviceMatrix _output;               // (V, C)
    private Activations? _scratch;

    private sealed class Layer
    {
        public required DeviceBuffer AttnNorm, FfnNorm;
        public DeviceBuffer? AttnNormBias, FfnNormBias, Bq, Bk, Bv, Bo, B1, B2;
        public required DeviceMatrix Wq, Wk, Wv, Wo, W1, W2;
        public DeviceMatrix? W3;
    }

    public TransformerModel(IDevice device, ModelConfig config, ModelWeights weights)
    {
        weights.Validate(config, "weights");
        _device = device;
        Config = config;
        int C = config.Dim, H = config.HiddenDim, kv = config.KvDim;
        DeviceBuffer? Vector(float[]? v) => v is null ? null : device.Upload(v);
        _tokenEmbedding = device.Upload(weights.TokenEmbedding);
        _positionEmbedding = Vector(weights.PositionEmbedding);
        _layers = weights.Layers.Select(w => new Layer
        {
            AttnNorm = device.Upload(w.AttnNorm), AttnNormBias = Vector(w.AttnNormBias),
            FfnNorm = device.Upload(w.FfnNorm), FfnNormBias = Vector(w.FfnNormBias),
            Wq = device.UploadMatrix(w.Wq, C, C), Wk = device.UploadMatrix(w.Wk, kv, C),
            Wv = device.UploadMatrix(w.Wv, kv, C), Wo = device.UploadMatrix(w.Wo, C, C),
            W1 = device.UploadMatrix(w.W1, H, C), W2 = device.UploadMatrix(w.W2, C, H),
            W3 = w.W3 is null ? null : device.UploadMatrix(w.W3, H, C),
            Bq = Vector(w.Bq), Bk = Vector(w.Bk), Bv = Vector(w.Bv), Bo = Vector(w.Bo), B1 = Vector(w.B1), B2 = Vector(w.B2),
        }).ToArray();
        _finalNorm = device.Upload(weights.FinalNorm);
        _finalNormBias = Vector(weights.FinalNormBias);
        _output = device.UploadMatrix(weights.Output ?? weights.TokenEmbedding, config.VocabSize, C);
    }

    public ModelConfig Config { get; }
    public IDevice Device => _device;

    /// <summary>
    /// Runs the batch through the model, appending its K and V to the cache, and returns the logits
    /// (R, V): for each chunk in order, one row per token when AllLogits, else one row for its last token.
    /// </summary>
    public float[] Forward(IReadOnlyList<SequenceChunk> batch, PagedKvCache cache)
    {
        var layout = Plan(batch, cache, out int[] tokens, out int[] logitRows);
        int T = tokens.Length, C = Config.Dim, H = Config.HiddenDim, kv = Config.KvDim;
        var a = _scratch is { } s && s.Tokens >= T && s.Rows >= logitRows.Length ? s : Grow(T, logitRows.Length);
        int[] slots = layout.TokenSlots();
        bool llama = Config.Architecture == Architecture.Llama;

        _device.Embedding(_tokenEmbedding, tokens, a.X, C);                                            // x (T, C)
        if (!llama) _device.AddEmbedding(a.X, _positionEmbedding!, layout.TokenPosition, C);
        for (int l = 0; l < _layers.Length; l++)
        {
            var w = _layers[l];
            Normalize(a.X, w.AttnNorm, w.AttnNormBias, a.Xb, T);                                          // xb (T, C)
            Linear(a.Xb, w.Wq, w.Bq, a.Q, T, C);                                                          // q (T, C)
            Linear(a.Xb, w.Wk, w.Bk, a.K, T, kv);                                                         // k (T, kvDim)
            Linear(a.Xb, w.Wv, w.Bv, a.V, T, kv);                                                         // v (T, kvDim)
            if (llama)
            {
                _device.Rope(a.Q, layout.TokenPosition, Config.Heads, Config.HeadDim, Config.EffectiveRotaryDim, Config.RopeTheta, Config.RopeLayout);
                _device.Rope(a.K, layout.TokenPosition, Config.KvHeads, Config.HeadDim, Config.EffectiveRotaryDim, Config.RopeTheta, Config.RopeLayout);
            }
            _device.WriteKv(a.K, a.V, cache.Keys[l], cache.Values[l], slots, kv);
            _device.PagedAttention(a.Q, cache.Keys[l], cache.Values[l], a.Attention, layout);              // att (T, C)
            Linear(a.Attention, w.Wo, w.Bo, a.Xb, T, C);                                                  // xb (T, C)
            _device.Add(a.X, a.Xb, T * C);

            Normalize(a.X, w.FfnNorm, w.FfnNormBias, a.Xb, T);
            Linear(a.Xb, w.W1, w.B1, a.Hidden, T, H);                                                     // hb (T, H)
            if (llama)
            {
                _device.MatMul(a.Xb, w.W3!, a.Hidden2, T);                                                // hb2 (T, H)
                _device.SwiGlu(a.Hidden, a.Hidden2, T * H);
            }
            else _device.Gelu(a.Hidden, T * H);
            Linear(a.Hidden, w.W2, w.B2, a.Xb, T, C);                                                     // xb (T, C)
            _device.Add(a.X, a.Xb, T * C);
        }

        // Only the rows whose logits are wanted go through the final norm and the (V, C) head.
        int R = logitRows.Length;
        _device.GatherRows(a.X, logitRows, a.Selected, C);                                                // (R, C)
        Normalize(a.Selected, _finalNorm, _finalNormBias, a.SelectedNormed, R);
        _device.MatMul(a.SelectedNormed, _output, a.Logits, R);                                          // (R, V)
        var logits = new float[R * Config.VocabSize];
        _device.Download(a.Logits, logits);
        foreach (var chunk in batch) cache.Advance(chunk.Sequence, chunk.Tokens.Length);
        return logits;
    }

    /// <summary>Validates the batch, reserves cache room, and lays out tokens, positions and block tables.</summary>
    private AttentionLayout Plan(IReadOnlyList<SequenceChunk> batch, PagedKvCache cache, out int[] tokens, out int[] logitRows)
    {
        if (batch.Count == 0) throw new ArgumentException("the batch is empty", nameof(batch));
        if (cache.Config.Layers != Config.Layers || cache.Config.KvDim != Config.KvDim)
            throw new ArgumentException("the KV cache was made for a different model", nameof(cache));
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
        return new AttentionLayout(tokenSequence, tokenPosition, blockTables, maxBlocks, cache.BlockSize, Config.Heads, Config.KvHeads, Config.HeadDim);
    }

    private void Normalize(DeviceBuffer x, DeviceBuffer weight, DeviceBuffer? bias, DeviceBuffer y, int rows)
    {
        if (Config.Architecture == Architecture.Llama) _device.RmsNorm(x, weight, y, rows, Config.Dim, Config.NormEps);
        else _device.LayerNorm(x, weight, bias!, y, rows, Config.Dim, Config.NormEps);
    }

    private void Linear(DeviceBuffer x, DeviceMatrix w, DeviceBuffer? bias, DeviceBuffer y, int rows, int outDim)
    {
        _device.MatMul(x, w, y, rows);
        if (bias is not null) _device.AddBias(y, bias, rows, outDim);
    }

    private Activations Grow(int tokens, int rows)
    {
        _scratch?.Dispose();
        // Round up so a growing prompt does not reallocate on every step.
        tokens = Math.Max(tokens, (_scratch?.Tokens ?? 0) * 2);
        rows = Math.Max(rows, (_scratch?.Rows ?? 0) * 2);
        _scratch = new Activations(_device, Config, tokens, rows);
        return _scratch;
    }

    /// <summary>Scratch buffers for a batch of up to Tokens tokens and Rows logit rows.</summary>
    private sealed class Activations : IDisposable
    {
        public Activations(IDevice d, ModelConfig c, int tokens, int rows)
        {
            Tokens = tokens;
            Rows = rows;
            X = d.Allocate(tokens * c.Dim); Xb = d.Allocate(tokens * c.Dim);
            Q = d.Allocate(tokens * c.Dim); K = d.Allocate(tokens * c.KvDim); V = d.Allocate(tokens * c.KvDim);
            Attention = d.Allocate(tokens * c.Dim);
            Hidden = d.Allocate(tokens * c.HiddenDim); Hidden2 = d.Allocate(tokens * c.HiddenDim);
            Selected = d.Allocate(rows * c.Dim); SelectedNormed = d.Allocate(rows * c.Dim);
            Logits = d.Allocate(rows * c.VocabSize);
        }

        public int Tokens { get; }
        public int Rows { get; }
        public DeviceBuffer X, Xb, Q, K, V, Attention, Hidden, Hidden2, Selected, SelectedNormed, Logits;

        public void Dispose()
        {
            foreach (var b in new[] { X, Xb, Q, K, V, Attention, Hidden, Hidden2, Selected, SelectedNormed, Logits }) b.Dispose();
        }
    }

    public void Dispose()
    {
        _scratch?.Dispose();
        _tokenEmbedding.Dispose();
        _positionEmbedding?.Dispose();
        foreach (var w in _layers)
        {
            foreach (var b in new[] { w.AttnNorm, w.FfnNorm, w.AttnNormBias, w.FfnNormBias, w.Bq, w.Bk, w.Bv, w.Bo, w.B1, w.B2 }) b?.Dispose();
            foreach (var m in new[] { w.Wq, w.Wk, w.Wv, w.Wo, w.W1, w.W2, w.W3 }) m?.Dispose();
        }
        _finalNorm.Dispose();
        _finalNormBias?.Dispose();
        _output.Dispose();
    }
}
