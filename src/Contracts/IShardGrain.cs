// A shard holds one slice of a model (a pipeline stage's layers at one tensor-parallel rank) on one device.
// Key: ShardKey ("{modelId}/{replica}.{stage}.{rank}", a "~{generation}" after a failover moved it, and "@{siloName}" to pin it).
namespace Cluster.Contracts;

public interface IShardGrain : ICollectiveMember
{
    /// <summary>
    /// Takes up its place in a serving epoch: loads its slice unless it already holds it, and starts the epoch with an
    /// empty KV cache. A newer epoch ends the older one (its pending collectives and steps fail).
    /// </summary>
    Task<ShardDescription> Load(ShardAssignment assignment);

    /// <summary>
    /// Runs one step of its replica's pipeline (steps are taken in Step order): frees the ended sequences, runs the
    /// chunks (if any) and passes the hidden states on to the next stage; the last stage's first rank samples the next
    /// token of each chunk that asks (ForwardChunk.Sample) and keeps the token ids for SampledTokens: the logits never
    /// leave it. Completes when the rest of the pipeline has.
    /// </summary>
    Task Forward(StageBatch batch);

    /// <summary>
    /// The token ids the last stage's first rank sampled in the step (StageBatch.StepId); completes when they are. The
    /// scheduler asks as it sends the step, so the tokens come straight back to it, never up through the earlier stages,
    /// and no shard has to find the scheduler: a shard on a silo that never held one needs no directory lookup for it,
    /// which could wait on a dead silo's directory range after a failover. Fails when the epoch ends.
    /// </summary>
    Task<StageResult> SampledTokens(long epoch, Guid stepId);

    /// <summary>Null when nothing is loaded on this activation.</summary>
    Task<ShardDescription?> Describe();

    /// <summary>
    /// Answers at once, whatever the shard is doing: its scheduler asks while a step is overdue, and a call its silo
    /// cannot take (the process is gone) fails in milliseconds, long before the silo is declared dead.
    /// </summary>
    Task Ping();
}
