// llama2.c checkpoints. Two layouts:
//   v0 (legacy run.c): 7 int32 header (dim, hidden, layers, heads, kvHeads, vocab, seqLen); vocab < 0 means the
//      file carries its own classifier wcls after the RoPE tables, otherwise the LM head is the token embedding.
//      Weights: emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis_real, freq_cis_imag, [wcls].
//   v1 (export.py version 1): magic "ak42", version 1, the same 7 ints, a shared-classifier byte, padding to 256 bytes,
//      then rms_att, rms_ffn, rms_final, emb, wq, wk, wv, wo, w1, w2, w3, [wcls].
// Every matrix is row-major (out, in), the engine's own layout, and RoPE pairs are interleaved.
namespace Cluster.Model.Formats;

public static class Llama2cFormat
{
    public const uint Magic = 0x616b3432;   // "ak42" little endian
    private const int V1HeaderBytes = 256;

    /// <param name="select">Chooses, once the header is read, which tensors to read (default: all).</param>
    public static LoadedModel Load(string path, string? tokenizerPath = null, Func<ModelConfig, WeightFilter>? select = null)
    {
        using var file = MappedFile.Open(path);
        var reader = new SpanReader(file.Span(0, Math.Min(file.Length, V1HeaderBytes), "header"), path);
        bool v1 = file.Length >= 8 && reader.UInt32("magic") == Magic;
        bool shared;
        ModelConfig config;
        if (v1)
        {
            int version = reader.Int32("version");
            if (version != 1)
                throw new ModelFormatException(path, $"llama2.c checkpoint version {version} is not supported (version 1 float32 and the legacy v0 layout are)");
            config = ReadConfig(ref reader, path, out _);
            shared = reader.UInt8("shared_classifier") != 0;
        }
        else
        {
            reader.Seek(0, "header");
            config = ReadConfig(ref reader, path, out bool negativeVocab);
            shared = !negativeVocab;
        }
        config = config with { TiedEmbeddings = shared };
        config.Validate(path);

        long C = config.Dim, H = config.HiddenDim, kv = config.KvDim, L = config.Layers, V = config.VocabSize;
        long offset = v1 ? V1HeaderBytes : reader.Position;
        var filter = select?.Invoke(config) ?? WeightFilter.Everything(config);
        // Tensors follow each other with no index: one left out is stepped over.
        float[] Next(long count, string tensor, bool wanted = true)
        {
            var t = wanted ? file.ReadFloats(offset, count, tensor) : [];
            offset += count * 4;
            return t;
        }
        float[][] PerLayer(long count, string name)
        {
            var all = new float[L][];
            for (int l = 0; l < L; l++) all[l] = Next(count, $"layers.{l}.{name}", filter.Layer(l));
            return all;
        }

        float[] emb, finalNorm;
        float[][] attnNorm, ffnNorm, wq, wk, wv, wo, w1, w2, w3;
        if (v1)
        {
            attnNorm = PerLayer(C, "attn_norm");
            ffnNorm = PerLayer(C, "ffn_norm");
            finalNorm = Next(C, "final_norm");
            emb = Next(V * C, "token_embedding", filter.TokenEmbedding(config));
            wq = PerLayer(C * C, "wq"); wk = PerLayer(kv * C, "wk"); wv = PerLayer(kv * C, "wv"); wo = PerLayer(C * C, "wo");
            w1 = PerLayer(H * C, "w1"); w2 = PerLayer(C * H, "w2"); w3 = PerLayer(H * C, "w3");
        }
        else
        {
            emb = Next(V * C, "token_embedding", filter.TokenEmbedding(config));
            attnNorm = PerLayer(C, "attn_norm");
            wq = PerLayer(C * C, "wq"); wk = PerLayer(kv * C, "wk"); wv = PerLayer(kv * C, "wv"); wo = PerLayer(C * C, "wo");
            ffnNorm = PerLayer(C, "ffn_norm");
            w1 = PerLayer(H * C, "w1"); w2 = PerLayer(C * H, "w2"); w3 = PerLayer(H * C, "w3");
            finalNorm = Next(C, "final_norm");
            // freq_cis_real and freq_cis_imag: (seqLen, headDim/2) each; run.c recomputes RoPE, and so do we.
            long ropeTable = (long)config.MaxSeqLen * config.HeadDim / 2;
            offset += 2 * ropeTable * 4;
        }
        float[]? output = shared ? null : Next(V * C, "output", filter.Head(config));
        if (offset != file.Length)
            throw new ModelFormatException(path, $"size mismatch: the header's shapes need {offset} bytes, the file has {file.Length}");

        var layers = new LayerWeights[L];
        for (int l = 0; l < L; l++)
            layers[l] = !filter.Layer(l) ? LayerWeights.Skipped : filter.Keep(new LayerWeights
            {
                AttnNorm = attnNorm[l], Wq = wq[l], Wk = wk[l], Wv = wv[l], Wo = wo[l],
                FfnNorm = ffnNorm[l], W1 = w1[l], W2 = w2[l], W3 = w3[l],
            }, config, l, path);
        var weights = new ModelWeights { TokenEmbedding = emb, Layers = layers, FinalNorm = finalNorm, Output = output };
        weights.Validate(config, path, filter);
        var tokenizer = tokenizerPath is null ? null : Tokenizers.SentencePieceBpeTokenizer.LoadLlama2c(tokenizerPath, config.VocabSize);
        return new LoadedModel(config, weights, tokenizer, path);
    }

