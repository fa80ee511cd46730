// cluster-bench: the engine's benchmarks, printed as Markdown tables for the README.
// Run from the repository root: bash bench/run.sh (or dotnet run -c Release --project bench/Cluster.Bench -- gemm)
// Commands: gemm, model, moe, training, tokenizer (single process); transport, collectives, serving, soak (in-process Orleans clusters);
// load (HTTP against a running OpenAI-compatible server, or an in-process one).
using Cluster.Bench;

string command = args.FirstOrDefault() ?? "help";
int[] threads = Option(args, "--threads")?.Split(',').Select(int.Parse).ToArray() ?? [1, 2];
double peakPerCore = double.Parse(Option(args, "--peak-per-core") ?? "265", System.Globalization.CultureInfo.InvariantCulture);
switch (command)
{
    case "gemm":
        GemmBench.Run(threads, peakPerCore, Option(args, "--shapes") is { } shapes
            ? [.. shapes.Split(',').Select(shape => shape.Split('x').Select(int.Parse).ToArray()).Select(d => (d[0], d[1], d[2]))]
            : GemmBench.Shapes);
        return 0;
    case "model":
        ModelBench.Run((Option(args, "--presets") ?? "stories15M,stories110M").Split(','), threads,
            int.Parse(Option(args, "--prompt") ?? "128"), int.Parse(Option(args, "--decode") ?? "128"),
            withLlamaCpp: !args.Contains("--no-llamacpp"), batches: Ints(Option(args, "--batch")) ?? [],
            formats: [.. (Option(args, "--weights") ?? "f32").Split(',').Select(Cluster.Compute.WeightFormats.Parse)], writeGguf: args.Contains("--write-gguf"),
            kvFormat: Cluster.Compute.KvFormats.Parse(Option(args, "--kv-cache") ?? "f32"));
        return 0;
    case "moe":
        MoeBench.Run(threads, Ints(Option(args, "--tokens")) ?? [1, 8, 64, 512]);
        return 0;
    case "tokenizer":
        TokenizerBench.Run(int.Parse(Option(args, "--reference-max") ?? "16384"));
        return 0;
    case "transport":
        await TransportBench.Run([64 << 10, 1 << 20, 16 << 20], [64 << 10, 256 << 10, (1 << 20) - (1 << 10)], minSeconds: 0.5, minBytes: 64L << 20);
        return 0;
    case "collectives":
        await CollectivesBench.Run(Ints(Option(args, "--sizes")) ?? [1, 4, 16, 64], Ints(Option(args, "--members")) ?? [2, 3, 4]);
        return 0;
    case "serving":
        await ServingBench.Run(Option(args, "--preset") ?? "stories15M");
        return 0;
    case "load":
        await LoadBench.Run(Option(args, "--url"), Option(args, "--model") ?? "default", Ints(Option(args, "--concurrency")) ?? [1, 8, 32],
            int.Parse(Option(args, "--requests") ?? "64"), int.Parse(Option(args, "--prompt-tokens") ?? "32"), int.Parse(Option(args, "--max-tokens") ?? "64"));
        return 0;
    case "soak":
        await SoakBench.Run(double.Parse(Option(args, "--minutes") ?? "10", System.Globalization.CultureInfo.InvariantCulture),
            int.Parse(Option(args, "--concurrency") ?? "32"));
        return 0;
    case "training":
        TrainingBench.Run((Option(args, "--presets") ?? "stories15M").Split(','), threads,
            (Option(args, "--layouts") ?? "pp=2;dp=2;tp=2;pp=2,dp=2").Split(';', StringSplitOptions.RemoveEmptyEntries),
            int.Parse(Option(args, "--batch") ?? "4"), int.Parse(Option(args, "--seq") ?? "128"), int.Parse(Option(args, "--steps") ?? "5"), peakPerCore);
        return 0;
    default:
        Console.WriteLine("""
            usage: cluster-bench gemm  [--threads 1,2] [--peak-per-core 265] [--shapes 1x2048x768,128x768x768 (MxNxK)]
                   cluster-bench model [--threads 1,2] [--presets stories15M,stories110M] [--prompt 128] [--decode 128] [--no-llamacpp] [--batch 1,8,32] [--weights f32,q8_0,q4_0] [--write-gguf] [--kv-cache f32|f16|int8]
                   cluster-bench load [--url URL --model ID] [--concurrency 1,8,32] [--requests 64] [--prompt-tokens 32] [--max-tokens 64]
                   cluster-bench transport                                        (grain calls and memory streams, MB/s, same vs cross silo)
                   cluster-bench collectives [--sizes 1,4,16,64] [--members 2,3,4]  (all-reduce / all-to-all bus GB/s, in process vs across silos)
                   cluster-bench serving [--preset stories15M]                    (continuous batching and sharding layouts, tokens/s; an MoE preset: ep=2 for tp=2)
                   cluster-bench training [--threads 1,2] [--presets stories15M] [--layouts "pp=2;dp=2;tp=2;pp=2,dp=2"] [--batch 4] [--seq 128] [--steps 5]
                                                                                  (training tokens/s and MFU, one shard and per layout)
                   cluster-bench moe [--threads 1,2] [--tokens 1,8,64,512]         (an MoE layer vs a dense MLP of the same active parameters; uniform vs hot routing)
                   cluster-bench soak [--minutes 10] [--concurrency 32]           (completions, hostile and abandoned requests through the gateway over HTTP)
                   cluster-bench tokenizer [--reference-max 16384]                (encode ms for 4 K..1 M chars, beside the O(n²) reference up to that size)
            run from the repository root; bench/run.sh installs llama.cpp (npm) and runs everything
            """);
        return command == "help" ? 0 : 2;
}

static int[]? Ints(string? list) => list?.Split(',').Select(int.Parse).ToArray();

static string? Option(string[] args, string name)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}
