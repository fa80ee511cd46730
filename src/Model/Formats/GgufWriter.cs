// Writes a LoadedModel as GGUF v3 with llama.cpp's standard keys and tensor names (the layout GgufFormat reads),
// so llama.cpp can load what we write. Matrices are stored as the chosen type (F32, F16, Q8_0, Q4_0); a matrix whose
// rows are not whole quantization blocks, and every vector, stays F32. A SentencePiece vocabulary is embedded as
// tokenizer.ggml.model "llama" (space written as "▁", token types 1 normal, 2 unknown, 3 control, 6 byte).
using System.Text;
using Cluster.Compute;
using Cluster.Model.Tokenizers;

namespace Cluster.Model.Formats;

public static class GgufWriter
{
    private sealed record Tensor(string Name, long[] Ne, float[] Data, TensorType Type);

    /// <summary>
    /// Why GGUF cannot hold a model of config <paramref name="c"/> as llama.cpp reads it, or null when it can. llama.cpp's
    /// llama architecture renormalizes the chosen experts' weights and has no shared expert; its qwen2moe architecture has
    /// a gated shared expert and does not renormalize. Any other mixture goes to safetensors.
    /// </summary>
    public static string? CannotWrite(ModelConfig c) => c.Moe switch
    {
        { SharedExpertHidden: > 0, SharedExpertGate: false } => "GGUF has no ungated shared expert (llama.cpp's qwen2moe gates it)",
        { SharedExpertHidden: > 0, NormalizeTopK: true } => "GGUF's qwen2moe architecture does not renormalize the chosen experts' weights: write the model as safetensors (Qwen2-MoE, norm_topk_prob)",
        { SharedExpertHidden: 0, NormalizeTopK: false } => "GGUF's llama architecture renormalizes the chosen experts' weights: a model that does not cannot be written as it",
        _ => null,
    };

    /// <summary>The GGUF architecture a model is written as: gpt2, qwen2moe (an MoE with a shared expert) or llama.</summary>
    private static string FileArchitecture(ModelConfig c) =>
        c.Architecture == Architecture.Gpt2 ? "gpt2" : c.Moe is { SharedExpertHidden: > 0 } ? "qwen2moe" : "llama";

