// Every shard of one replica of a layout in this process, each on its own 1-thread CpuDevice: a stage's ranks run
// on their own threads (they block on each other's collectives over an InProcessTransport group) and the stage's
// hidden states go on to the next stage. Tests compare it with the model on one device.
using Cluster.Compute.Collectives;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Parallel;

namespace Cluster.Tests.Parallel;

public sealed class InProcessPipeline : IDisposable
{
    private readonly CpuDevice[][] _devices;          // (stage, rank)
    private readonly TransformerModel[][] _models;
    private readonly PagedKvCache[][] _caches;
    private readonly CollectiveGroup?[][] _groups;

    public InProcessPipeline(ModelConfig config, ModelWeights weights, ParallelLayout layout, int kvBlocks = 64, int blockSize = 4)
    {
        Plan = ShardingPlan.Create(config, layout);
        int stages = layout.PipelineStages, tp = layout.StageRanks;
        _devices = new CpuDevice[stages][];
        _models = new TransformerModel[stages][];
        _caches = new PagedKvCache[stages][];
        _groups = new CollectiveGroup?[stages][];
        for (int s = 0; s < stages; s++)
        {
            var transports = InProcessTransport.CreateGroup(tp);
            _devices[s] = [.. Enumerable.Range(0, tp).Select(_ => new CpuDevice(1))];
            _models[s] = [.. Enumerable.Range(0, tp).Select(r =>
                new TransformerModel(_devices[s][r], config, ShardWeights.Slice(config, weights, Plan.Get(0, s, r))))];
            _caches[s] = [.. _models[s].Select(m => m.CreateCache(kvBlocks, blockSize))];
            _groups[s] = [.. transports.Select(t => tp > 1 ? new CollectiveGroup(t) : null)];
        }
    }

    public ShardingPlan Plan { get; }

    /// <summary>A sequence id valid in every shard's cache (they are all created in lockstep).</summary>
    public int CreateSequence()
    {
        int[] ids = [.. _caches.SelectMany(c => c).Select(c => c.CreateSequence())];
        Assert.All(ids, id => Assert.Equal(ids[0], id));
        return ids[0];
    }

    public void Release(int sequence)
    {
        foreach (var cache in _caches.SelectMany(c => c)) cache.Release(sequence);
    }

    public IEnumerable<PagedKvCache> Caches => _caches.SelectMany(c => c);

    /// <summary>The batch through every stage; the logits (R, V). Every rank of a stage must produce the same output.</summary>
    public float[] Forward(IReadOnlyList<SequenceChunk> batch)
    {
        float[]? hidden = null;
        for (int s = 0; s < _models.Length; s++)
        {
            var input = hidden;
            var ranks = Enumerable.Range(0, _models[s].Length).Select(r => Task.Factory.StartNew(
                () => _models[s][r].Forward(batch, _caches[s][r], input, _groups[s][r]), TaskCreationOptions.LongRunning)).ToArray();
            float[][] outputs = Task.WhenAll(ranks).GetAwaiter().GetResult();
            foreach (var output in outputs) Assert.Equal(outputs[0], output);   // all-reduce and all-gather leave every rank the same bits
            hidden = outputs[0];
        }
        return hidden!;
    }

    public void Dispose()
    {
        foreach (var c in _caches.SelectMany(c => c)) c.Dispose();
        foreach (var m in _models.SelectMany(m => m)) m.Dispose();
        foreach (var d in _devices.SelectMany(d => d)) d.Dispose();
    }
}
