// How a model is spread over shards: tensor-parallel degree, expert-parallel degree (MoE models), pipeline stages (with
// their layer counts, uneven allowed) and data-parallel replicas. Written as text ("tp=2,pp=2", "pp=3,layers=2+2+1", "dp=2") so it travels
// through configuration, the CLI and grain messages unchanged.
namespace Cluster.Model.Parallel;

public sealed record ParallelLayout
{
    public int TensorParallel { get; init; } = 1;
    public int PipelineStages { get; init; } = 1;
    /// <summary>Layers of each stage, first to last; null splits the layers as evenly as possible.</summary>
    public IReadOnlyList<int>? StageLayers { get; init; }
    public int DataParallel { get; init; } = 1;
    /// <summary>
    /// MoE models: the ranks of each stage over which the experts are partitioned. They all see the stage's tokens
    /// (attention split by tp, or replicated when tp = 1), and each runs only its own experts: tp must be 1 or ep.
    /// </summary>
    public int ExpertParallel { get; init; } = 1;

    /// <summary>The shards of each stage, working as one group: tp, or ep where experts are spread wider.</summary>
    public int StageRanks => Math.Max(TensorParallel, ExpertParallel);

    public static ParallelLayout Single { get; } = new();

    /// <summary>Parses "tp=2,pp=2,dp=1,layers=3+2" (any subset, any order; empty means one shard).</summary>
    public static ParallelLayout Parse(string? text)
    {
        var layout = new ParallelLayout();
        if (string.IsNullOrWhiteSpace(text)) return layout;
        foreach (string part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string[] kv = part.Split('=', 2, StringSplitOptions.TrimEntries);
            if (kv.Length != 2) throw new FormatException($"layout '{text}': '{part}' is not key=value (keys: tp, ep, pp, dp, layers)");
            layout = kv[0].ToLowerInvariant() switch
            {
                "tp" => layout with { TensorParallel = Positive(kv[1]) },
                "pp" => layout with { PipelineStages = Positive(kv[1]) },
                "dp" => layout with { DataParallel = Positive(kv[1]) },
                "ep" => layout with { ExpertParallel = Positive(kv[1]) },
                "layers" => layout with { StageLayers = kv[1].Split('+').Select(Positive).ToArray() },
                _ => throw new FormatException($"layout '{text}': unknown key '{kv[0]}' (keys: tp, ep, pp, dp, layers)"),
            };
        }
        if (layout.StageLayers is { } stages)
        {
            if (text.Contains("pp=", StringComparison.OrdinalIgnoreCase) && stages.Count != layout.PipelineStages)
                throw new FormatException($"layout '{text}': layers names {stages.Count} stages but pp={layout.PipelineStages}");
            layout = layout with { PipelineStages = stages.Count };
        }
        return layout;

        int Positive(string value) => int.TryParse(value, out int n) && n is > 0 and <= 1024
            ? n : throw new FormatException($"layout '{text}': '{value}' is not a whole number from 1 to 1024");
    }

    public override string ToString()
    {
        string text = $"tp={TensorParallel},pp={PipelineStages},dp={DataParallel}" + (ExpertParallel > 1 ? $",ep={ExpertParallel}" : "");
        return StageLayers is null ? text : $"{text},layers={string.Join('+', StageLayers)}";
    }

    public bool Equals(ParallelLayout? other) => other is not null && ToString() == other.ToString();

    public override int GetHashCode() => ToString().GetHashCode();
}
