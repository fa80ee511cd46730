// `cluster train`: trains a model in this process, in any data × pipeline × tensor-parallel layout (every shard on its
// own thread), with a live progress bar and loss line; checkpoints and resumes (at any layout), writes the trained
// model as GGUF for `cluster generate` or the cluster to serve (whole or not at all: a staging file renamed), on the
// additions data reports how many held-out problems it now answers exactly, and on the stories data tells a story.
//   dotnet run -c Release --project src/Cli -- train --preset adder --steps 600 --out /tmp/adder.gguf
using System.Diagnostics;
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using Cluster.Model.Tokenizers;
using Cluster.Training;
using Spectre.Console;

namespace Cluster.Cli;

public static class TrainCommand
{
    public const string Usage = """
               cluster train [--model PATH | --preset NAME] [--tokenizer PATH] [--data additions|stories|FILE.txt|FILE.jsonl] [--steps N]
                             [--batch N] [--seq N] [--lr F] [--warmup N] [--seed N] [--threads N] [--layout L] [--micro-batches N]
                             [--schedule 1f1b|gpipe] [--zero 0|1|2|3] [--checkpoint DIR] [--checkpoint-every N]
                             [--keep-checkpoints N] [--out PATH]
                             [--lora-rank R [--lora-alpha A] [--lora-targets wq,wv,...] [--lora-dropout P] [--lora-nf4 true] --adapter-out DIR]
                             [--recompute true] [--precision fp32|bf16] [--device cpu|cuda|opencl|ilgpu-cpu]
          trains the model (Llama or GPT-2 family, fp32 on the CPU) on generated additions ("23+19=" -> "42", default),
          generated children's stories (for the storyteller preset), a text file (one document per line) or JSONL
          (prompt/completion or chat records: only completions are learned), tokenized with the model's tokenizer and
          packed into --seq tokens (default 64; 256 for stories, which run to about 100), --batch sequences a step
          (default 16), AdamW with warmup + cosine decay from --lr (default 1e-3); --layout (e.g. pp=2,dp=2) shards it, --micro-batches per
          replica feed the pipeline schedule; --checkpoint DIR resumes from DIR's newest checkpoint that verifies (saved at
          any layout; damaged ones are removed) and saves there every --checkpoint-every steps (default 100) and at the end,
          keeping the newest --keep-checkpoints (default 3); --out writes the trained model as GGUF (with its tokenizer; a
          mixture of experts GGUF cannot hold, as a safetensors directory);
          --lora-rank trains LoRA adapters on the frozen model instead (Llama family, tp=1) and --adapter-out writes them as a
          PEFT adapter (cluster generate --adapter DIR serves it), --lora-nf4 true holding the frozen base in 4-bit NF4 (QLoRA); --recompute true keeps only each layer's input and recomputes
          the rest in the backward (activation checkpointing); --precision bf16 rounds the products' inputs to bfloat16;
          --device runs the step's kernels (products, activations, norms, RoPE, attention, loss, embedding gradient, AdamW;
          forward and backward) on an ILGPU device, copying tensors there and back per kernel (a check, not a fast path)
        """;

