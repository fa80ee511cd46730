// A shard: one pipeline stage's layers at one tensor-parallel rank, on one of its silo's devices (DeviceSlots), with its paged KV cache. Every
// device call runs on the shard's DeviceWorker. The grain is reentrant so that pipeline steps overlap (step k+1
// queues on the device while step k waits for the next stage) and peers' collective messages get in while a step is
// blocked on them; steps still run strictly in Step order, the same order on every rank of the group.
using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Orleans.Concurrency;
using Cluster.Compute;
using Cluster.Compute.Collectives;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Parallel;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

[PinnedShardPlacement, Reentrant]
public sealed class ShardGrain(IOptions<ShardOptions> options, ILocalSiloDetails silo, IGrainFactory grains, DeviceSlots devices) : Grain, IShardGrain
{
    /// <summary>The weights on the device: kept across epochs while the assignment's slice stays the same.</summary>
    private sealed class LoadedSlice(ShardAssignment assignment, DeviceLease lease, TransformerModel model) : IDisposable
    {
        public ShardAssignment Assignment => assignment;
        public DeviceLease Lease => lease;
        public TransformerModel Model => model;

        public bool Holds(ShardAssignment other) =>
            assignment.Source == other.Source && assignment.Layout == other.Layout &&
            assignment.Replica == other.Replica && assignment.Stage == other.Stage && assignment.Rank == other.Rank;

        public void Dispose()
        {
            model.Dispose();
            lease.Dispose();
        }
    }

    /// <summary>One serving epoch: the KV cache and sequences, the collectives' mailbox, and the step order.</summary>
    private sealed class Epoch(ShardAssignment assignment, PagedKvCache cache, CollectiveMailbox mailbox, CollectiveGroup? group,
        KeyValuePair<string, object?>[] tags)
    {
        private readonly Dictionary<long, TaskCompletionSource> _waiting = [];
        // The last stage's sampled tokens by step id, from whichever comes first: the step (Publish) or its scheduler's
        // call for them (Sampled). Each entry leaves when the other side comes; an epoch's end fails the calls still waiting.
        private readonly Dictionary<Guid, TaskCompletionSource<StageResult>> _sampled = [];
        private long _nextStep;
        private Exception? _ended;

        public ShardAssignment Assignment => assignment;
        public long Number => assignment.Epoch;
        public PagedKvCache Cache => cache;
        public CollectiveMailbox Mailbox => mailbox;
        public CollectiveGroup? Group => group;
        /// <summary>model, replica, stage, rank, silo: the tags of this shard's telemetry.</summary>
        public KeyValuePair<string, object?>[] Tags => tags;
        public Dictionary<Guid, int> Sequences { get; } = [];

        /// <summary>Completes when every earlier step has been queued on the device.</summary>
        public async Task WaitTurn(long step)
        {
            while (true)
            {
                if (_ended is not null) throw _ended;
                if (step == _nextStep) return;
                if (step < _nextStep) throw new InvalidOperationException($"step {step} of epoch {Number} arrived twice");
                if (!_waiting.TryGetValue(step, out var turn))
                    _waiting[step] = turn = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                await turn.Task;
            }
        }

        public void Advance()
        {
            _nextStep++;
            if (_waiting.Remove(_nextStep, out var turn)) turn.SetResult();
        }

        public void Publish(Guid step, StageResult tokens)
        {
            if (_sampled.Remove(step, out var asked)) asked.SetResult(tokens);
            else _sampled[step] = CompletedWith(tokens);
        }

        public Task<StageResult> Sampled(Guid step)
        {
            if (_ended is not null) throw _ended;
            if (_sampled.TryGetValue(step, out var entry) && entry.Task.IsCompleted) _sampled.Remove(step);
            else if (entry is null) _sampled[step] = entry = new TaskCompletionSource<StageResult>(TaskCreationOptions.RunContinuationsAsynchronously);
            return entry.Task;
        }

        private static TaskCompletionSource<StageResult> CompletedWith(StageResult tokens)
        {
            var done = new TaskCompletionSource<StageResult>();
            done.SetResult(tokens);
            return done;
        }

        /// <summary>Fails waiting steps, calls for tokens and blocked collectives; the cache is freed later, on the device thread.</summary>
        public void End(Exception reason)
        {
            _ended = reason;
            mailbox.Fail(reason);
            foreach (var turn in _waiting.Values) turn.SetException(reason);
            _waiting.Clear();
            foreach (var asked in _sampled.Values) asked.TrySetException(reason);
            _sampled.Clear();
        }
    }

