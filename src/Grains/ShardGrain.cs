// A shard: holds the model and its paged KV cache on a CpuDevice; every device call runs on the shard's DeviceWorker.
using System.Runtime.InteropServices;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

[PinnedShardPlacement]
public sealed class ShardGrain(IOptions<ShardOptions> options, ILocalSiloDetails silo) : Grain, IShardGrain
{
    private sealed class Loaded(ModelSource source, CpuDevice device, TransformerModel model, PagedKvCache cache) : IDisposable
    {
        public ModelSource Source => source;
        public CpuDevice Device => device;
        public TransformerModel Model => model;
        public PagedKvCache Cache => cache;
        public Dictionary<Guid, int> Sequences { get; } = [];

        public void Dispose()
        {
            cache.Dispose();
            model.Dispose();
            device.Dispose();
        }
    }

    private DeviceWorker? _worker;
    private Loaded? _loaded;

    private DeviceWorker Worker => _worker ??= new DeviceWorker($"shard {this.GetPrimaryKeyString()}");

    public async Task<ShardDescription> Load(ModelSource source)
    {
        if (_loaded?.Source != source)
        {
            var previous = _loaded;
            _loaded = null;
            var o = options.Value;
            _loaded = await Worker.Run(() =>
            {
                previous?.Dispose();
                var weights = ModelSources.Load(source);
                var device = new CpuDevice(o.DeviceThreads);
                var model = new TransformerModel(device, weights.Config, weights.Weights);
                int blocksPerSequence = (weights.Config.MaxSeqLen + o.KvBlockSize - 1) / o.KvBlockSize;
                var cache = new PagedKvCache(device, weights.Config, o.KvSequences * blocksPerSequence, o.KvBlockSize);
                return new Loaded(source, device, model, cache);
            });
        }
        return Describe(_loaded);
    }

    public Task<ForwardResult> Forward(ForwardBatch batch)
    {
        var loaded = _loaded ?? throw new InvalidOperationException($"shard {this.GetPrimaryKeyString()} has no model loaded");
        return Worker.Run(() =>
        {
            var chunks = new SequenceChunk[batch.Chunks.Length];
            for (int i = 0; i < chunks.Length; i++)
            {
                var chunk = batch.Chunks[i];
                if (!loaded.Sequences.TryGetValue(chunk.Sequence, out int sequence))
                    loaded.Sequences[chunk.Sequence] = sequence = loaded.Cache.CreateSequence();
                chunks[i] = new SequenceChunk(sequence, chunk.Tokens, chunk.AllLogits);
            }
            float[] logits = loaded.Model.Forward(chunks, loaded.Cache);
            int vocab = loaded.Model.Config.VocabSize;
            return new ForwardResult(MemoryMarshal.AsBytes(logits.AsSpan()).ToArray(), logits.Length / vocab, vocab);
        });
    }

    public Task ReleaseSequence(Guid sequence)
    {
        var loaded = _loaded;
        if (loaded is null) return Task.CompletedTask;
        return Worker.Run(() =>
        {
            if (loaded.Sequences.Remove(sequence, out int id)) loaded.Cache.Release(id);
            return true;
        });
    }

    public Task<ShardDescription?> Describe() =>
        _loaded is null ? Task.FromResult<ShardDescription?>(null) : Worker.Run<ShardDescription?>(() => Describe(_loaded));

    private ShardDescription Describe(Loaded loaded) => new(
        this.GetPrimaryKeyString(), loaded.Source.ToString(), ModelSources.Describe(loaded.Model.Config), loaded.Device.Info.Name,
        silo.Name, loaded.Cache.FreeBlocks, loaded.Cache.TotalBlocks, loaded.Cache.ActiveSequences,
        loaded.Model.Config.MaxSeqLen);

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _worker?.Dispose();   // waits for queued device work, so the model can be freed here
        _loaded?.Dispose();
        _loaded = null;
        return base.OnDeactivateAsync(reason, cancellationToken);
    }
}
