// The FMA ceiling measured in the same run: 12 independent AVX-512 FMA chains in registers, no memory, on
// each thread. The GEMM table reports its share of this as well as of the nominal 265 GFLOP/s per core,
// because a VM's clocks under sustained AVX-512 load decide what is reachable on the day.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Cluster.Bench;

public static class FmaCeiling
{
    /// <summary>GFLOP/s of <paramref name="threads"/> threads each running register-only FMAs for ~0.5 s.</summary>
    public static double Measure(int threads)
    {
        const long iterations = 100_000_000;
        Chains(1000);
        var clock = Stopwatch.StartNew();
        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, _ => Chains(iterations));
        return threads * iterations * 12 * 32 / clock.Elapsed.TotalSeconds / 1e9;   // 12 FMAs × 16 lanes × 2 flops
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float Chains(long iterations)
    {
        var a = Vector512.Create(1e-7f);
        var b = Vector512.Create(0.9999999f);
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        Vector512<float> c6 = default, c7 = default, c8 = default, c9 = default, c10 = default, c11 = default;
        for (long i = 0; i < iterations; i++)
        {
            c0 = Vector512.FusedMultiplyAdd(a, b, c0); c1 = Vector512.FusedMultiplyAdd(a, b, c1);
            c2 = Vector512.FusedMultiplyAdd(a, b, c2); c3 = Vector512.FusedMultiplyAdd(a, b, c3);
            c4 = Vector512.FusedMultiplyAdd(a, b, c4); c5 = Vector512.FusedMultiplyAdd(a, b, c5);
            c6 = Vector512.FusedMultiplyAdd(a, b, c6); c7 = Vector512.FusedMultiplyAdd(a, b, c7);
            c8 = Vector512.FusedMultiplyAdd(a, b, c8); c9 = Vector512.FusedMultiplyAdd(a, b, c9);
            c10 = Vector512.FusedMultiplyAdd(a, b, c10); c11 = Vector512.FusedMultiplyAdd(a, b, c11);
        }
        return Vector512.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
    }
}