    private DeviceWorker? _worker;
    private LoadedSlice? _slice;
    private Epoch? _epoch;
    private readonly EpochInbox _inbox = new();
    // One Load at a time: the grain is reentrant, and a second Load arriving while the first loads its slice would load
    // (and take a device for) another copy, leaking the first.
    private readonly SemaphoreSlim _loading = new(1, 1);

    private DeviceWorker Worker => _worker ??= new DeviceWorker($"shard {this.GetPrimaryKeyString()}");
    private string Key => this.GetPrimaryKeyString();

    public async Task<ShardDescription> Load(ShardAssignment assignment)
    {
        await _loading.WaitAsync();
        try { return await LoadInTurn(assignment); }
        finally { _loading.Release(); }
    }

    private async Task<ShardDescription> LoadInTurn(ShardAssignment assignment)
    {
        var current = _epoch;
        if (current is not null)
        {
            if (assignment.Epoch < current.Number)
                throw new StaleEpochException($"shard {Key} is in epoch {current.Number}; epoch {assignment.Epoch} is over");
            if (assignment.Epoch == current.Number && _slice!.Holds(assignment)) return Describe(_slice, current);
            current.End(new StaleEpochException($"shard {Key}: epoch {current.Number} ended by epoch {assignment.Epoch}"));
        }
        _epoch = null;
        var mailbox = _inbox.Begin(assignment.Epoch, new StaleEpochException($"shard {Key}: epoch {assignment.Epoch} began"));
        var previous = _slice;
        var previousCache = current?.Cache;
        var o = options.Value;
        var (slice, cache) = await Worker.Run(() =>
        {
            previousCache?.Dispose();
            var slice = previous is not null && previous.Holds(assignment) ? previous : LoadSlice(assignment);
            if (slice != previous)
            {
                previous?.Dispose();
                // The host tensors the slice was cut from (a whole embedding, the head's copy) are garbage now: their pages
                // go back before the KV pool is allocated, or the silo would peak at both.
                HostMemory.GiveBack();
            }
            var c = slice.Model.Config;
            int blocksPerSequence = (c.MaxSeqLen + o.KvBlockSize - 1) / o.KvBlockSize;
            return (slice, slice.Model.CreateCache(o.KvSequences * blocksPerSequence, o.KvBlockSize));
        });
        _slice = slice;
        slice.Lease.ReportMemory(slice.Model.WeightBytes, cache.Bytes, slice.Model.WorkspaceBytes);
        var group = assignment.TensorGroup.Length > 1
            ? new CollectiveGroup(new GrainGroupTransport(key => grains.GetGrain<IShardGrain>(key), assignment.TensorGroup, assignment.Rank, assignment.Epoch, mailbox))
            : null;
        _epoch = new Epoch(assignment, cache, mailbox, group, [new("model", ShardKey.ModelId(Key)), new("replica", assignment.Replica),
            new("stage", assignment.Stage), new("rank", assignment.Rank), new("silo", silo.Name)]);
        return Describe(slice, _epoch);
    }

    private LoadedSlice LoadSlice(ShardAssignment a)
    {
        var layout = ParallelLayout.Parse(a.Layout);
        ShardSpec SpecOf(ModelConfig config) => ShardingPlan.Create(config, layout).Get(a.Replica, a.Stage, a.Rank);
        // Only this stage's tensors, each layer cut to this rank's slices as it is read: a tensor-parallel rank never holds
        // all its layers whole (a whole model's weights at once, for a one-stage layout).
        var loaded = ModelSources.Load(a.Source, config => WeightFilter.Cutting(config, SpecOf(config)));
        var weights = ShardWeights.FromCutLoad(loaded.Config, loaded.Weights, SpecOf(loaded.Config), loaded.Source);
        Array.Clear(loaded.Weights.Layers);   // the slice holds what this shard keeps, and lets each layer go once it is on the device
        var lease = devices.Take(Key);
        try { return new LoadedSlice(a, lease, new TransformerModel(lease.Device, loaded.Config, weights, releaseHostWeights: true,
            loaded.ServingFormat(a.Source.Weights), KvFormats.Parse(a.Source.KvCache ?? "f32"))); }
        catch
        {
            lease.Dispose();
            throw;
        }
    }

