// `cluster`: the command-line tool. Run: dotnet run -c Release --project src/Cli -- generate --model M --prompt "Once upon a time"
using System.Diagnostics;
using Cluster.Cli;
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using Cluster.Model.Tokenizers;
using Spectre.Console;

try
{
    return args.FirstOrDefault() switch
    {
        "generate" => Generate(new Arguments(args[1..])),
        "make-model" => MakeModel(new Arguments(args[1..])),
        "quantize" => Quantize(new Arguments(args[1..])),
        "train" => TrainCommand.Run(new Arguments(args[1..])),
        null or "help" or "--help" or "-h" => Usage(0),
        _ => Usage(2, $"unknown command '{args[0]}'"),
    };
}
catch (Exception e) when (e is ArgumentException or FormatException or ModelFormatException or FileNotFoundException or DirectoryNotFoundException or InvalidOperationException or NotSupportedException)
{
    AnsiConsole.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
    return 1;
}

static int Usage(int code, string? problem = null)
{
    if (problem is not null) AnsiConsole.MarkupLineInterpolated($"[red]error:[/] {problem}");
    Console.WriteLine("""
        usage: cluster generate [--model PATH | --preset NAME] [--tokenizer PATH] [--prompt TEXT] [--steps N]
                                [--temperature T] [--topp P] [--topk K] [--seed S] [--threads N] [--adapter DIR]
                                [--device D] [--layout L] [--weights F] [--kv-cache K]
          --model        llama2.c checkpoint, GGUF file, or safetensors file/directory (with config.json)
          --adapter      a PEFT LoRA adapter directory, merged into the model's weights
          --preset       without --model: a seeded random model of that shape (default stories15M)
          --tokenizer    llama2.c tokenizer.bin or HF tokenizer.json (GGUF carries its own)
          --steps        new tokens to generate (default 256)
          --temperature  0 = greedy (default 1.0); --topp nucleus mass (default 0.9, 0 = off);
          --topk         keep the k most likely (default 0 = off); --seed for the sampler (default: time)
          --threads      CPU threads (default: all cores)
          --device       cpu (default), cuda, opencl, or ilgpu-cpu (ILGPU's CPU accelerator: slow, for checking)
          --layout       run the model cut into a layout's shards in this process (tp, ep, pp, layers; e.g. tp=2,pp=2),
                         each shard on its own device with --threads divided among them: the same tokens as one shard
          --weights      f32, q8_0 or q4_0: how the weight matrices are kept and multiplied (default: as the file keeps
                         them: a GGUF of Q8_0 or Q4_0 layers in that format, of K-quants in q8_0, anything else f32)
          --kv-cache     f32 (default), f16 or int8 (a scale per token and KV head): how keys and values are cached
               cluster quantize --model PATH [--tokenizer PATH] --out OUT.gguf --type q8_0|q4_0|f16
          writes the model as GGUF with its matrices in that type (llama.cpp reads it; rows not of whole blocks stay f32)
               cluster make-model --preset NAME --out PATH [--format gguf|safetensors|llama2c] [--seed N]
          writes a seeded random model (presets: tiny, adder, stories15M, stories110M, gpt2-tiny, storyteller, moe-tiny,
          qwen-moe-tiny, mixtral-small); llama2c also writes PATH.tokenizer.bin, GGUF embeds the vocabulary, safetensors
          writes the directory PATH (model.safetensors, config.json, tokenizer.json)
        """ + "\n" + TrainCommand.Usage);
    return code;
}

static int MakeModel(Arguments a)
{
    string preset = a.Required("preset"), output = a.Required("out"), format = a.Optional("format") ?? "gguf";
    int seed = a.Int("seed", 1, min: 0);
    a.RejectUnknown();
    var model = RandomModel.Create(preset, seed);
    switch (format)
    {
        case "gguf":
            Cluster.Model.Formats.GgufWriter.Write(model, output, name: preset);
            break;
        case "safetensors":
            Cluster.Model.Formats.SafetensorsWriter.Write(model, output);
            break;
        case "llama2c":
            Cluster.Model.Formats.Llama2cFormat.Write(model, output);
            ((Cluster.Model.Tokenizers.SentencePieceBpeTokenizer)model.Tokenizer!).WriteLlama2c(output + ".tokenizer.bin");
            break;
        default:
            throw new ArgumentException($"--format must be gguf, safetensors or llama2c, got '{format}'");
    }
    AnsiConsole.MarkupLineInterpolated($"wrote {output} ({SizeOnDisk(output) / 1e6:F1} MB, {preset}, seed {seed})");
    return 0;
}

static int Quantize(Arguments a)
{
    string input = a.Required("model"), output = a.Required("out"), type = a.Required("type");
    string? tokenizerPath = a.Optional("tokenizer");
    a.RejectUnknown();
    var matrixType = type.ToLowerInvariant() switch
    {
        "q8_0" => TensorType.Q8_0,
        "q4_0" => TensorType.Q4_0,
        "f16" => TensorType.F16,
        _ => throw new ArgumentException($"--type must be q8_0, q4_0 or f16, got '{type}'"),
    };
    if (!output.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)) throw new ArgumentException($"--out must name a .gguf file, got '{output}'");
    var model = ModelLoader.Load(input, tokenizerPath);
    if (model.Tokenizer is null) throw new ArgumentException($"{input} carries no tokenizer: pass --tokenizer (the GGUF file embeds it)");
    if (GgufWriter.CannotWrite(model.Config) is { } reason) throw new ArgumentException(reason);
    GgufWriter.Write(model, output, matrixType, Path.GetFileNameWithoutExtension(output));
    AnsiConsole.MarkupLineInterpolated($"wrote {output} ({SizeOnDisk(output) / 1e6:F1} MB, {type.ToLowerInvariant()}; the input {SizeOnDisk(input) / 1e6:F1} MB)");
    return 0;
}

