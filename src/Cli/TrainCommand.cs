// `cluster train`: trains a model on one machine (fp32, CPU) with a live progress bar and loss line, checkpoints
// and resumes, and writes the trained model as GGUF for `cluster generate` or the cluster to serve.
//   dotnet run -c Release --project src/Cli -- train --preset tiny --data additions --steps 200 --out /tmp/add.gguf
using System.Diagnostics;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Training;
using Spectre.Console;

namespace Cluster.Cli;

public static class TrainCommand
{
    public const string Usage = """
               cluster train [--model PATH | --preset NAME] [--tokenizer PATH] [--data additions|FILE.txt] [--steps N]
                             [--batch N] [--seq N] [--lr F] [--warmup N] [--seed N] [--threads N] [--checkpoint DIR] [--out PATH]
          trains the model (Llama or GPT-2 family, fp32 on the CPU) on generated additions ("23+19=42", default) or on a text
          file (one document per line), tokenized with the model's tokenizer and packed into --seq tokens (default 64),
          --batch sequences a step (default 4), AdamW with warmup + cosine decay from --lr (default 1e-3);
          --checkpoint DIR resumes from DIR when it holds a checkpoint and saves there every 50 steps and at the end;
          --out writes the trained model as GGUF
        """;

    public static int Run(Arguments a)
    {
        string? modelPath = a.Optional("model");
        string preset = a.Optional("preset") ?? "tiny";
        string? tokenizerPath = a.Optional("tokenizer");
        string data = a.Optional("data") ?? "additions";
        int steps = a.Int("steps", 200, min: 1), batchSize = a.Int("batch", 4, min: 1), seed = a.Int("seed", 1, min: 0);
        int warmup = a.Int("warmup", Math.Min(20, steps / 10), min: 0);
        float learningRate = a.Float("lr", 1e-3f);
        string? checkpoint = a.Optional("checkpoint"), output = a.Optional("out");
        var loaded = modelPath is null ? RandomModel.Create(preset, seed) : ModelLoader.Load(modelPath, tokenizerPath);
        int sequenceLength = a.Int("seq", Math.Min(64, loaded.Config.MaxSeqLen), min: 2);
        int threads = a.Int("threads", Environment.ProcessorCount, min: 1);
        a.RejectUnknown();
        if (sequenceLength > loaded.Config.MaxSeqLen) throw new ArgumentException($"--seq {sequenceLength} is longer than the model's context of {loaded.Config.MaxSeqLen}");
        var tokenizer = loaded.Tokenizer ?? throw new ArgumentException("the model carries no tokenizer: pass --tokenizer");

        string[] documents = data == "additions" ? ArithmeticData.Additions(10_000, seed)
            : File.Exists(data) ? [.. File.ReadLines(data).Where(l => l.Length > 0)]
            : throw new ArgumentException($"--data must be 'additions' or a text file, got '{data}'");
        var dataset = new PackedDataset(documents.Select(d => tokenizer.Encode(d, addBos: true)), sequenceLength, seed);
        using var model = new TrainableModel(loaded.Config, loaded.Weights, threads);
        var optimizer = new Optimizer(model, new OptimizerOptions
        {
            LearningRate = learningRate, MinLearningRate = learningRate / 10, WarmupSteps = warmup, TotalSteps = steps,
        });
        var cursor = default(DataCursor);
        if (checkpoint is not null && File.Exists(Path.Combine(checkpoint, Checkpoint.ManifestFile)))
        {
            cursor = Checkpoint.Load(checkpoint, model, optimizer);
            AnsiConsole.MarkupLineInterpolated($"[grey]resumed from {checkpoint} after step {optimizer.Step}[/]");
        }
        var c = loaded.Config;
        AnsiConsole.MarkupLineInterpolated(
            $"[grey]{c.Architecture} dim {c.Dim} layers {c.Layers} vocab {c.VocabSize}; {dataset.Documents} documents packed into {sequenceLength} tokens, batch {batchSize}[/]");

        float loss = float.NaN;
        AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: steps);
                task.Value = optimizer.Step;
                var clock = Stopwatch.StartNew();
                long tokens = 0;
                while (optimizer.Step < steps)
                {
                    (var batch, cursor) = dataset.Take(batchSize, cursor);
                    model.ZeroGradients();
                    loss = model.ForwardBackward(batch);
                    var (lr, norm) = optimizer.Apply();
                    tokens += batchSize * sequenceLength;
                    task.Description = $"step {optimizer.Step}/{steps} loss {loss:F4} lr {lr:E2} |g| {norm:F2} {tokens / clock.Elapsed.TotalSeconds:F0} tok/s";
                    task.Value = optimizer.Step;
                    if (checkpoint is not null && (optimizer.Step % 50 == 0 || optimizer.Step == steps)) Checkpoint.Save(checkpoint, model, optimizer, cursor);
                }
            });
        AnsiConsole.MarkupLineInterpolated($"final loss {loss:F4} after {optimizer.Step} steps");
        if (output is not null)
        {
            GgufWriter.Write(loaded with { Weights = model.Weights }, output, name: "trained");
            AnsiConsole.MarkupLineInterpolated($"wrote {output}: cluster generate --model {output} --temperature 0");
        }
        return 0;
    }
}