    public static int Run(Arguments a)
    {
        string? modelPath = a.Optional("model");
        string preset = a.Optional("preset") ?? "adder";
        string? tokenizerPath = a.Optional("tokenizer");
        string data = a.Optional("data") ?? "additions";
        int steps = a.Int("steps", 600, min: 1), batchSize = a.Int("batch", 16, min: 1), seed = a.Int("seed", 1, min: 0);
        int warmup = a.Int("warmup", Math.Min(20, steps / 10), min: 0), microBatches = a.Int("micro-batches", 1, min: 1);
        int zeroStage = a.Int("zero", 0, min: 0), checkpointEvery = a.Int("checkpoint-every", 100, min: 1);
        int keepCheckpoints = a.Int("keep-checkpoints", Checkpoint.DefaultKeep, min: 1);
        float learningRate = a.Float("lr", 1e-3f);
        var layout = ParallelLayout.Parse(a.Optional("layout"));
        var schedule = (a.Optional("schedule") ?? "1f1b") switch
        {
            "1f1b" => PipelineSchedule.OneFOneB,
            "gpipe" => PipelineSchedule.GPipe,
            var other => throw new ArgumentException($"--schedule must be 1f1b or gpipe, got '{other}'"),
        };
        string? checkpoint = a.Optional("checkpoint"), output = a.Optional("out");
        var loaded = modelPath is null ? RandomModel.Create(preset, seed) : ModelLoader.Load(modelPath, tokenizerPath);
        int sequenceLength = a.Int("seq", Math.Min(data == "stories" ? 256 : 64, loaded.Config.MaxSeqLen), min: 2);
        int threads = a.Int("threads", Environment.ProcessorCount, min: 1);
        int loraRank = a.Int("lora-rank", 0, min: 0);
        var lora = loraRank == 0 ? null : new LoraOptions
        {
            Rank = loraRank, Alpha = a.Float("lora-alpha", 2f * loraRank), Dropout = a.Float("lora-dropout", 0f), QuantizeBase = a.Bool("lora-nf4", false),
            Targets = a.Optional("lora-targets")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? ["wq", "wk", "wv", "wo"],
        };
        string? adapterOut = a.Optional("adapter-out");
        bool recompute = a.Bool("recompute", false);
        // The CPU trains on the host's kernels (no device object); any other device runs every kernel there.
        using var device = a.Device("device", DeviceSpec.Cpu) is { IsIlgpu: true } spec ? spec.Open(threads) : null;
        var precision = (a.Optional("precision") ?? "fp32") switch
        {
            "fp32" => Precision.Float32,
            "bf16" => Precision.BFloat16,
            var other => throw new ArgumentException($"--precision must be fp32 or bf16, got '{other}'"),
        };
        a.RejectUnknown();
        if ((lora is null) != (adapterOut is null)) throw new ArgumentException("--lora-rank and --adapter-out go together");
        if (lora is not null && output is not null) throw new ArgumentException("a LoRA run writes an adapter (--adapter-out), not a model (--out)");
        if (output is not null && !Directory.Exists(Path.GetDirectoryName(Path.GetFullPath(output))))
            throw new ArgumentException($"--out {output}: its directory does not exist");
        bool safetensorsOut = GgufWriter.CannotWrite(loaded.Config) is not null;   // written as a Hugging Face checkpoint directory instead
        if (output is not null && safetensorsOut && output.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"--out {output}: {GgufWriter.CannotWrite(loaded.Config)}; give a directory path");
        if (sequenceLength > loaded.Config.MaxSeqLen) throw new ArgumentException($"--seq {sequenceLength} is longer than the model's context of {loaded.Config.MaxSeqLen}");
        if (batchSize < layout.DataParallel * microBatches) throw new ArgumentException($"--batch {batchSize} cannot feed {layout.DataParallel} replicas × {microBatches} micro-batches");
        var tokenizer = loaded.Tokenizer ?? throw new ArgumentException("the model carries no tokenizer: pass --tokenizer");

        TrainingDocument[] documents = Datasets.Generated(data, seed, tokenizer)
            ?? (!File.Exists(data) ? throw new ArgumentException($"--data must be 'additions', 'stories' or a .txt / .jsonl file, got '{data}'")
            : data.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) ? Datasets.Jsonl(File.ReadLines(data), tokenizer, data)
            : Datasets.Text(File.ReadLines(data), tokenizer));
        var dataset = new PackedDataset(documents, sequenceLength, seed);
        var options = new OptimizerOptions
        {
            LearningRate = learningRate, MinLearningRate = learningRate / 10, WarmupSteps = warmup, TotalSteps = steps,
            WeightDecay = lora is null ? 0.1f : 0f,
        };
        int shards = layout.DataParallel * layout.PipelineStages * layout.StageRanks;
        using var run = LocalTrainingRun.Create(loaded.Config, loaded.Weights, layout, options, zeroStage, Math.Max(1, threads / shards),
            new TrainingMode { Lora = lora, ActivationCheckpointing = recompute, Precision = precision, Device = device });
        var cursor = default(DataCursor);
        if (checkpoint is not null)
        {
            var resume = Checkpoint.FindResumePoint(checkpoint);
            foreach (string removed in resume.Removed) AnsiConsole.MarkupLineInterpolated($"[yellow]removed: {removed}[/]");
            if (resume.Directory is { } latest)
            {
                var manifest = run.Restore(latest);
                cursor = manifest.Cursor;
                AnsiConsole.MarkupLineInterpolated($"[grey]resumed from {latest} after step {manifest.Step} (saved at {manifest.Layout})[/]");
            }
        }
        var c = loaded.Config;
        AnsiConsole.MarkupLineInterpolated(
            $"[grey]{c.Architecture} dim {c.Dim} layers {c.Layers} vocab {c.VocabSize}; {dataset.Documents} documents packed into {sequenceLength} tokens, batch {batchSize}; layout {layout}, {microBatches} micro-batches ({schedule})[/]");

