// A decoder for training on one device, Llama or GPT-2 family (llm.c's gpt2_forward / gpt2_backward): the forward
// keeps every activation the backward needs, the backward accumulates fp32 gradients into tensors shaped like the
// weights. Sequences may pack several documents: each document's positions restart at 0 and attention never crosses
// documents. Its logits equal the inference TransformerModel's (a test holds it to 1e-5).
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class Cluster.Tests.Training.TrainableModelTests
using Cluster.Compute.Cpu;
using Cluster.Model;

namespace Cluster.Training;

/// <summary>One training sequence: tokens (T,), next-token targets (T,; CrossEntropy.Ignore where not counted), and optionally document ids (T,).</summary>
public sealed record TrainingSequence(int[] Tokens, int[] Targets, int[]? Documents = null);

public sealed class TrainableModel : IDisposable
{
    private readonly WorkerPool _pool;
    private readonly Linear _linear;

    /// <param name="threads">CPU threads the model's products run on.</param>
    public TrainableModel(ModelConfig config, ModelWeights weights, int threads = 1)
    {
        weights.Validate(config, "weights");
        Config = config;
        Weights = weights;
        Gradients = ZerosLike(weights);
        _pool = new WorkerPool(threads);
        _linear = new Linear(_pool);
    }

    public void Dispose()
    {
        _linear.Dispose();
        _pool.Dispose();
    }

    public ModelConfig Config { get; }
    /// <summary>The parameters, updated in place by an optimizer.</summary>
    public ModelWeights Weights { get; }
    /// <summary>∂loss/∂parameter, same shapes; a tied head's gradient lands in TokenEmbedding.</summary>
    public ModelWeights Gradients { get; }

    /// <summary>Every (parameter, gradient) pair, in a fixed order (for optimizers, clipping and checkpoints).</summary>
    public IEnumerable<(string Name, float[] Parameter, float[] Gradient)> Parameters()
    {
        var all = new List<(string, float[]?, float[]?)> { ("token_embedding", Weights.TokenEmbedding, Gradients.TokenEmbedding),
            ("position_embedding", Weights.PositionEmbedding, Gradients.PositionEmbedding) };
        for (int l = 0; l < Config.Layers; l++)
        {
            LayerWeights w = Weights.Layers[l], g = Gradients.Layers[l];
            string p = $"layers.{l}.";
            all.AddRange([
                (p + "attn_norm", w.AttnNorm, g.AttnNorm), (p + "attn_norm.bias", w.AttnNormBias, g.AttnNormBias),
                (p + "wq", w.Wq, g.Wq), (p + "bq", w.Bq, g.Bq), (p + "wk", w.Wk, g.Wk), (p + "bk", w.Bk, g.Bk),
                (p + "wv", w.Wv, g.Wv), (p + "bv", w.Bv, g.Bv), (p + "wo", w.Wo, g.Wo), (p + "bo", w.Bo, g.Bo),
                (p + "ffn_norm", w.FfnNorm, g.FfnNorm), (p + "ffn_norm.bias", w.FfnNormBias, g.FfnNormBias),
                (p + "w1", w.W1, g.W1), (p + "b1", w.B1, g.B1), (p + "w2", w.W2, g.W2), (p + "b2", w.B2, g.B2), (p + "w3", w.W3, g.W3),
            ]);
        }
        all.AddRange([("final_norm", Weights.FinalNorm, Gradients.FinalNorm), ("final_norm.bias", Weights.FinalNormBias, Gradients.FinalNormBias),
            ("output", Weights.Output, Gradients.Output)]);
        foreach (var (name, parameter, gradient) in all)
            if (parameter is not null) yield return (name, parameter, gradient!);   // the tensors this architecture has
    }