    public static void Write(LoadedModel model, string path, TensorType matrixType = TensorType.F32, string name = "cluster")
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Write(model, stream, matrixType, name, path);
    }

    /// <summary>Writes the model into <paramref name="stream"/> (which must tell its position), leaving it open.</summary>
    public static void Write(LoadedModel model, Stream stream, TensorType matrixType, string name, string destination)
    {
        if (matrixType is not (TensorType.F32 or TensorType.F16 or TensorType.Q8_0 or TensorType.Q4_0))
            throw new ArgumentException($"GGUF writer stores F32, F16, Q8_0 or Q4_0, not {matrixType}", nameof(matrixType));
        var c = model.Config;
        var w = model.Weights;
        w.Validate(c, model.Source);
        bool llama = c.Architecture == Architecture.Llama;
        string arch = FileArchitecture(c);
        if (CannotWrite(c) is { } why) throw new ArgumentException(why, nameof(model));

        var meta = new MetadataWriter();
        meta.String("general.architecture", arch);
        meta.String("general.name", name);
        meta.UInt32("general.alignment", GgufFile.DefaultAlignment);
        meta.UInt32($"{arch}.block_count", c.Layers);
        meta.UInt32($"{arch}.context_length", c.MaxSeqLen);
        meta.UInt32($"{arch}.embedding_length", c.Dim);
        meta.UInt32($"{arch}.feed_forward_length", c.HiddenDim);
        meta.UInt32($"{arch}.attention.head_count", c.Heads);
        if (llama)
        {
            meta.UInt32($"{arch}.attention.head_count_kv", c.KvHeads);
            meta.Float32($"{arch}.attention.layer_norm_rms_epsilon", c.NormEps);
            meta.Float32($"{arch}.rope.freq_base", c.RopeTheta);
            meta.UInt32($"{arch}.rope.dimension_count", c.EffectiveRotaryDim);
            meta.UInt32($"{arch}.vocab_size", c.VocabSize);
            if (c.Moe is { } moe)
            {
                meta.UInt32($"{arch}.expert_count", moe.Experts);
                meta.UInt32($"{arch}.expert_used_count", moe.ExpertsPerToken);
                if (moe.SharedExpertHidden > 0)
                {
                    meta.UInt32($"{arch}.expert_feed_forward_length", c.HiddenDim);
                    meta.UInt32($"{arch}.expert_shared_feed_forward_length", moe.SharedExpertHidden);
                }
            }
        }
        else meta.Float32("gpt2.attention.layer_norm_epsilon", c.NormEps);
        if (model.Tokenizer is SentencePieceBpeTokenizer sp) WriteVocabulary(meta, sp);

        var tensors = llama ? LlamaTensors(c, w) : Gpt2Tensors(c, w);
        tensors = tensors.Select(t => t with { Type = StorageType(t, matrixType) }).ToList();

        using var output = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        output.Write(GgufFile.Magic);
        output.Write(3u);
        output.Write((ulong)tensors.Count);
        output.Write((ulong)meta.Count);
        output.Write(meta.Bytes);
        long offset = 0;
        var offsets = new long[tensors.Count];
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            MetadataWriter.WriteString(output, Encoding.UTF8.GetBytes(t.Name));
            output.Write((uint)t.Ne.Length);
            foreach (long n in t.Ne) output.Write((ulong)n);
            output.Write((uint)t.Type);
            output.Write((ulong)offset);
            offsets[i] = offset;
            offset = GgufFile.AlignUp(offset + TensorCodec.ByteSize(t.Type, t.Data.LongLength, destination, t.Name), GgufFile.DefaultAlignment);
        }
        Pad(output, GgufFile.DefaultAlignment);
        long dataStart = stream.Position;
        for (int i = 0; i < tensors.Count; i++)
        {
            output.Write(new byte[dataStart + offsets[i] - stream.Position]);
            output.Write(TensorCodec.Encode(tensors[i].Data, tensors[i].Type));
        }
        Pad(output, GgufFile.DefaultAlignment);
    }

    private static TensorType StorageType(Tensor t, TensorType matrixType) =>
        t.Ne.Length < 2 || t.Ne[0] % TensorCodec.BlockSize(matrixType) != 0 ? TensorType.F32 : matrixType;

    private static void Pad(BinaryWriter output, long alignment) =>
        output.Write(new byte[GgufFile.AlignUp(output.BaseStream.Position, alignment) - output.BaseStream.Position]);

    private static List<Tensor> LlamaTensors(ModelConfig c, ModelWeights w)
    {
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize;
        // llama.cpp's converter stores a llama model's Q/K rows in interleaved RoPE order; qwen2moe's as they are (NEOX,
        // half-split). llama.cpp's qwen2moe also needs the q/k/v biases and a separate head: zeros and the embedding's copy
        // where the model has none.
        bool qwen = FileArchitecture(c) == "qwen2moe";
        var fileLayout = qwen ? RopeLayout.HalfSplit : RopeLayout.Interleaved;
        float[] ToFileLayout(float[] m, int heads) =>
            RopePermutation.Convert(m, heads, c.HeadDim, c.EffectiveRotaryDim, c.Dim, c.RopeLayout, fileLayout);
        float[] BiasToFileLayout(float[] b, int heads) =>
            RopePermutation.Convert(b, heads, c.HeadDim, c.EffectiveRotaryDim, 1, c.RopeLayout, fileLayout);
        var list = new List<Tensor> { new("token_embd.weight", [C, V], w.TokenEmbedding, TensorType.F32) };
        for (int l = 0; l < c.Layers; l++)
        {
            var x = w.Layers[l];
            string p = $"blk.{l}.";
            list.Add(new(p + "attn_norm.weight", [C], x.AttnNorm, TensorType.F32));
            list.Add(new(p + "attn_q.weight", [C, C], ToFileLayout(x.Wq, c.Heads), TensorType.F32));
            list.Add(new(p + "attn_k.weight", [C, kv], ToFileLayout(x.Wk, c.KvHeads), TensorType.F32));
            list.Add(new(p + "attn_v.weight", [C, kv], x.Wv, TensorType.F32));
            // Qwen2's biases (llama.cpp's llama reads them where present)
            if ((x.Bq ?? (qwen ? new float[C] : null)) is { } bq) list.Add(new(p + "attn_q.bias", [C], BiasToFileLayout(bq, c.Heads), TensorType.F32));
            if ((x.Bk ?? (qwen ? new float[kv] : null)) is { } bk) list.Add(new(p + "attn_k.bias", [kv], BiasToFileLayout(bk, c.KvHeads), TensorType.F32));
            if ((x.Bv ?? (qwen ? new float[kv] : null)) is { } bv) list.Add(new(p + "attn_v.bias", [kv], bv, TensorType.F32));
            list.Add(new(p + "attn_output.weight", [C, C], x.Wo, TensorType.F32));
            if (x.Bo is not null) list.Add(new(p + "attn_output.bias", [C], x.Bo, TensorType.F32));
            list.Add(new(p + "ffn_norm.weight", [C], x.FfnNorm, TensorType.F32));
            if (c.Moe is { } moe)
            {
                long E = moe.Experts;
                list.Add(new(p + "ffn_gate_inp.weight", [C, E], x.Router!, TensorType.F32));
                if (x.RouterBias is not null) list.Add(new(p + "exp_probs_b.bias", [E], x.RouterBias, TensorType.F32));
                list.Add(new(p + "ffn_gate_exps.weight", [C, H, E], x.W1, TensorType.F32));
                list.Add(new(p + "ffn_down_exps.weight", [H, C, E], x.W2, TensorType.F32));
                list.Add(new(p + "ffn_up_exps.weight", [C, H, E], x.W3!, TensorType.F32));
                if (moe.SharedExpertHidden > 0)   // qwen2moe's shared expert and its gate
                {
                    long Hs = moe.SharedExpertHidden;
                    list.Add(new(p + "ffn_gate_inp_shexp.weight", [C], x.SharedExpertGate!, TensorType.F32));
                    list.Add(new(p + "ffn_gate_shexp.weight", [C, Hs], x.SharedW1!, TensorType.F32));
                    list.Add(new(p + "ffn_down_shexp.weight", [Hs, C], x.SharedW2!, TensorType.F32));
                    list.Add(new(p + "ffn_up_shexp.weight", [C, Hs], x.SharedW3!, TensorType.F32));
                }
                continue;
            }
            list.Add(new(p + "ffn_gate.weight", [C, H], x.W1, TensorType.F32));
            list.Add(new(p + "ffn_down.weight", [H, C], x.W2, TensorType.F32));
            list.Add(new(p + "ffn_up.weight", [C, H], x.W3!, TensorType.F32));
        }
        list.Add(new("output_norm.weight", [C], w.FinalNorm, TensorType.F32));
        if ((w.Output ?? (qwen ? w.TokenEmbedding : null)) is { } head) list.Add(new("output.weight", [C, V], head, TensorType.F32));
        return list;
    }

    private static List<Tensor> Gpt2Tensors(ModelConfig c, ModelWeights w)
    {
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize;
        var list = new List<Tensor>
        {
            new("token_embd.weight", [C, V], w.TokenEmbedding, TensorType.F32),
            new("position_embd.weight", [C, c.MaxSeqLen], w.PositionEmbedding!, TensorType.F32),
        };
        for (int l = 0; l < c.Layers; l++)
        {
            var x = w.Layers[l];
            string p = $"blk.{l}.";
            list.Add(new(p + "attn_norm.weight", [C], x.AttnNorm, TensorType.F32));
            list.Add(new(p + "attn_norm.bias", [C], x.AttnNormBias!, TensorType.F32));
            list.Add(new(p + "attn_qkv.weight", [C, C + 2 * kv], [.. x.Wq, .. x.Wk, .. x.Wv], TensorType.F32));
            list.Add(new(p + "attn_qkv.bias", [C + 2 * kv], [.. x.Bq!, .. x.Bk!, .. x.Bv!], TensorType.F32));
            list.Add(new(p + "attn_output.weight", [C, C], x.Wo, TensorType.F32));
            list.Add(new(p + "attn_output.bias", [C], x.Bo!, TensorType.F32));
            list.Add(new(p + "ffn_norm.weight", [C], x.FfnNorm, TensorType.F32));
            list.Add(new(p + "ffn_norm.bias", [C], x.FfnNormBias!, TensorType.F32));
            list.Add(new(p + "ffn_up.weight", [C, H], x.W1, TensorType.F32));
            list.Add(new(p + "ffn_up.bias", [H], x.B1!, TensorType.F32));
            list.Add(new(p + "ffn_down.weight", [H, C], x.W2, TensorType.F32));
            list.Add(new(p + "ffn_down.bias", [C], x.B2!, TensorType.F32));
        }
        list.Add(new("output_norm.weight", [C], w.FinalNorm, TensorType.F32));
        list.Add(new("output_norm.bias", [C], w.FinalNormBias!, TensorType.F32));
        if (w.Output is not null) list.Add(new("output.weight", [C, V], w.Output, TensorType.F32));
        return list;
    }

    private static void WriteVocabulary(MetadataWriter meta, SentencePieceBpeTokenizer sp)
    {
        int n = sp.VocabSize, unk = 0;
        var tokens = new byte[n][];
        var scores = new float[n];
        var types = new int[n];
        for (int i = 0; i < n; i++)
        {
            var piece = sp.Piece(i);
            tokens[i] = SpaceToUnderscore(piece);
            scores[i] = sp.Score(i);
            bool isByte = piece.Length == 6 && piece.StartsWith("<0x"u8) && piece[5] == '>';
            bool isUnknown = piece.SequenceEqual("<unk>"u8);
            if (isUnknown) unk = i;
            types[i] = i == sp.BosId || i == sp.EosId ? 3 : isUnknown ? 2 : isByte ? 6 : 1;
        }
        meta.String("tokenizer.ggml.model", "llama");
        meta.StringArray("tokenizer.ggml.tokens", tokens);
        meta.Float32Array("tokenizer.ggml.scores", scores);
        meta.Int32Array("tokenizer.ggml.token_type", types);
        meta.UInt32("tokenizer.ggml.bos_token_id", sp.BosId);
        meta.UInt32("tokenizer.ggml.eos_token_id", sp.EosId);
        meta.UInt32("tokenizer.ggml.unknown_token_id", unk);
    }

    private static byte[] SpaceToUnderscore(ReadOnlySpan<byte> piece)
    {
        var result = new List<byte>(piece.Length + 4);
        foreach (byte b in piece)
            if (b == (byte)' ') result.AddRange("\u2581"u8);
            else result.Add(b);
        return [.. result];
    }

    /// <summary>Accumulates key/value pairs in GGUF encoding.</summary>
    private sealed class MetadataWriter
    {
        private readonly MemoryStream _bytes = new();
        private readonly BinaryWriter _out;

        public MetadataWriter() => _out = new BinaryWriter(_bytes);

        public int Count { get; private set; }
        public byte[] Bytes => _bytes.ToArray();

        public static void WriteString(BinaryWriter output, ReadOnlySpan<byte> utf8)
        {
            output.Write((ulong)utf8.Length);
            output.Write(utf8);
        }

        private void Key(string key, GgufValueType type)
        {
            Count++;
            WriteString(_out, Encoding.UTF8.GetBytes(key));
            _out.Write((uint)type);
        }

        public void String(string key, string value)
        {
            Key(key, GgufValueType.String);
            WriteString(_out, Encoding.UTF8.GetBytes(value));
        }

        public void UInt32(string key, int value)
        {
            Key(key, GgufValueType.UInt32);
            _out.Write((uint)value);
        }

        public void Float32(string key, float value)
        {
            Key(key, GgufValueType.Float32);
            _out.Write(value);
        }

        private void ArrayHeader(string key, GgufValueType elementType, int count)
        {
            Key(key, GgufValueType.Array);
            _out.Write((uint)elementType);
            _out.Write((ulong)count);
        }

        public void StringArray(string key, byte[][] values)
        {
            ArrayHeader(key, GgufValueType.String, values.Length);
            foreach (var v in values) WriteString(_out, v);
        }

        public void Float32Array(string key, float[] values)
        {
            ArrayHeader(key, GgufValueType.Float32, values.Length);
            foreach (float v in values) _out.Write(v);
        }

        public void Int32Array(string key, int[] values)
        {
            ArrayHeader(key, GgufValueType.Int32, values.Length);
            foreach (int v in values) _out.Write(v);
        }
    }
}