    public async Task Forward(StageBatch batch)
    {
        var epoch = Current(batch.Epoch);
        var model = _slice!.Model;
        var a = epoch.Assignment;
        var tags = epoch.Tags;
        using var span = ClusterTelemetry.Source.StartActivity("shard.forward", ActivityKind.Internal, parentContext: default,
            tags: [.. tags, new("step", batch.Step), new("sequences", batch.Chunks.Length), new("tokens", batch.Chunks.Sum(c => c.Tokens.Length))]);
        await epoch.WaitTurn(batch.Step);
        long started = Stopwatch.GetTimestamp();
        Task<(StageOutput Output, int[] Hits)> compute;
        try
        {
            compute = Worker.Run(() => Run(model, epoch, batch));
        }
        finally
        {
            epoch.Advance();
        }
        var (output, hits) = await compute;
        ClusterTelemetry.ShardStepTime.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, tags);
        if (a.Stage == 0 && a.Rank == 0 && hits.Sum() is > 0 and int hitTokens) ClusterTelemetry.PrefixHitTokens.Add(hitTokens, tags[0]);
        using (output)
        {
            if (epoch.Assignment.NextStage is { } next)
            {
                byte[] hidden = MemoryMarshal.AsBytes(output.Span).ToArray();
                output.Dispose();   // back to the pool before the next stage's call: that call lasts as long as the rest of the pipeline
                await grains.GetGrain<IShardGrain>(next).Forward(batch with { Hidden = hidden, PrefixHits = hits });
            }
            else if (a.Rank == 0)   // the scheduler's call for them (SampledTokens) takes the tokens, not the earlier stages
            {
                var sampled = await Task.Run(() => SampleNextTokens(batch.Chunks, output, model.Config.VocabSize));   // off the device thread: the next step runs meanwhile
                epoch.Publish(batch.StepId, sampled);
            }
        }
    }

    /// <summary>
    /// A stage's output (logits or hidden states) in an array rented from the shared pool for one step: a fresh
    /// megabyte-sized array every step would cost its page faults each time. Dispose returns it (once).
    /// </summary>
    private sealed class StageOutput(int length) : IDisposable
    {
        private float[]? _array = length == 0 ? [] : ArrayPool<float>.Shared.Rent(length);

        public Span<float> Span => (_array ?? throw new ObjectDisposedException(nameof(StageOutput))).AsSpan(0, length);

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _array, null) is { Length: > 0 } array) ArrayPool<float>.Shared.Return(array);
        }
    }

    public Task<StageResult> SampledTokens(long epoch, Guid stepId)
    {
        var current = Current(epoch);
        if (current.Assignment.NextStage is not null || current.Assignment.Rank != 0)
            throw new InvalidOperationException($"shard {Key} is not its pipeline's last stage at rank 0: it samples no tokens");
        return current.Sampled(stepId);
    }

    /// <summary>
    /// The next token of each chunk that asks for one, sampled from its row of <paramref name="logits"/> (chunks, V) with
    /// the chunk's own generator state; -1 for the others; and the log-probabilities the chunks ask for. Rows are
    /// independent: they are sampled in parallel.
    /// </summary>
    private static StageResult SampleNextTokens(ForwardChunk[] chunks, StageOutput logits, int vocab)
    {
        if (logits.Span.Length != (long)chunks.Length * vocab)
            throw new InvalidOperationException($"the last stage computed {logits.Span.Length} logits for {chunks.Length} chunks of a {vocab}-token vocabulary");
        var tokens = new int[chunks.Length];
        var logprobs = chunks.Any(c => c.Sample is { TopLogprobs: >= 0 }) ? new TokenLogprobs?[chunks.Length] : null;
        Parallel.For(0, chunks.Length, i =>
        {
            if (chunks[i].Sample is not { } s)
            {
                tokens[i] = -1;
                return;
            }
            var row = logits.Span.Slice(i * vocab, vocab);
            float[]? raw = s.TopLogprobs >= 0 ? row.ToArray() : null;   // the sampler overwrites the row
            if (s.Generated is { Length: > 0 } generated) Sampler.ApplyPenalties(row, generated, s.PresencePenalty, s.FrequencyPenalty);
            if (s.Bias is { } bias)
                for (int j = 0; j < bias.Tokens.Length; j++) row[bias.Tokens[j]] += bias.Values[j];
            tokens[i] = new Sampler(new SamplingOptions(s.Temperature, s.TopP, s.TopK, s.Generator)).Sample(row);
            if (raw is null) return;
            var (chosen, top, topLogprobs) = Sampler.Logprobs(raw, tokens[i], s.TopLogprobs);
            logprobs![i] = new TokenLogprobs(chosen, top, topLogprobs);
        });
        return new StageResult(tokens, logprobs);
    }

    /// <summary>
    /// On the device thread: frees the ended sequences, maps the scheduler's sequence ids to cache entries (a new one
    /// takes its cached prefix: the first stage finds it, later stages must find the same), and runs the stage on the
    /// tokens past those prefixes. Returns the output and the prefix hits.
    /// </summary>
    private (StageOutput Output, int[] Hits) Run(TransformerModel model, Epoch epoch, StageBatch batch)
    {
        try { return RunStage(model, epoch, batch); }
        finally
        {
            var cache = epoch.Cache;
            ClusterTelemetry.ReportKvBlocks(Key, epoch.Tags, cache.TotalBlocks - cache.FreeBlocks, cache.FreeBlocks);
            _slice!.Lease.ReportMemory(model.WeightBytes, cache.Bytes, model.WorkspaceBytes);   // the scratch grows with the batch
        }
    }

    private static (StageOutput Output, int[] Hits) RunStage(TransformerModel model, Epoch epoch, StageBatch batch)
    {
        if (model.Spec.IsLastStage)   // a bad sampling request fails the step before it costs a forward
            foreach (var sample in batch.Chunks.Select(c => c.Sample).OfType<TokenSampling>())
            {
                new SamplingOptions(sample.Temperature, sample.TopP, sample.TopK, sample.Generator).Validate();
                InferenceSchedulerGrain.CheckSampling(sample.TopLogprobs, sample.PresencePenalty, sample.FrequencyPenalty, sample.Bias, model.Config.VocabSize);
                if (sample.Generated?.Any(t => (uint)t >= (uint)model.Config.VocabSize) == true)
                    throw new ArgumentOutOfRangeException(nameof(batch), $"a generated token outside the vocabulary of {model.Config.VocabSize}");
            }
        foreach (var ended in batch.Released)
            if (epoch.Sequences.Remove(ended, out int id)) epoch.Cache.Release(id);
        var hits = new int[batch.Chunks.Length];
        if (hits.Length == 0) return (new StageOutput(0), hits);
        var chunks = new SequenceChunk[batch.Chunks.Length];
        for (int i = 0; i < chunks.Length; i++)
        {
            var chunk = batch.Chunks[i];
            if (!epoch.Sequences.TryGetValue(chunk.Sequence, out int sequence))
            {
                epoch.Sequences[chunk.Sequence] = sequence = epoch.Cache.CreateSequence();
                int wanted = batch.PrefixHits?[i] ?? int.MaxValue;
                hits[i] = epoch.Cache.AttachPrefix(sequence, chunk.Tokens, wanted);
                if (batch.PrefixHits is not null && hits[i] != wanted)
                    throw new InvalidOperationException($"stage {model.Spec.Stage} holds {hits[i]} cached prompt tokens of a sequence, the first stage {wanted}");
            }
            chunks[i] = new SequenceChunk(sequence, chunk.Tokens[hits[i]..]);
        }
        var output = new StageOutput(model.OutputLength(chunks));
        try
        {
            model.ForwardInto(chunks, epoch.Cache, output.Span, MemoryMarshal.Cast<byte, float>(batch.Hidden), epoch.Group);
            return (output, hits);
        }
        catch
        {
            output.Dispose();
            throw;
        }
    }

    public Task Deliver(long epoch, int fromRank, long tag, Immutable<byte[]> data)
    {
        _inbox.Deliver(epoch, fromRank, tag, data.Value);
        return Task.CompletedTask;
    }

    public Task Ping() => Task.CompletedTask;

    public Task<ShardDescription?> Describe() =>
        _slice is not { } slice || _epoch is not { } epoch
            ? Task.FromResult<ShardDescription?>(null)
            : Worker.Run<ShardDescription?>(() => Describe(slice, epoch));

    private Epoch Current(long epoch) =>
        _epoch is { } current && current.Number == epoch
            ? current
            : throw new StaleEpochException($"shard {Key} is in epoch {_epoch?.Number.ToString() ?? "none (not loaded)"}, the step is for epoch {epoch}");

    private ShardDescription Describe(LoadedSlice slice, Epoch epoch) => new(
        Key, slice.Assignment.Source.ToString(), ModelSources.Describe(slice.Model.Config), $"{slice.Lease.Spec} {slice.Lease.Device.Info.Name}",
        silo.Name, epoch.Cache.FreeBlocks, epoch.Cache.TotalBlocks, epoch.Cache.ActiveSequences,
        slice.Model.Config.MaxSeqLen, epoch.Cache.BlockSize, slice.Model.Spec.ToString(), epoch.Number,
        epoch.Cache.CachedBlocks, epoch.Cache.PrefixHitTokens);

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _epoch?.End(new StaleEpochException($"shard {Key} deactivated: {reason}"));
        ClusterTelemetry.ForgetKvBlocks(Key);
        _worker?.Dispose();   // waits for queued device work, so the model can be freed here
        _epoch?.Cache.Dispose();
        _slice?.Dispose();
        _epoch = null;
        _slice = null;
        return base.OnDeactivateAsync(reason, cancellationToken);
    }
}
