// Writes a LoadedModel as a Hugging Face checkpoint directory: model.safetensors (F32, HF tensor names, Llama Q/K
// rows in half-split RoPE order, GPT-2 Conv1D weights transposed to (in, out)), config.json and, for a SentencePiece
// vocabulary, tokenizer.json: what SafetensorsFormat reads back.
using System.Text.Json;
using Cluster.Compute;
using Cluster.Model.Tokenizers;

namespace Cluster.Model.Formats;

public static class SafetensorsWriter
{
    public static void Write(LoadedModel model, string directory)
    {
        var c = model.Config;
        var w = model.Weights;
        w.Validate(c, model.Source);
        Directory.CreateDirectory(directory);
        var tensors = c.Architecture == Architecture.Llama ? LlamaTensors(c, w) : Gpt2Tensors(c, w);
        WriteTensors(tensors, Path.Combine(directory, SafetensorsFormat.WeightsFile));
        HfConfigJson.Write(c, Path.Combine(directory, SafetensorsFormat.ConfigFile), model.Tokenizer?.BosId ?? 1, model.Tokenizer?.EosId ?? 2, AttentionBiases(c, w));
        if (model.Tokenizer is SentencePieceBpeTokenizer sp) HfTokenizerJson.Write(sp, Path.Combine(directory, SafetensorsFormat.TokenizerFile));
    }

    /// <summary>A Llama-family model's attention biases, as one of the shapes Hugging Face's configs can say.</summary>
    private static HfConfigJson.AttentionBiases AttentionBiases(ModelConfig c, ModelWeights w)
    {
        if (c.Architecture != Architecture.Llama) return HfConfigJson.AttentionBiases.None;
        var layers = w.Layers;
        if (layers.All(l => l.Bq is null && l.Bk is null && l.Bv is null && l.Bo is null)) return HfConfigJson.AttentionBiases.None;
        if (layers.All(l => l.Bq is not null && l.Bk is not null && l.Bv is not null && l.Bo is null)) return HfConfigJson.AttentionBiases.QueryKeyValue;
        if (layers.All(l => l.Bq is not null && l.Bk is not null && l.Bv is not null && l.Bo is not null)) return HfConfigJson.AttentionBiases.All;
        throw new ArgumentException("the layers' attention biases are neither Qwen2's (q, k, v) nor Llama's attention_bias (q, k, v, o) on every layer");
    }

