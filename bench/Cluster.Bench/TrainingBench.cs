// Training throughput: tokens/s of full fp32 training steps (forward, backward, AdamW) of seeded random models, and
// model FLOP utilisation, MFU = 6·N·tokens/s over the machine's peak (N = the model's parameters, the head counted
// once when tied; the attention's own FLOPs are left out, as in the usual estimate): the nominal peak per core
// (--peak-per-core) and the FMA ceiling measured in the same run; and the managed memory a step allocates. First one shard at each thread
// count, then each layout with the threads split over its shards (LocalTrainingRun: every shard on its own thread,
// in-process transports), all in one process, random full-length sequences, after a warm-up step.
using System.Diagnostics;
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Training;

namespace Cluster.Bench;

public static class TrainingBench
{
    public static void Run(string[] presets, int[] threadCounts, string[] layouts, int batch, int sequenceLength, int steps, double peakPerCore)
    {
        Console.WriteLine($"batch {batch} × {sequenceLength} tokens a step, mean of {steps} steps after a warm-up; MFU against {peakPerCore:F0} GFLOP/s per core");
        Console.WriteLine();
        double ceilingPerCore = Cluster.Compute.Cpu.FmaCeiling.FlopsPerCore;
        Console.WriteLine($"FMA ceiling measured now: {ceilingPerCore / 1e9:F1} GFLOP/s per core");
        Console.WriteLine();
        Console.WriteLine("| model | layout | threads | micro-batches | step ms | tokens/s | MFU | MFU of the measured ceiling | MB allocated per step |");
        Console.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (string preset in presets)
        {
            var loaded = RandomModel.Create(preset, seed: 1);
            var c = loaded.Config;
            long parameters = c.ParameterCount;
            var rng = new Random(2);
            TrainingSequence[] Batch() => [.. Enumerable.Range(0, batch).Select(_ =>
            {
                int[] tokens = [.. Enumerable.Range(0, sequenceLength + 1).Select(_ => rng.Next(c.VocabSize))];
                return new TrainingSequence(tokens[..^1], tokens[1..]);
            })];
            var runs = threadCounts.Select(t => ("tp=1", t)).Concat(layouts.Select(l => (l, threadCounts.Max())));
            foreach (var (layoutText, threads) in runs)
            {
                var layout = ParallelLayout.Parse(layoutText);
                int shards = layout.DataParallel * layout.PipelineStages * layout.TensorParallel;
                int microBatches = layout.PipelineStages > 1 ? Math.Min(2 * layout.PipelineStages, batch / layout.DataParallel) : 1;
                using var run = LocalTrainingRun.Create(c, loaded.Weights, layout, new OptimizerOptions { TotalSteps = steps + 1 }, threads: Math.Max(1, threads / shards));
                run.TrainStep(Batch(), microBatches);   // warm-up: packs, allocations, JIT
                var batches = Enumerable.Range(0, steps).Select(_ => Batch()).ToArray();   // made before the clock and the allocation count
                long allocated = GC.GetTotalAllocatedBytes(precise: true);
                var clock = Stopwatch.StartNew();
                foreach (var stepBatch in batches) run.TrainStep(stepBatch, microBatches);
                double seconds = clock.Elapsed.TotalSeconds / steps;
                double megabytes = (GC.GetTotalAllocatedBytes(precise: true) - allocated) / 1e6 / steps;
                double tokensPerSecond = batch * sequenceLength / seconds;
                double mfu = 6.0 * parameters * tokensPerSecond / (peakPerCore * 1e9 * threads);
                Console.WriteLine($"| {preset} ({parameters / 1e6:F1}M) | {layout} | {threads} | {microBatches} | {seconds * 1000:F0} | {tokensPerSecond:F0} | {mfu:P1} | {6.0 * parameters * tokensPerSecond / (ceilingPerCore * threads):P1} | {megabytes:F0} |");
            }
        }
    }
}