        float loss = float.NaN;
        AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: steps);
                task.Value = run.Step;
                var clock = Stopwatch.StartNew();
                long tokens = 0;
                while (run.Step < steps)
                {
                    (var batch, cursor) = dataset.Take(batchSize, cursor);
                    var result = run.TrainStep(batch, microBatches, schedule);
                    loss = result.LossShare;
                    tokens += batchSize * sequenceLength;
                    task.Description = $"step {run.Step}/{steps} loss {loss:F4} lr {result.LearningRate:E2} |g| {result.GradientNorm:F2} {tokens / clock.Elapsed.TotalSeconds:F0} tok/s"
                        + (result.Experts is { } moe ? $" router {moe.RouterLoss:F4} max/mean load {moe.Imbalance:F2} dropped {moe.Dropped}" : "");
                    task.Value = run.Step;
                    if (checkpoint is not null && (run.Step % checkpointEvery == 0 || run.Step == steps)) run.SaveCheckpoint(checkpoint, cursor, keepCheckpoints);
                }
            });
        AnsiConsole.MarkupLineInterpolated($"final loss {loss:F4} after {run.Step} steps");
        if (lora is not null)
        {
            PeftAdapter.Save(adapterOut!, loaded.Config, lora.Peft, run.Adapters(), modelPath ?? $"random:{preset}:{seed}");
            AnsiConsole.MarkupLineInterpolated($"wrote the LoRA adapter to {adapterOut}: cluster generate --model ... --adapter {adapterOut}");
            return 0;
        }
        var trained = loaded with { Weights = run.Assemble() };
        if (data == "additions") ReportAdditions(trained, seed, documents.Length);
        if (data == "stories") ReportStory(trained);
        if (output is not null)
        {
            if (safetensorsOut) SafetensorsWriter.Write(trained, output);
            else DurableFile.Write(output, stream => GgufWriter.Write(trained, stream, TensorType.F32, "trained", output));
            string prompt = data == "stories" ? "Once upon a time" : "23+19=";
            AnsiConsole.MarkupLineInterpolated($"wrote {output}: cluster generate --model {output} --prompt \"{prompt}\" --temperature 0");
        }
        return 0;
    }

    /// <summary>The greedy continuation of "Once upon a time", up to the end of the story or 100 tokens.</summary>
    private static void ReportStory(LoadedModel trained)
    {
        using var device = new CpuDevice(Environment.ProcessorCount);
        using var model = new TransformerModel(device, trained.Config, trained.Weights);
        var generator = new TextGenerator(model, trained.Tokenizer!);
        const string prompt = "Once upon a time";
        AnsiConsole.MarkupLineInterpolated($"greedy story: {prompt}{string.Concat(generator.Generate(prompt, 100, SamplingOptions.Greedy).Select(t => t.Text))}");
    }

    /// <summary>Greedy answers to 200 additions that are not in the training set, and to "23+19=".</summary>
    private static void ReportAdditions(LoadedModel trained, int seed, int trainingProblems)
    {
        var seen = Datasets.Additions(trainingProblems, seed).Select(p => p.Prompt).ToHashSet();
        using var device = new CpuDevice(Environment.ProcessorCount);
        using var model = new TransformerModel(device, trained.Config, trained.Weights);
        var generator = new TextGenerator(model, trained.Tokenizer!);
        string Answer(string prompt) => string.Concat(generator.Generate(prompt, 8, SamplingOptions.Greedy).Select(t => t.Text));
        var heldOut = Datasets.Additions(20_000, seed + 1_000_003).DistinctBy(p => p.Prompt).Where(p => !seen.Contains(p.Prompt)).Take(200).ToArray();
        int right = heldOut.Count(p => Answer(p.Prompt) == p.Completion);
        AnsiConsole.MarkupLineInterpolated($"held-out additions answered exactly: {right}/{heldOut.Length}; 23+19= -> {Answer("23+19=")}");
    }
}
