// Per-silo settings of the inference schedulers: continuous batching and failover.
using Cluster.Contracts;

namespace Cluster.Grains;

public sealed class SchedulerOptions
{
    /// <summary>Tokens one step may carry: decode tokens first, then prompt chunks up to this (chunked prefill).</summary>
    public int MaxBatchTokens { get; set; } = 256;
    /// <summary>Requests a model keeps waiting for KV room; one more is refused (the gateway answers 429 with Retry-After).</summary>
    public int MaxWaiting { get; set; } = 64;
    /// <summary>The Retry-After a refused request is given, in seconds.</summary>
    public int RetryAfterSeconds { get; set; } = 2;
    /// <summary>How many later (smaller) requests may be admitted ahead of a waiting one that does not fit yet, before admission waits for it.</summary>
    public int MaxOvertakes { get; set; } = 32;
    /// <summary>Failed steps a sequence may be in: one more and it fails with the cause rather than being replayed again.</summary>
    public int MaxStepFailures { get; set; } = 3;
    // StepTimeout and FailoverTimeout stay well inside an Orleans client's 30 s response timeout, so a client waiting for
    // its next token hears either the token or the 503 before its own call gives up. A step whose shard's silo leaves the
    // cluster does not wait for any of them: it fails as soon as the membership says so.

    /// <summary>
    /// The longest a step may take before its pipeline is presumed lost and replayed: the timeout of an epoch's first
    /// steps, and the cap of the timeout measured from the replica's recent steps (StepClock); also how long a reload may take.
    /// </summary>
    public TimeSpan StepTimeout { get; set; } = TimeSpan.FromSeconds(10);
    /// <summary>The least a step is given once steps were measured: a tiny model's millisecond steps still ride out a GC pause.</summary>
    public TimeSpan MinStepTimeout { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>How many times what the replica's recent steps took (scaled to the step's tokens) a step may take.</summary>
    public double StepTimeoutFactor { get; set; } = 8;
    /// <summary>How long a step may be in flight before its replica's shards are pinged; also how often they are, while it stays so.</summary>
    public TimeSpan ShardProbeInterval { get; set; } = TimeSpan.FromMilliseconds(500);
    /// <summary>How long a ping may take: one that times out decides nothing (only a refused one marks its silo lost).</summary>
    public TimeSpan ShardProbeTimeout { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>How long the scheduler keeps trying to bring a lost pipeline back before failing its requests with 503.</summary>
    public TimeSpan FailoverTimeout { get; set; } = TimeSpan.FromSeconds(15);
    /// <summary>
    /// Models this silo serves from its configuration, by model id: a scheduler activating without a serving (its
    /// previous activation's silo died) takes its serving from here and serves again on its first request.
    /// </summary>
    public Dictionary<string, ModelServing> ConfiguredModels { get; } = [];
}
