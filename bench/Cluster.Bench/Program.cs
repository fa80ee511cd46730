// cluster-bench: the engine's benchmarks, printed as Markdown tables for the README.
// Run from the repository root: bash bench/run.sh (or dotnet run -c Release --project bench/Cluster.Bench -- gemm)
using Cluster.Bench;

string command = args.FirstOrDefault() ?? "help";
int[] threads = Option(args, "--threads")?.Split(',').Select(int.Parse).ToArray() ?? [1, 2];
double peakPerCore = double.Parse(Option(args, "--peak-per-core") ?? "265", System.Globalization.CultureInfo.InvariantCulture);
switch (command)
{
    case "gemm":
        GemmBench.Run(threads, peakPerCore);
        return 0;
    case "model":
        ModelBench.Run((Option(args, "--presets") ?? "stories15M,stories110M").Split(','), threads,
            int.Parse(Option(args, "--prompt") ?? "128"), int.Parse(Option(args, "--decode") ?? "128"),
            withLlamaCpp: !args.Contains("--no-llamacpp"));
        return 0;
    default:
        Console.WriteLine("""
            usage: cluster-bench gemm  [--threads 1,2] [--peak-per-core 265]
                   cluster-bench model [--threads 1,2] [--presets stories15M,stories110M] [--prompt 128] [--decode 128] [--no-llamacpp]
            run from the repository root; bench/run.sh installs llama.cpp (npm) and runs everything
            """);
        return command == "help" ? 0 : 2;
}

static string? Option(string[] args, string name)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}
