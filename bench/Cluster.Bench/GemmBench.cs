// GEMM throughput: y (M, N) = x (M, K) · Wᵀ on the CPU device, as GFLOP/s and as a share of the machine's
// measured FP32 peak (265 GFLOP/s per Zen 5 core by default; --peak-per-core for other machines).
using System.Diagnostics;
using Cluster.Compute.Cpu;

namespace Cluster.Bench;

public static class GemmBench
{
    public static readonly (int M, int N, int K)[] Shapes = [(1, 2048, 768), (128, 768, 768), (512, 2048, 768), (1024, 1024, 1024)];

    public static void Run(int[] threadCounts, double peakPerCore, (int M, int N, int K)[] shapes)
    {
        var ceiling = threadCounts.ToDictionary(t => t, FmaCeiling.MeasureGflops);
        foreach (int threads in threadCounts)
            Console.WriteLine($"FMA ceiling measured now, {threads} thread(s): {ceiling[threads]:F1} GFLOP/s");
        Console.WriteLine();
        Console.WriteLine($"| M | N | K | threads | GFLOP/s | % of {peakPerCore:F0}/core peak | % of measured FMA ceiling |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var (m, n, k) in shapes)
            foreach (int threads in threadCounts)
            {
                double gflops = Measure(m, n, k, threads);
                Console.WriteLine($"| {m} | {n} | {k} | {threads} | {gflops:F1} | {100 * gflops / (peakPerCore * threads):F1}% | {100 * gflops / ceiling[threads]:F1}% |");
            }
    }

    /// <summary>Best of 5 trials: each trial repeats the GEMM for ~0.3 s; the fastest trial counts.</summary>
    private static double Measure(int m, int n, int k, int threads)
    {
        using var device = new CpuDevice(threads);
        var rng = new Random(1);
        var x = new float[m * k];
        var w = new float[n * k];
        for (int i = 0; i < x.Length; i++) x[i] = (float)rng.NextDouble() - 0.5f;
        for (int i = 0; i < w.Length; i++) w[i] = (float)rng.NextDouble() - 0.5f;
        using var xb = device.Upload(x);
        using var wm = device.UploadMatrix(w, n, k);
        using var yb = device.Allocate(m * n);
        double flops = 2.0 * m * n * k;
        int reps = Math.Max(1, (int)(0.3e9 * threads / flops * 100));   // ~0.3 s at 100 GFLOP/s per thread
        for (int i = 0; i < Math.Max(3, reps / 10); i++) device.MatMul(xb, wm, yb, m);   // warm up caches and the JIT
        double best = double.MaxValue;
        for (int trial = 0; trial < 5; trial++)
        {
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < reps; i++) device.MatMul(xb, wm, yb, m);
            best = Math.Min(best, clock.Elapsed.TotalSeconds / reps);
        }
        return flops / best / 1e9;
    }
}
