// Every shard of one replica of a layout in this process, each on its own device: a stage's ranks run on their own
// threads (they block on each other's collectives over an InProcessTransport group) and the stage's hidden states go
// on to the next stage. What `cluster generate --layout` runs, so a layout can be checked without a cluster, and what
// the tests compare with the model on one device (ShardedForwardTests).
//   dotnet run -c Release --project src/Cli -- generate --preset moe-tiny --layout ep=2,pp=2 --steps 32
using Cluster.Compute;
using Cluster.Compute.Collectives;

namespace Cluster.Model.Parallel;

public sealed class LocalPipeline : ILocalModel
{
    private readonly IDevice[][] _devices;            // (stage, rank)
    private readonly TransformerModel[][] _models;
    private readonly PagedKvCache[][] _caches;
    private readonly CollectiveGroup?[][] _groups;

    /// <param name="openDevice">Opens the device of one shard (called once per shard; the pipeline disposes them).</param>
    /// <param name="kvBlocks">KV blocks of <paramref name="blockSize"/> tokens in each shard's cache.</param>
    /// <param name="weightFormat">How each shard keeps its weight matrices (TransformerModel).</param>
    /// <param name="kvFormat">How each shard's KV cache keeps keys and values.</param>
    public LocalPipeline(ModelConfig config, ModelWeights weights, ParallelLayout layout, Func<IDevice> openDevice, int kvBlocks, int blockSize,
        WeightFormat weightFormat = WeightFormat.F32, KvFormat kvFormat = KvFormat.F32)
    {
        if (layout.DataParallel != 1) throw new ArgumentException($"a local pipeline runs one replica: layout {layout} has dp = {layout.DataParallel}", nameof(layout));
        Plan = ShardingPlan.Create(config, layout);
        Config = config;
        int stages = layout.PipelineStages, ranks = layout.StageRanks;
        _devices = new IDevice[stages][];
        _models = new TransformerModel[stages][];
        _caches = new PagedKvCache[stages][];
        _groups = new CollectiveGroup?[stages][];
        try
        {
            for (int s = 0; s < stages; s++)
            {
                _devices[s] = new IDevice[ranks];
                _models[s] = new TransformerModel[ranks];
                _caches[s] = new PagedKvCache[ranks];
                for (int r = 0; r < ranks; r++)
                {
                    _devices[s][r] = openDevice();
                    _models[s][r] = new TransformerModel(_devices[s][r], config, ShardWeights.Slice(config, weights, Plan.Get(0, s, r)), weightFormat: weightFormat, kvFormat: kvFormat);
                    _caches[s][r] = _models[s][r].CreateCache(kvBlocks, blockSize);
                }
                _groups[s] = [.. InProcessTransport.CreateGroup(ranks).Select(t => ranks > 1 ? new CollectiveGroup(t) : null)];
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public ShardingPlan Plan { get; }
    public ModelConfig Config { get; }
    public IEnumerable<PagedKvCache> Caches => _caches.SelectMany(c => c);

    /// <summary>A sequence id valid in every shard's cache (they are all created in lockstep).</summary>
    public int CreateSequence()
    {
        int[] ids = [.. Caches.Select(c => c.CreateSequence())];
        if (ids.Any(id => id != ids[0])) throw new InvalidOperationException($"the shards' caches gave different sequence ids: {string.Join(", ", ids)}");
        return ids[0];
    }

    public void Release(int sequence)
    {
        foreach (var cache in Caches) cache.Release(sequence);
    }

    /// <summary>
    /// The batch through every stage: the logits (R, V), as TransformerModel.Forward on the whole model gives them.
    /// Every rank of a stage must produce the same output (all-reduce and all-gather leave every rank the same bits).
    /// </summary>
    public float[] Forward(IReadOnlyList<SequenceChunk> batch)
    {
        float[]? hidden = null;
        for (int s = 0; s < _models.Length; s++)
        {
            var (input, models, caches, groups) = (hidden, _models[s], _caches[s], _groups[s]);
            var ranks = Enumerable.Range(0, models.Length).Select(r => Task.Factory.StartNew(
                () => models[r].Forward(batch, caches[r], input, groups[r]), TaskCreationOptions.LongRunning)).ToArray();
            float[][] outputs = Task.WhenAll(ranks).GetAwaiter().GetResult();
            for (int r = 1; r < outputs.Length; r++)
                if (!outputs[r].AsSpan().SequenceEqual(outputs[0]))
                    throw new InvalidOperationException($"stage {s}: rank {r}'s output differs from rank 0's");
            hidden = outputs[0];
        }
        return hidden!;
    }

    public ILocalSequence Start(int tokens)
    {
        int blockSize = _caches[0][0].BlockSize, needed = (tokens + blockSize - 1) / blockSize;
        if (needed > _caches[0][0].FreeBlocks)
            throw new ArgumentException($"{tokens} tokens need {needed} KV blocks; the shards' caches have {_caches[0][0].FreeBlocks} free", nameof(tokens));
        return new Sequence(this, CreateSequence());
    }

    private sealed class Sequence(LocalPipeline pipeline, int id) : ILocalSequence
    {
        public void Forward(int[] tokens, Span<float> logits) => pipeline.Forward([new SequenceChunk(id, tokens)]).CopyTo(logits);
        public void Dispose() => pipeline.Release(id);
    }

    public void Dispose()
    {
        foreach (var c in _caches.SelectMany(c => c ?? [])) c?.Dispose();
        foreach (var m in _models.SelectMany(m => m ?? [])) m?.Dispose();
        foreach (var d in _devices.SelectMany(d => d ?? [])) d?.Dispose();
    }
}
