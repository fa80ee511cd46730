// The PyTorch peer of `cluster-bench training`: libtorch (TorchSharp) trains the same Llama shape (a preset of
// RandomModel: RMSNorm, rotary attention, SwiGLU, tied head) on the same random full-length sequences, batch and step
// (forward, backward, clipping at norm 1, AdamW with the trainer's betas, eps and weight decay), fp32 on the CPU, and
// prints a table row: step ms and tokens/s, mean of --steps steps after a warm-up, and the warm-up step's loss.
// Run: bash bench/training-vs-torch.sh (libtorch 2.10 needs glibc 2.38 and GCC 13's libstdc++, which the script provides).
// Or: torch-peer --threads 1 [--preset stories15M] [--batch 4] [--seq 128] [--steps 5]
using System.Diagnostics;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

string Option(string name, string fallback) => Array.IndexOf(args, name) is int i and >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
int threads = int.Parse(Option("--threads", "1")), batch = int.Parse(Option("--batch", "4")), seq = int.Parse(Option("--seq", "128"));
int steps = int.Parse(Option("--steps", "5"));
string preset = Option("--preset", "stories15M");
// The shapes of RandomModel's Llama presets: (dim, hidden, layers, heads, vocab).
var (dim, hidden, layers, heads, vocab) = preset switch
{
    "stories15M" => (288, 768, 6, 6, 32000),
    "stories110M" => (768, 2048, 12, 12, 32000),
    _ => throw new ArgumentException($"unknown preset '{preset}' (stories15M, stories110M)"),
};
torch.set_num_threads(threads);
torch.manual_seed(1);

var model = new Llama(dim, hidden, layers, heads, vocab, seq);
var optimizer = torch.optim.AdamW(model.Parameters, lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1);
var random = new Random(2);
(Tensor Inputs, Tensor Targets) Batch()
{
    var tokens = new long[batch * (seq + 1)];
    for (int i = 0; i < tokens.Length; i++) tokens[i] = random.Next(vocab);
    var all = torch.tensor(tokens).view(batch, seq + 1);
    return (all[.., ..seq].contiguous(), all[.., 1..].contiguous());   // (B, T) each
}

double Step((Tensor Inputs, Tensor Targets) b)
{
    using var scope = torch.NewDisposeScope();
    var logits = model.Forward(b.Inputs);   // (B, T, V)
    var loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), b.Targets.view(-1));
    optimizer.zero_grad();
    loss.backward();
    torch.nn.utils.clip_grad_norm_(model.Parameters, 1.0);
    optimizer.step();
    return loss.item<float>();
}

double warmUpLoss = Step(Batch());   // about ln(V) for random weights and tokens: the peer computes what it should
var batches = Enumerable.Range(0, steps).Select(_ => Batch()).ToArray();
var clock = Stopwatch.StartNew();
foreach (var b in batches) Step(b);
double seconds = clock.Elapsed.TotalSeconds / steps;
long parameters = model.Parameters.Sum(p => p.numel());
Console.WriteLine($"| {preset} ({parameters / 1e6:F1}M) | PyTorch (libtorch {torch.__version__}, TorchSharp) | {threads} | {seconds * 1000:F0} | {batch * seq / seconds:F0} | {warmUpLoss:F3} |");

/// <summary>Llama with a tied head, as plain tensors: (B, T) token ids → (B, T, V) logits.</summary>
sealed class Llama
{
    private readonly int _heads, _headDim;
    private readonly Parameter _embedding, _finalNorm;   // (V, C), (C)
    private readonly Layer[] _layers;
    private readonly Tensor _cos, _sin;                  // (T, D/2)

    private sealed record Layer(Parameter AttentionNorm, Parameter Wq, Parameter Wk, Parameter Wv, Parameter Wo,
        Parameter FfnNorm, Parameter W1, Parameter W2, Parameter W3);

    public List<Parameter> Parameters { get; } = [];

    public Llama(int dim, int hidden, int layers, int heads, int vocab, int maxSeq)
    {
        _heads = heads;
        _headDim = dim / heads;
        Parameter Weight(params long[] shape) => Keep(new Parameter(torch.randn(shape) * 0.02f));
        Parameter Ones(long n) => Keep(new Parameter(torch.ones(n)));
        _embedding = Weight(vocab, dim);
        _layers = [.. Enumerable.Range(0, layers).Select(_ => new Layer(Ones(dim), Weight(dim, dim), Weight(dim, dim), Weight(dim, dim), Weight(dim, dim),
            Ones(dim), Weight(hidden, dim), Weight(dim, hidden), Weight(hidden, dim)))];
        _finalNorm = Ones(dim);
        var frequencies = torch.pow(10000f, -torch.arange(0, _headDim, 2, dtype: ScalarType.Float32) / _headDim);   // (D/2)
        var angles = torch.outer(torch.arange(maxSeq, dtype: ScalarType.Float32), frequencies);                     // (T, D/2)
        (_cos, _sin) = (angles.cos(), angles.sin());
    }

    private Parameter Keep(Parameter p)
    {
        Parameters.Add(p);
        return p;
    }

    private static Tensor RmsNorm(Tensor x, Tensor weight) => x * torch.rsqrt(x.pow(2).mean([-1], keepdim: true) + 1e-5f) * weight;

    /// <summary>Rotates each (even, odd) pair of every head by its position, as llama2.c does. x: (B, H, T, D).</summary>
    private Tensor Rope(Tensor x, long t)
    {
        var pairs = x.view(x.shape[0], x.shape[1], t, _headDim / 2, 2);
        var (even, odd) = (pairs[.., .., .., .., 0], pairs[.., .., .., .., 1]);   // (B, H, T, D/2)
        var (cos, sin) = (_cos[..(int)t], _sin[..(int)t]);
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim: -1).view(x.shape);
    }

    public Tensor Forward(Tensor tokens)
    {
        long b = tokens.shape[0], t = tokens.shape[1];
        var x = _embedding.index_select(0, tokens.view(-1)).view(b, t, -1);   // (B, T, C)
        foreach (var l in _layers)
        {
            var h = RmsNorm(x, l.AttentionNorm);
            Tensor Heads(Tensor w) => torch.nn.functional.linear(h, w).view(b, t, _heads, _headDim).transpose(1, 2);   // (B, H, T, D)
            var attention = torch.nn.functional.scaled_dot_product_attention(Rope(Heads(l.Wq), t), Rope(Heads(l.Wk), t), Heads(l.Wv), is_casual: true);
            x = x + torch.nn.functional.linear(attention.transpose(1, 2).reshape(b, t, -1), l.Wo);
            h = RmsNorm(x, l.FfnNorm);
            x = x + torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(h, l.W1)) * torch.nn.functional.linear(h, l.W3), l.W2);
        }
        return torch.nn.functional.linear(RmsNorm(x, _finalNorm), _embedding);   // (B, T, V), the head tied to the embedding
    }
}