    /// <summary>Writes named F32 tensors with their PyTorch shapes, in the given order.</summary>
    public static void WriteTensors(IReadOnlyList<(string Name, long[] Shape, float[] Data)> tensors, string path)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        WriteTensors(tensors, file);
    }

    /// <summary>Writes named F32 tensors with their PyTorch shapes, in the given order, to <paramref name="stream"/> (left open).</summary>
    public static void WriteTensors(IReadOnlyList<(string Name, long[] Shape, float[] Data)> tensors, Stream stream)
    {
        var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            json.WriteString("format", "pt");
            json.WriteEndObject();
            long offset = 0;
            foreach (var (name, shape, data) in tensors)
            {
                json.WriteStartObject(name);
                json.WriteString("dtype", "F32");
                json.WriteStartArray("shape");
                foreach (long d in shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset += data.LongLength * 4);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0) header.WriteByte((byte)' ');   // data 8-byte aligned, as HF writes it
        using var output = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true);
        output.Write((ulong)header.Length);
        output.Write(header.ToArray());
        foreach (var (_, _, data) in tensors) output.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
    }

    private static List<(string, long[], float[])> LlamaTensors(ModelConfig c, ModelWeights w)
    {
        if (c.EffectiveRotaryDim != c.HeadDim) throw new ArgumentException("HF Llama rotates whole heads; partial rotary dims cannot be written");
        long C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize;
        float[] ToHalfSplit(float[] m, int heads) => RopePermutation.Convert(m, heads, c.HeadDim, c.HeadDim, c.Dim, c.RopeLayout, RopeLayout.HalfSplit);
        float[] BiasToHalfSplit(float[] b, int heads) => RopePermutation.Convert(b, heads, c.HeadDim, c.HeadDim, 1, c.RopeLayout, RopeLayout.HalfSplit);
        var list = new List<(string, long[], float[])> { ("model.embed_tokens.weight", [V, C], w.TokenEmbedding) };
        for (int l = 0; l < c.Layers; l++)
        {
            var x = w.Layers[l];
            string p = $"model.layers.{l}.";
            list.Add((p + "input_layernorm.weight", [C], x.AttnNorm));
            list.Add((p + "self_attn.q_proj.weight", [C, C], ToHalfSplit(x.Wq, c.Heads)));
            list.Add((p + "self_attn.k_proj.weight", [kv, C], ToHalfSplit(x.Wk, c.KvHeads)));
            list.Add((p + "self_attn.v_proj.weight", [kv, C], x.Wv));
            if (x.Bq is not null) list.Add((p + "self_attn.q_proj.bias", [C], BiasToHalfSplit(x.Bq, c.Heads)));   // Qwen2's
            if (x.Bk is not null) list.Add((p + "self_attn.k_proj.bias", [kv], BiasToHalfSplit(x.Bk, c.KvHeads)));
            if (x.Bv is not null) list.Add((p + "self_attn.v_proj.bias", [kv], x.Bv));
            list.Add((p + "self_attn.o_proj.weight", [C, C], x.Wo));
            if (x.Bo is not null) list.Add((p + "self_attn.o_proj.bias", [C], x.Bo));   // Llama's attention_bias
            list.Add((p + "post_attention_layernorm.weight", [C], x.FfnNorm));
            if (c.Moe is { SharedExpertHidden: > 0 } shared)   // Qwen2-MoE's names
            {
                long E = shared.Experts, Hs = shared.SharedExpertHidden;
                list.Add((p + "mlp.gate.weight", [E, C], x.Router!));
                if (x.RouterBias is not null) list.Add((p + "mlp.gate.e_score_correction_bias", [E], x.RouterBias));
                for (int e = 0; e < E; e++)
                {
                    string expert = $"{p}mlp.experts.{e}.";
                    list.Add((expert + "gate_proj.weight", [H, C], x.W1.AsSpan((int)(e * H * C), (int)(H * C)).ToArray()));
                    list.Add((expert + "down_proj.weight", [C, H], x.W2.AsSpan((int)(e * C * H), (int)(C * H)).ToArray()));
                    list.Add((expert + "up_proj.weight", [H, C], x.W3!.AsSpan((int)(e * H * C), (int)(H * C)).ToArray()));
                }
                list.Add((p + "mlp.shared_expert.gate_proj.weight", [Hs, C], x.SharedW1!));
                list.Add((p + "mlp.shared_expert.down_proj.weight", [C, Hs], x.SharedW2!));
                list.Add((p + "mlp.shared_expert.up_proj.weight", [Hs, C], x.SharedW3!));
                list.Add((p + "mlp.shared_expert_gate.weight", [1, C], x.SharedExpertGate!));
                continue;
            }
            if (c.Moe is { } moe)   // Mixtral's names: one tensor per expert
            {
                list.Add((p + "block_sparse_moe.gate.weight", [moe.Experts, C], x.Router!));
                if (x.RouterBias is not null) list.Add((p + "block_sparse_moe.gate.e_score_correction_bias", [moe.Experts], x.RouterBias));
                for (int e = 0; e < moe.Experts; e++)
                {
                    string expert = $"{p}block_sparse_moe.experts.{e}.";
                    list.Add((expert + "w1.weight", [H, C], x.W1.AsSpan((int)(e * H * C), (int)(H * C)).ToArray()));
                    list.Add((expert + "w2.weight", [C, H], x.W2.AsSpan((int)(e * C * H), (int)(C * H)).ToArray()));
                    list.Add((expert + "w3.weight", [H, C], x.W3!.AsSpan((int)(e * H * C), (int)(H * C)).ToArray()));
                }
                continue;
            }
            list.Add((p + "mlp.gate_proj.weight", [H, C], x.W1));
            list.Add((p + "mlp.down_proj.weight", [C, H], x.W2));
            list.Add((p + "mlp.up_proj.weight", [H, C], x.W3!));
        }
        list.Add(("model.norm.weight", [C], w.FinalNorm));
        if (w.Output is not null) list.Add(("lm_head.weight", [V, C], w.Output));
        return list;
    }

    private static List<(string, long[], float[])> Gpt2Tensors(ModelConfig c, ModelWeights w)
    {
        if (c.KvHeads != c.Heads) throw new ArgumentException("GPT-2 checkpoints have as many kv heads as heads");
        long C = c.Dim, H = c.HiddenDim, V = c.VocabSize;
        float[] ToConv1D(float[] m, long outDim, long inDim) => SafetensorsFormat.Transpose(m, (int)outDim, (int)inDim);   // (out, in) → (in, out)
        var list = new List<(string, long[], float[])>
        {
            ("transformer.wte.weight", [V, C], w.TokenEmbedding),
            ("transformer.wpe.weight", [c.MaxSeqLen, C], w.PositionEmbedding!),
        };
        for (int l = 0; l < c.Layers; l++)
        {
            var x = w.Layers[l];
            string p = $"transformer.h.{l}.";
            list.Add((p + "ln_1.weight", [C], x.AttnNorm));
            list.Add((p + "ln_1.bias", [C], x.AttnNormBias!));
            list.Add((p + "attn.c_attn.weight", [C, 3 * C], ToConv1D([.. x.Wq, .. x.Wk, .. x.Wv], 3 * C, C)));
            list.Add((p + "attn.c_attn.bias", [3 * C], [.. x.Bq!, .. x.Bk!, .. x.Bv!]));
            list.Add((p + "attn.c_proj.weight", [C, C], ToConv1D(x.Wo, C, C)));
            list.Add((p + "attn.c_proj.bias", [C], x.Bo!));
            list.Add((p + "ln_2.weight", [C], x.FfnNorm));
            list.Add((p + "ln_2.bias", [C], x.FfnNormBias!));
            list.Add((p + "mlp.c_fc.weight", [C, H], ToConv1D(x.W1, H, C)));
            list.Add((p + "mlp.c_fc.bias", [H], x.B1!));
            list.Add((p + "mlp.c_proj.weight", [H, C], ToConv1D(x.W2, C, H)));
            list.Add((p + "mlp.c_proj.bias", [C], x.B2!));
        }
        list.Add(("transformer.ln_f.weight", [C], w.FinalNorm));
        list.Add(("transformer.ln_f.bias", [C], w.FinalNormBias!));
        if (w.Output is not null) list.Add(("lm_head.weight", [V, C], w.Output));
        return list;
    }
}