    /// <summary>Whether a parameter of <see cref="Parameters"/> is a matrix (embeddings, projections, head) rather than a norm weight or a bias.</summary>
    public static bool IsMatrix(string name)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return last is "token_embedding" or "position_embedding" or "output" || (last.Length == 2 && last[0] == 'w');
    }

    public void ZeroGradients()
    {
        foreach (var (_, _, gradient) in Parameters()) Array.Clear(gradient);
    }

    /// <summary>
    /// Forward and backward over a batch: returns the mean cross-entropy over every counted target of the batch and
    /// adds its gradient to <see cref="Gradients"/> (call ZeroGradients between optimizer steps). The batch's sequences
    /// go through every product together, as rows of one matrix; attention keeps to each sequence.
    /// </summary>
    public float ForwardBackward(IReadOnlyList<TrainingSequence> batch)
    {
        _linear.ForgetPacked();   // an optimizer may have changed the weights since the last call
        foreach (var sequence in batch)
            if (sequence.Targets.Length != sequence.Tokens.Length) throw new ArgumentException("a sequence needs one target per token", nameof(batch));
        int[] targets = [.. batch.SelectMany(s => s.Targets)];
        if (targets.All(t => t == CrossEntropy.Ignore)) throw new ArgumentException("the batch has no counted targets", nameof(batch));
        var activations = Forward(batch);
        var dlogits = new float[activations.Logits.Length];
        float loss = CrossEntropy.LossAndGradient(activations.Logits, targets, dlogits, Config.VocabSize);
        Backward(activations, dlogits);
        return loss;
    }

    /// <summary>The logits (T, V) of every position (no gradients).</summary>
    public float[] Logits(int[] tokens, int[]? documents = null)
    {
        _linear.ForgetPacked();
        return Forward([new TrainingSequence(tokens, new int[tokens.Length], documents)]).Logits;
    }

    /// <summary>What the forward keeps for the backward, per layer and for the head; T counts the tokens of the whole batch.</summary>
    private sealed class SavedActivations(int layers)
    {
        public required int[] Tokens;                    // (T,)
        public required int[] Positions;                 // (T,)
        public required (int Offset, int Length, int[] Documents)[] Sequences;   // each sequence's rows and document ids (or empty)
        public readonly float[][] LayerInput = new float[layers][];     // (T, C)
        public readonly float[][] AttnNormed = new float[layers][];     // (T, C)
        public readonly float[][] Q = new float[layers][];              // (T, C)    after RoPE
        public readonly float[][] K = new float[layers][];              // (T, kv)   after RoPE
        public readonly float[][] V = new float[layers][];              // (T, kv)
        public readonly float[][][] Probs = new float[layers][][];      // per sequence (nh, Ti, Ti)
        public readonly float[][] Attention = new float[layers][];      // (T, C)
        public readonly float[][] Residual = new float[layers][];       // (T, C)    x after attention
        public readonly float[][] FfnNormed = new float[layers][];      // (T, C)
        public readonly float[][] Gate = new float[layers][];           // (T, H)    before SwiGLU
        public readonly float[][] Up = new float[layers][];             // (T, H)    Llama
        public readonly float[][] Hidden = new float[layers][];         // (T, H)    SwiGLU output
        public float[] Final = [];                                      // (T, C)    last layer output
        public float[] FinalNormed = [];                                // (T, C)
        public float[] Logits = [];                                     // (T, V)
    }

    private SavedActivations Forward(IReadOnlyList<TrainingSequence> batch)
    {
        var c = Config;
        int T = batch.Sum(s => s.Tokens.Length), C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize;
        if (batch.Count == 0 || batch.Any(s => s.Tokens.Length == 0)) throw new ArgumentException("every training sequence needs tokens", nameof(batch));
        var sequences = new (int, int, int[])[batch.Count];
        var positions = new int[T];
        for (int i = 0, offset = 0; i < batch.Count; offset += batch[i].Tokens.Length, i++)
        {
            var (tokens, documents) = (batch[i].Tokens, batch[i].Documents);
            if (tokens.Length > c.MaxSeqLen) throw new ArgumentException($"a sequence of {tokens.Length} tokens is longer than the context of {c.MaxSeqLen}", nameof(batch));
            if (documents is not null && documents.Length != tokens.Length) throw new ArgumentException("documents must give one id per token", nameof(batch));
            foreach (int token in tokens)
                if ((uint)token >= (uint)V) throw new ArgumentOutOfRangeException(nameof(batch), token, $"token outside the vocabulary of {V}");
            sequences[i] = (offset, tokens.Length, documents ?? []);
            PositionsOf(tokens.Length, documents).CopyTo(positions, offset);
        }
        var a = new SavedActivations(c.Layers) { Tokens = [.. batch.SelectMany(s => s.Tokens)], Positions = positions, Sequences = sequences };
        bool llama = c.Architecture == Architecture.Llama;

        var x = new float[T * C];                                                            // (T, C)
        for (int t = 0; t < T; t++)
        {
            Weights.TokenEmbedding.AsSpan(a.Tokens[t] * C, C).CopyTo(x.AsSpan(t * C));
            if (Weights.PositionEmbedding is { } learned)                                   // GPT-2: learned positions
                System.Numerics.Tensors.TensorPrimitives.Add(x.AsSpan(t * C, C), learned.AsSpan(a.Positions[t] * C, C), x.AsSpan(t * C, C));
        }
        for (int l = 0; l < c.Layers; l++)
        {
            var w = Weights.Layers[l];
            a.LayerInput[l] = x;
            var n1 = a.AttnNormed[l] = NormalizeRows(x, w.AttnNorm, w.AttnNormBias, T);
            var q = a.Q[l] = new float[T * C];
            var k = a.K[l] = new float[T * kv];
            var v = a.V[l] = new float[T * kv];
            _linear.Forward(n1, w.Wq, w.Bq, q, T, C, C);
            _linear.Forward(n1, w.Wk, w.Bk, k, T, kv, C);
            _linear.Forward(n1, w.Wv, w.Bv, v, T, kv, C);
            for (int t = 0; t < T && llama; t++)
            {
                RotaryEmbedding.Apply(q.AsSpan(t * C, C), a.Positions[t], c.Heads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
                RotaryEmbedding.Apply(k.AsSpan(t * kv, kv), a.Positions[t], c.KvHeads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
            }
            var att = a.Attention[l] = new float[T * C];
            a.Probs[l] = new float[a.Sequences.Length][];
            for (int i = 0; i < a.Sequences.Length; i++)
            {
                var (offset, length, documents) = a.Sequences[i];
                var probs = a.Probs[l][i] = new float[c.Heads * length * length];
                CausalAttention.Forward(q.AsSpan(offset * C, length * C), k.AsSpan(offset * kv, length * kv), v.AsSpan(offset * kv, length * kv),
                    att.AsSpan(offset * C, length * C), probs, documents, length, c.Heads, c.KvHeads, c.HeadDim);
            }
            var x1 = a.Residual[l] = new float[T * C];
            _linear.Forward(att, w.Wo, w.Bo, x1, T, C, C);
            System.Numerics.Tensors.TensorPrimitives.Add(x1, x, x1);
            var n2 = a.FfnNormed[l] = NormalizeRows(x1, w.FfnNorm, w.FfnNormBias, T);
            var gate = a.Gate[l] = new float[T * H];
            _linear.Forward(n2, w.W1, w.B1, gate, T, H, C);
            var hidden = a.Hidden[l] = (float[])gate.Clone();
            if (llama)
            {
                var up = a.Up[l] = new float[T * H];
                _linear.Forward(n2, w.W3!, [], up, T, H, C);
                Activations.SwiGlu(hidden, up);
            }
            else Activations.Gelu(hidden);
            var next = new float[T * C];
            _linear.Forward(hidden, w.W2, w.B2, next, T, C, H);
            System.Numerics.Tensors.TensorPrimitives.Add(next, x1, next);
            x = next;
        }
        a.Final = x;
        a.FinalNormed = NormalizeRows(x, Weights.FinalNorm, Weights.FinalNormBias, T);
        a.Logits = new float[T * V];
        _linear.Forward(a.FinalNormed, Weights.Output ?? Weights.TokenEmbedding, [], a.Logits, T, V, C);
        return a;
    }

    private void Backward(SavedActivations a, float[] dlogits)
    {
        var c = Config;
        int T = a.Tokens.Length, C = c.Dim, H = c.HiddenDim, kv = c.KvDim, V = c.VocabSize;
        var dFinalNormed = new float[T * C];
        _linear.Backward(a.FinalNormed, Weights.Output ?? Weights.TokenEmbedding, dlogits, dFinalNormed,
            Gradients.Output ?? Gradients.TokenEmbedding, [], T, V, C);
        var dx = new float[T * C];                                                           // ∂L/∂(layer output)
        NormalizeRowsBackward(a.Final, Weights.FinalNorm, dFinalNormed, dx, Gradients.FinalNorm, Gradients.FinalNormBias, T);
        bool llama = c.Architecture == Architecture.Llama;
        for (int l = c.Layers - 1; l >= 0; l--)
        {
            LayerWeights w = Weights.Layers[l], g = Gradients.Layers[l];
            // x_out = x1 + W2·swiglu(W1·n2, W3·n2)   (GPT-2: W2·gelu(W1·n2 + b1) + b2)
            var dx1 = (float[])dx.Clone();
            var dHidden = new float[T * H];
            _linear.Backward(a.Hidden[l], w.W2, dx, dHidden, g.W2, g.B2, T, C, H);
            var dGate = new float[T * H];
            var dn2 = new float[T * C];
            if (llama)
            {
                var dUp = new float[T * H];
                Activations.SwiGluBackward(a.Gate[l], a.Up[l], dHidden, dGate, dUp);
                _linear.Backward(a.FfnNormed[l], w.W3!, dUp, dn2, g.W3!, [], T, H, C);
            }
            else Activations.GeluBackward(a.Gate[l], dHidden, dGate);
            _linear.Backward(a.FfnNormed[l], w.W1, dGate, dn2, g.W1, g.B1, T, H, C);
            NormalizeRowsBackward(a.Residual[l], w.FfnNorm, dn2, dx1, g.FfnNorm, g.FfnNormBias, T);
            // x1 = x_in + Wo·attention(rope(Wq·n1), rope(Wk·n1), Wv·n1)
            var dxIn = (float[])dx1.Clone();
            var dAtt = new float[T * C];
            _linear.Backward(a.Attention[l], w.Wo, dx1, dAtt, g.Wo, g.Bo, T, C, C);
            var dq = new float[T * C];
            var dk = new float[T * kv];
            var dv = new float[T * kv];
            for (int i = 0; i < a.Sequences.Length; i++)
            {
                var (o, n, _) = a.Sequences[i];
                CausalAttention.Backward(a.Q[l].AsSpan(o * C, n * C), a.K[l].AsSpan(o * kv, n * kv), a.V[l].AsSpan(o * kv, n * kv), a.Probs[l][i],
                    dAtt.AsSpan(o * C, n * C), dq.AsSpan(o * C, n * C), dk.AsSpan(o * kv, n * kv), dv.AsSpan(o * kv, n * kv), n, c.Heads, c.KvHeads, c.HeadDim);
            }
            for (int t = 0; t < T && llama; t++)
            {
                RotaryEmbedding.Backward(dq.AsSpan(t * C, C), a.Positions[t], c.Heads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
                RotaryEmbedding.Backward(dk.AsSpan(t * kv, kv), a.Positions[t], c.KvHeads, c.HeadDim, c.EffectiveRotaryDim, c.RopeTheta, c.RopeLayout);
            }
            var dn1 = new float[T * C];
            _linear.Backward(a.AttnNormed[l], w.Wq, dq, dn1, g.Wq, g.Bq, T, C, C);
            _linear.Backward(a.AttnNormed[l], w.Wk, dk, dn1, g.Wk, g.Bk, T, kv, C);
            _linear.Backward(a.AttnNormed[l], w.Wv, dv, dn1, g.Wv, g.Bv, T, kv, C);
            NormalizeRowsBackward(a.LayerInput[l], w.AttnNorm, dn1, dxIn, g.AttnNorm, g.AttnNormBias, T);
            dx = dxIn;
        }
        EmbeddingBackward.Backward(a.Tokens, dx, Gradients.TokenEmbedding, C);
        if (Gradients.PositionEmbedding is { } dPositions) EmbeddingBackward.Backward(a.Positions, dx, dPositions, C);
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
        for (int r = 0; r < rows; r++)
            if (bias is null) Norms.RmsNorm(x.AsSpan(r * C, C), weight, y.AsSpan(r * C, C), Config.NormEps);
            else Norms.LayerNorm(x.AsSpan(r * C, C), weight, bias, y.AsSpan(r * C, C), Config.NormEps);
        return y;
    }

    private void NormalizeRowsBackward(float[] x, float[] weight, float[] dy, float[] dx, float[] dWeight, float[]? dBias, int rows)
    {
        int C = Config.Dim;
        for (int r = 0; r < rows; r++)
            if (dBias is null) Norms.RmsNormBackward(x.AsSpan(r * C, C), weight, dy.AsSpan(r * C, C), dx.AsSpan(r * C, C), dWeight, Config.NormEps);
            else Norms.LayerNormBackward(x.AsSpan(r * C, C), weight, dy.AsSpan(r * C, C), dx.AsSpan(r * C, C), dWeight, dBias, Config.NormEps);
    }

    private static ModelWeights ZerosLike(ModelWeights w)
    {
        static float[] Z(float[] a) => new float[a.Length];
        static float[]? ZOpt(float[]? a) => a is null ? null : new float[a.Length];
        return new ModelWeights
        {
            TokenEmbedding = Z(w.TokenEmbedding),
            PositionEmbedding = ZOpt(w.PositionEmbedding),
            Layers = [.. w.Layers.Select(l => new LayerWeights
            {
                AttnNorm = Z(l.AttnNorm), AttnNormBias = ZOpt(l.AttnNormBias), Wq = Z(l.Wq), Wk = Z(l.Wk), Wv = Z(l.Wv), Wo = Z(l.Wo),
                Bq = ZOpt(l.Bq), Bk = ZOpt(l.Bk), Bv = ZOpt(l.Bv), Bo = ZOpt(l.Bo),
                FfnNorm = Z(l.FfnNorm), FfnNormBias = ZOpt(l.FfnNormBias), W1 = Z(l.W1), W2 = Z(l.W2), W3 = ZOpt(l.W3),
                B1 = ZOpt(l.B1), B2 = ZOpt(l.B2),
            })],
            FinalNorm = Z(w.FinalNorm),
            FinalNormBias = ZOpt(w.FinalNormBias),
            Output = ZOpt(w.Output),
        };
    }
}
