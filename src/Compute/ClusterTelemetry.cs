// The engine's own telemetry: the "Cluster" meter and activity source every process exports (ServiceDefaults listens
// to both). Instruments, with their tags:
//   serving   cluster.serving.requests {model, outcome: completed|cancelled|failed|refused}, .prompt_tokens {model},
//             .generated_tokens {model}, .time_to_first_token s {model}, .inter_token_latency s {model},
//             .waiting and .running sequences (up-down) {model}, .step_tokens {model, replica}, .step_time s {model, replica},
//             .prefix_hit_tokens {model}, .failovers {model, replica}, .replayed_sequences {model, replica};
//   shards    cluster.shard.step_time s {model, replica, stage, rank, silo}, cluster.kv.blocks (gauge)
//             {model, replica, stage, rank, silo, state: used|free};
//   transport cluster.collective.bytes {op} (bytes a member sends) and cluster.collective.duration s {op, members};
//   training  cluster.training.steps, .loss, .learning_rate, .gradient_norm, .tokens_per_second, .mfu, .step_time s,
//             .restarts, .checkpoint_time s, .checkpoint_bytes, all {job}; .trainer_step_time s {job, replica, stage, rank, silo}.
// Spans: "serving.step" per scheduler step (in the trace of the request it carries, or its own trace linked from each
// request when it carries several), "shard.forward" per shard and step
// (its child through Orleans' call propagation), "training.step" per job step with "trainer.step" per trainer under it.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Cluster.Compute;

public static class ClusterTelemetry
{
    public const string Name = "Cluster";

    public static readonly Meter Meter = new(Name);
    public static readonly ActivitySource Source = new(Name);

    public static readonly Counter<long> Requests = Meter.CreateCounter<long>("cluster.serving.requests", "{request}", "Generation requests by outcome");
    public static readonly Counter<long> PromptTokens = Meter.CreateCounter<long>("cluster.serving.prompt_tokens", "{token}", "Prompt tokens of admitted requests");
    public static readonly Counter<long> GeneratedTokens = Meter.CreateCounter<long>("cluster.serving.generated_tokens", "{token}", "Tokens sampled and streamed");
    public static readonly Histogram<double> TimeToFirstToken = Meter.CreateHistogram<double>("cluster.serving.time_to_first_token", "s", "From request to its first token");
    public static readonly Histogram<double> InterTokenLatency = Meter.CreateHistogram<double>("cluster.serving.inter_token_latency", "s", "Between a request's tokens");
    public static readonly UpDownCounter<long> Waiting = Meter.CreateUpDownCounter<long>("cluster.serving.waiting", "{sequence}", "Requests waiting for KV room");
    public static readonly UpDownCounter<long> Running = Meter.CreateUpDownCounter<long>("cluster.serving.running", "{sequence}", "Sequences in the running batch");
    public static readonly Histogram<long> StepTokens = Meter.CreateHistogram<long>("cluster.serving.step_tokens", "{token}", "Tokens one scheduler step carries");
    public static readonly Histogram<double> StepTime = Meter.CreateHistogram<double>("cluster.serving.step_time", "s", "A scheduler step down the whole pipeline");
    public static readonly Counter<long> PrefixHitTokens = Meter.CreateCounter<long>("cluster.serving.prefix_hit_tokens", "{token}", "Prompt tokens found in the prefix cache");
    public static readonly Counter<long> Failovers = Meter.CreateCounter<long>("cluster.serving.failovers", "{failover}", "Replicas brought back in a new epoch");
    public static readonly Counter<long> Replays = Meter.CreateCounter<long>("cluster.serving.replayed_sequences", "{sequence}", "Sequences replayed after a failover");
    public static readonly Histogram<double> ShardStepTime = Meter.CreateHistogram<double>("cluster.shard.step_time", "s", "One shard's part of a step (its device work)");

    public static readonly Counter<long> CollectiveBytes = Meter.CreateCounter<long>("cluster.collective.bytes", "By", "Bytes a group member sends, by operation");
    public static readonly Histogram<double> CollectiveDuration = Meter.CreateHistogram<double>("cluster.collective.duration", "s", "One collective operation on one member");

    public static readonly Counter<long> TrainingSteps = Meter.CreateCounter<long>("cluster.training.steps", "{step}", "Training steps taken");
    public static readonly Histogram<double> TrainingLoss = Meter.CreateHistogram<double>("cluster.training.loss", "1", "Each step's mean loss");
    public static readonly Histogram<double> LearningRate = Meter.CreateHistogram<double>("cluster.training.learning_rate", "1", "Each step's learning rate");
    public static readonly Histogram<double> GradientNorm = Meter.CreateHistogram<double>("cluster.training.gradient_norm", "1", "Each step's global gradient norm, before clipping");
    public static readonly Histogram<double> RouterLoss = Meter.CreateHistogram<double>("cluster.training.moe.router_loss", "1", "An MoE model's balancing and z-losses in each step");
    public static readonly Histogram<double> ExpertImbalance = Meter.CreateHistogram<double>("cluster.training.moe.imbalance", "1", "The busiest expert's choices over the mean in each step (1 = even)");
    public static readonly Counter<long> DroppedTokens = Meter.CreateCounter<long>("cluster.training.moe.dropped", "{token}", "Expert choices dropped over capacity");
    public static readonly Histogram<double> TrainingTokensPerSecond = Meter.CreateHistogram<double>("cluster.training.tokens_per_second", "{token}/s", "Training throughput since the job (re)started");
    public static readonly Histogram<double> TrainingStepTime = Meter.CreateHistogram<double>("cluster.training.step_time", "s", "One training step on every trainer");
    public static readonly Histogram<double> TrainingMfu = Meter.CreateHistogram<double>("cluster.training.mfu", "1", "Model FLOP utilisation since the job (re)started, against the trainers' measured CPU peak");
    public static readonly Histogram<double> TrainerStepTime = Meter.CreateHistogram<double>("cluster.training.trainer_step_time", "s", "One trainer's part of a step (its device work and waits for its peers)");
    public static readonly Counter<long> TrainingRestarts = Meter.CreateCounter<long>("cluster.training.restarts", "{restart}", "Attempts resumed from a checkpoint");
    public static readonly Histogram<double> CheckpointTime = Meter.CreateHistogram<double>("cluster.training.checkpoint_time", "s", "Writing one checkpoint");
    public static readonly Histogram<long> CheckpointBytes = Meter.CreateHistogram<long>("cluster.training.checkpoint_bytes", "By", "Size of one checkpoint");

    private static readonly ConcurrentDictionary<string, (KeyValuePair<string, object?>[] Tags, int Used, int Free)> KvBlocks = new();

    static ClusterTelemetry() => Meter.CreateObservableGauge("cluster.kv.blocks", ObserveKvBlocks, "{block}", "KV cache blocks of each shard, used and free");

    /// <summary>A shard's KV blocks after a step (<paramref name="tags"/>: model, replica, stage, rank, silo).</summary>
    public static void ReportKvBlocks(string shard, KeyValuePair<string, object?>[] tags, int used, int free) => KvBlocks[shard] = (tags, used, free);

    /// <summary>The shard is gone (deactivated): its blocks are no longer reported.</summary>
    public static void ForgetKvBlocks(string shard) => KvBlocks.TryRemove(shard, out _);

    private static IEnumerable<Measurement<int>> ObserveKvBlocks()
    {
        foreach (var (tags, used, free) in KvBlocks.Values)
        {
            yield return new Measurement<int>(used, [.. tags, new("state", "used")]);
            yield return new Measurement<int>(free, [.. tags, new("state", "free")]);
        }
    }
}