/// <summary>Bytes of a model file, or of the files of a model directory (safetensors).</summary>
static long SizeOnDisk(string path) => Directory.Exists(path) ? new DirectoryInfo(path).EnumerateFiles().Sum(f => f.Length) : new FileInfo(path).Length;

static int Generate(Arguments a)
{
    string? modelPath = a.Optional("model");
    string preset = a.Optional("preset") ?? "stories15M";
    string? tokenizerPath = a.Optional("tokenizer");
    string prompt = a.Optional("prompt") ?? "";
    int steps = a.Int("steps", 256, min: 0);
    var sampling = new SamplingOptions(
        Temperature: a.Float("temperature", 1f), TopP: a.Float("topp", 0.9f), TopK: a.Int("topk", 0, min: 0),
        Seed: a.Optional("seed") is { } s ? (ulong.TryParse(s, out ulong seed) ? seed : throw new ArgumentException($"--seed must be a positive integer, got '{s}'")) : (ulong)Stopwatch.GetTimestamp());
    sampling.Validate();
    int threads = a.Int("threads", Environment.ProcessorCount, min: 1);
    var deviceSpec = a.Device("device", DeviceSpec.Cpu);
    string? adapter = a.Optional("adapter");
    var layout = ParallelLayout.Parse(a.Optional("layout"));
    if (layout.DataParallel > 1) throw new ArgumentException($"--layout {layout}: generate runs one replica (no dp)");
    string? weightsFormat = a.Optional("weights");
    if (weightsFormat is not null) WeightFormats.Parse(weightsFormat);   // a bad name fails before the model loads
    var kvFormat = KvFormats.Parse(a.Optional("kv-cache") ?? "f32");
    a.RejectUnknown();

    ITokenizer? tokenizer = null;
    ILocalModel? model = null;
    IDevice? device = null;
    string where = "";
    var load = Stopwatch.StartNew();
    AnsiConsole.Status().Start(modelPath is null ? $"Making random {preset}" : $"Loading {Path.GetFileName(modelPath)}", ctx =>
    {
        var read = modelPath is null ? RandomModel.Create(preset) : ModelLoader.Load(modelPath, tokenizerPath);
        if (adapter is not null) PeftAdapter.Merge(read.Weights, read.Config, adapter);
        tokenizer = read.Tokenizer ?? throw new ArgumentException($"{modelPath} carries no tokenizer: pass --tokenizer");
        if (layout == ParallelLayout.Single)
        {
            device = deviceSpec.Open(threads);
            where = device.Info.Name;
            ctx.Status($"Packing {read.Config.Layers} layers for {where}");
            var whole = ShardWeights.Slice(read.Config, read.Weights, ShardSpec.Whole(read.Config));
            Array.Clear(read.Weights.Layers);   // the slice holds the layers now, and lets each go once it is packed: loading peaks near one copy
            model = new TransformerModel(device, read.Config, whole, releaseHostWeights: true, read.ServingFormat(weightsFormat), kvFormat);
        }
        else
        {
            int shards = layout.PipelineStages * layout.StageRanks, shardThreads = Math.Max(1, threads / shards);
            where = $"{shards} shards ({layout}), each on {deviceSpec} with {shardThreads} thread(s)";
            ctx.Status($"Cutting {read.Config.Layers} layers into {where}");
            const int blockSize = 16;
            model = new LocalPipeline(read.Config, read.Weights, layout, () => deviceSpec.Open(shardThreads),
                kvBlocks: (read.Config.MaxSeqLen + blockSize - 1) / blockSize, blockSize, read.ServingFormat(weightsFormat), kvFormat);
        }
    });
    if (modelPath is null) AnsiConsole.MarkupLine("[yellow]random weights (no --model given): the text is noise; the speed is real[/]");
    var c = model!.Config;
    AnsiConsole.MarkupLineInterpolated($"[grey]{c.Architecture} dim {c.Dim} hidden {c.HiddenDim} layers {c.Layers} heads {c.Heads}/{c.KvHeads} vocab {c.VocabSize} ctx {c.MaxSeqLen}; loaded in {load.Elapsed.TotalSeconds:F1} s on {where}[/]");

    var generator = new TextGenerator(model!, tokenizer!);
    var clock = Stopwatch.StartNew();
    TimeSpan? firstToken = null;
    int generated = 0;
    Console.Write(prompt);
    foreach (var token in generator.Generate(prompt, steps, sampling))
    {
        firstToken ??= clock.Elapsed;
        generated++;
        Console.Write(token.Text);
    }
    Console.WriteLine();
    double decodeSeconds = (clock.Elapsed - (firstToken ?? clock.Elapsed)).TotalSeconds;
    AnsiConsole.MarkupLineInterpolated(
        $"[grey]{generated} tokens; prompt + first token {firstToken?.TotalMilliseconds ?? 0:F0} ms; decode {(generated > 1 ? (generated - 1) / decodeSeconds : 0):F1} tok/s[/]");
    model.Dispose();
    device?.Dispose();
    return 0;
}
