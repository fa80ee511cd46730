// One mixture-of-experts layer (MixtureOfExperts.Forward, as serving runs it) against a dense SwiGLU MLP with the same
// active parameters (hidden k·H), on the CPU device: mixtral-small's layer (C 512, 8 experts of H 768, 2 per token).
// The router's logits are set, so the routing is chosen: "uniform" spreads the tokens evenly over the experts, "hot"
// sends every token to experts 0 and 1 (the imbalance a router can fall into: 2 of 8 experts do all the work).
//   dotnet run -c Release --project bench/Cluster.Bench -- moe --threads 1,2 --tokens 1,8,64,512
using System.Diagnostics;
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Model;

namespace Cluster.Bench;

public static class MoeBench
{
    public static void Run(int[] threadCounts, int[] tokenCounts)
    {
        var config = RandomModel.Preset("mixtral-small");
        var moe = config.Moe!;
        int C = config.Dim, H = config.HiddenDim, E = moe.Experts, k = moe.ExpertsPerToken;
        Console.WriteLine($"one layer's MLP, C {C}: MoE of {E} experts (H {H}, {k} per token) vs a dense SwiGLU of H {k * H}; best of 10 runs");
        Console.WriteLine();
        Console.WriteLine("| threads | tokens | dense ms | MoE uniform ms | MoE hot ms | uniform / dense | hot / uniform |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
        var random = new Random(1);
        float[] Noise(int n) => [.. Enumerable.Range(0, n).Select(_ => (random.NextSingle() * 2 - 1) * 0.03f)];
        float[] w1 = Noise(E * H * C), w2 = Noise(E * C * H), w3 = Noise(E * H * C);
        float[] d1 = Noise(k * H * C), d2 = Noise(C * k * H), d3 = Noise(k * H * C);
        foreach (int threads in threadCounts)
        {
            using var device = new CpuDevice(threads);
            DeviceMatrix[] Experts(float[] stack, int rows, int cols) =>
                [.. Enumerable.Range(0, E).Select(e => device.UploadMatrix(stack.AsSpan(e * rows * cols, rows * cols), rows, cols))];
            var experts = new Dictionary<LayerProjection, DeviceMatrix[]>
            {
                [LayerProjection.W1] = Experts(w1, H, C), [LayerProjection.W2] = Experts(w2, C, H), [LayerProjection.W3] = Experts(w3, H, C),
            };
            using DeviceMatrix dense1 = device.UploadMatrix(d1, k * H, C), dense2 = device.UploadMatrix(d2, C, k * H), dense3 = device.UploadMatrix(d3, k * H, C);
            foreach (int T in tokenCounts)
            {
                using DeviceBuffer x = device.Upload(Noise(T * C)), output = device.Allocate(T * C),
                    gate = device.Allocate(T * k * H), up = device.Allocate(T * k * H);
                double dense = Best(() =>
                {
                    device.MatMul(x, dense1, gate, T);
                    device.MatMul(x, dense3, up, T);
                    device.SwiGlu(gate, up, T * k * H);
                    device.MatMul(gate, dense2, output, T);
                });
                double Moe(Func<int, int, float> logit)
                {
                    using var pass = new BenchPass(device, experts, [.. Enumerable.Range(0, T * E).Select(i => logit(i / E, i % E))], T, C, H, E);
                    var shape = new DecoderShape(config, config.Heads, config.KvHeads, H, 0, E);
                    return Best(() => MixtureOfExperts.Forward(device, pass, shape, x, output, T));
                }
                double uniform = Moe((t, e) => (e - 2 * t % E + E) % E == 0 ? 2 : (e - 2 * t % E + E) % E == 1 ? 1 : 0);   // token t: experts 2t and 2t + 1 (mod E)
                double hot = Moe((t, e) => e == 0 ? 2 : e == 1 ? 1 : 0);
                Console.WriteLine($"| {threads} | {T} | {dense:F3} | {uniform:F3} | {hot:F3} | {uniform / dense:F2} | {hot / uniform:F2} |");
            }
            foreach (var matrix in experts.Values.SelectMany(m => m)) matrix.Dispose();
        }
    }

    private static double Best(Action run)
    {
        run();   // warm-up
        double best = double.MaxValue;
        for (int i = 0; i < 10; i++)
        {
            var clock = Stopwatch.StartNew();
            run();
            best = Math.Min(best, clock.Elapsed.TotalMilliseconds);
        }
        return best;
    }

    /// <summary>An MoE layer's pass with set router logits, experts prepared as serving's, activations in scratch buffers.</summary>
    private sealed class BenchPass(IDevice device, Dictionary<LayerProjection, DeviceMatrix[]> experts, float[] logits, int tokens, int dim, int hidden, int expertCount)
        : ILayerPass, IDisposable
    {
        private readonly DeviceBuffer _logits = device.Allocate(tokens * expertCount), _input = device.Allocate(tokens * dim),
            _output = device.Allocate(tokens * dim), _hidden = device.Allocate(tokens * hidden), _up = device.Allocate(tokens * hidden),
            _scales = device.Allocate(tokens);

        public DeviceBuffer? Vector(LayerVector which) => throw new NotSupportedException();

        public void Project(LayerProjection which, DeviceBuffer x, DeviceBuffer y, int count) =>
            device.Write(y, which == LayerProjection.Router ? logits : throw new NotSupportedException());   // the routing this run wants

        public DeviceBuffer Activation(LayerActivation which, int length) =>
            which == LayerActivation.RouterLogits ? _logits : throw new NotSupportedException();

        public void Attend(DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output) => throw new NotSupportedException();

        public void ProjectExpert(LayerProjection which, int block, DeviceBuffer x, DeviceBuffer y, int count) => device.MatMul(x, experts[which][block], y, count);

        public DeviceBuffer ExpertActivation(ExpertActivation which, int expert, int length) => which switch
        {
            Model.ExpertActivation.Input => _input,
            Model.ExpertActivation.Gate or Model.ExpertActivation.Hidden => _hidden,
            Model.ExpertActivation.Up => _up,
            Model.ExpertActivation.Output or Model.ExpertActivation.Weighted => _output,
            _ => _scales,
        };

        public void Routed(MoeRouting routing) { }

        public void Dispose()
        {
            foreach (var buffer in new[] { _logits, _input, _output, _hidden, _up, _scales }) buffer.Dispose();
        }
    }
}