    /// <summary>
    /// Writes <paramref name="model"/> in the v0 layout (negative vocab when the LM head is separate), with run.c's RoPE
    /// tables filled in. llama2.c has no fields for norm eps or RoPE theta: a reader gets the defaults back.
    /// </summary>
    public static void Write(LoadedModel model, string path)
    {
        if (model.Config.Moe is not null) throw new ArgumentException("llama2.c's format has no mixture-of-experts layers; write the model as GGUF", nameof(model));
        var c = model.Config;
        var w = model.Weights;
        if (c.Architecture != Architecture.Llama) throw new ArgumentException("llama2.c checkpoints hold Llama models only", nameof(model));
        if (c.EffectiveRotaryDim != c.HeadDim) throw new ArgumentException("llama2.c rotates whole heads; partial rotary dims cannot be written", nameof(model));
        if (model.Weights.Layers.Any(l => l.Bq is not null || l.Bk is not null || l.Bv is not null || l.Bo is not null))
            throw new ArgumentException("llama2.c's format has no attention biases; write the model as GGUF or safetensors", nameof(model));
        w.Validate(c, model.Source);
        float[] ToInterleaved(float[] m, int heads) =>
            RopePermutation.Convert(m, heads, c.HeadDim, c.HeadDim, c.Dim, c.RopeLayout, Compute.RopeLayout.Interleaved);

        using var output = new BinaryWriter(new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20));
        void Floats(float[] values) => output.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        foreach (int v in new[] { c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.TiedEmbeddings ? c.VocabSize : -c.VocabSize, c.MaxSeqLen })
            output.Write(v);
        Floats(w.TokenEmbedding);
        foreach (var l in w.Layers) Floats(l.AttnNorm);
        foreach (var l in w.Layers) Floats(ToInterleaved(l.Wq, c.Heads));
        foreach (var l in w.Layers) Floats(ToInterleaved(l.Wk, c.KvHeads));
        foreach (var l in w.Layers) Floats(l.Wv);
        foreach (var l in w.Layers) Floats(l.Wo);
        foreach (var l in w.Layers) Floats(l.FfnNorm);
        foreach (var l in w.Layers) Floats(l.W1);
        foreach (var l in w.Layers) Floats(l.W2);
        foreach (var l in w.Layers) Floats(l.W3!);
        Floats(w.FinalNorm);
        int pairs = c.HeadDim / 2;
        var real = new float[(long)c.MaxSeqLen * pairs];   // (seqLen, headDim/2)
        var imag = new float[real.Length];
        for (int t = 0; t < c.MaxSeqLen; t++)
            for (int i = 0; i < pairs; i++)
            {
                float angle = t / MathF.Pow(10000f, 2 * i / (float)c.HeadDim);
                real[t * pairs + i] = MathF.Cos(angle);
                imag[t * pairs + i] = MathF.Sin(angle);
            }
        Floats(real);
        Floats(imag);
        if (!c.TiedEmbeddings) Floats(w.Output!);
    }

    private static ModelConfig ReadConfig(ref SpanReader reader, string path, out bool negativeVocab)
    {
        int dim = reader.Int32("dim"), hidden = reader.Int32("hidden_dim"), layers = reader.Int32("n_layers");
        int heads = reader.Int32("n_heads"), kvHeads = reader.Int32("n_kv_heads"), vocab = reader.Int32("vocab_size");
        int seqLen = reader.Int32("seq_len");
        negativeVocab = vocab < 0;
        if (vocab == int.MinValue) throw new ModelFormatException(path, "vocab_size out of range");
        return new ModelConfig
        {
            Architecture = Architecture.Llama, Dim = dim, HiddenDim = hidden, Layers = layers, Heads = heads,
            KvHeads = kvHeads, VocabSize = Math.Abs(vocab), MaxSeqLen = seqLen,
        };
    }
}
