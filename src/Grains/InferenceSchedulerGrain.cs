// The per-model scheduler: continuous batching over the model's pipelines. Every request becomes a sequence; each
// step carries the decode token of every ready sequence plus prompt chunks up to MaxBatchTokens (chunked prefill), so
// requests join and leave the running batch at every step. A pipeline of S stages runs S steps at once ("lanes"),
// so its stages overlap: decode steps of different sequences interleave, and a long prompt's chunks follow each other
// down the pipeline GPipe-style (chunk k+1 enters stage 0 while chunk k is in stage 1; every stage takes steps in
// order, so each chunk finds the K and V of the ones before it). KV room is reserved at admission (prompt + max tokens), and
// a sequence's blocks go back to every shard's free list (or prefix cache) when it finishes or its client goes away:
// the next step carries the release, so every shard's cache sees the same history and finds the same prefixes.
// Failover: when a step fails or times out, the replica starts a new epoch, its shards are placed and loaded again,
// and its sequences are replayed from their tokens so far (prompt + generated), so clients see no error unless the
// pipeline stays down past FailoverTimeout (ModelUnavailableException: the gateway answers 503), and no sequence is
// replayed more than MaxStepFailures times (a step that fails whatever silo runs it fails its sequences instead).
// Detection: a step's timeout comes from the replica's measured step times (StepClock), and the scheduler watches the
// cluster's membership: when a silo holding one of a replica's shards leaves (Stopping or Dead), the replica's steps in
// flight fail at once, whatever Orleans' response timeout, and the failover starts.
// Admission: at most MaxWaiting requests wait (then ModelOverloadedException: 429); a waiting request that does not fit
// lets smaller ones pass at most MaxOvertakes times; prompt chunks share each step's token budget, shortest first, so a
// long prompt neither blocks short ones nor starves. Prompts are tokenized off the grain's turn, after a length check.
// The grain is reentrant: requests, lanes and failover interleave at awaits on the grain's one thread.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;
using System.Threading.Channels;
using Orleans.Concurrency;
using Cluster.Compute;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Parallel;
using Cluster.Model.Tokenizers;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

/// <summary>What a scheduler keeps in durable storage: the serving it was given through the API (configured ones come from configuration).</summary>
[GenerateSerializer]
public sealed class SchedulerRecord
{
    [Id(0)] public ModelServing? Serving { get; set; }
}

[Reentrant]
public sealed class InferenceSchedulerGrain(
    IGrainFactory grains, ILocalSiloDetails silo, IClusterMembershipService membership, IOptions<SchedulerOptions> options,
    ILogger<InferenceSchedulerGrain> log,
    [PersistentState("scheduler", SiloBuilderExtensions.RecordStorage)] IPersistentState<SchedulerRecord> stored)
    : Grain, IInferenceSchedulerGrain
{
    private sealed class Sequence(GenerationRequest request, int[] prompt, int maxTokens, int blocks)
    {
        public Guid Id { get; } = Guid.NewGuid();
        public List<int> Tokens { get; } = [.. prompt];   // prompt + generated
        public int PromptLength => prompt.Length;
        public int MaxTokens => maxTokens;
        public int Blocks => blocks;
        public GenerationRequest Request => request;
        /// <summary>The sequence's copy of its generator: the last stage samples from its state (Sampling) and this one moves past each draw.</summary>
        public Sampler Sampler { get; } = new(new SamplingOptions(request.Temperature, request.TopP, request.TopK, request.Seed));
        /// <summary>What the last stage needs to pick this sequence's next token.</summary>
        public TokenSampling Sampling => new(request.Temperature, request.TopP, request.TopK, Sampler.Generator, request.TopLogprobs,
            request.PresencePenalty, request.FrequencyPenalty,
            request.PresencePenalty == 0 && request.FrequencyPenalty == 0 ? null : [.. Tokens.Skip(PromptLength)], request.LogitBias);
        public Decoder Decoder { get; } = Encoding.UTF8.GetDecoder();
        public Channel<GeneratedChunk> Output { get; } = Channel.CreateUnbounded<GeneratedChunk>(new() { SingleReader = true, SingleWriter = true });
        public Replica? Replica { get; set; }
        /// <summary>Tokens whose K and V the replica's shards hold.</summary>
        public int Cached { get; set; }
        /// <summary>Tokens sent in steps so far (Cached plus those in flight).</summary>
        public int Scheduled { get; set; }
        public bool InFlight => Scheduled > Cached;
        /// <summary>The token sampled after its last token, by the step that carried it (steps may answer out of order).</summary>
        public int NextToken { get; set; }
        /// <summary>NextToken's log-probabilities, where the request asks for them.</summary>
        public TokenLogprobs? NextLogprobs { get; set; }
        public bool Cancelled { get; set; }
        public bool Finished { get; set; }
        /// <summary>Failed steps this sequence was in (it is replayed after each, up to MaxStepFailures).</summary>
        public int StepFailures { get; set; }
        /// <summary>Sequences admitted ahead of it while it did not fit.</summary>
        public int Overtaken { get; set; }
        /// <summary>The request's trace context: each step that carries the sequence links to it.</summary>
        public ActivityContext Trace { get; } = Activity.Current?.Context ?? default;
        public long Arrived { get; } = Stopwatch.GetTimestamp();
        /// <summary>When its last token was streamed (0: none yet).</summary>
        public long LastToken { get; set; }
        public int Generated => Tokens.Count - PromptLength;

        /// <summary>Appends a generated token; returns the text it completes (a partial UTF-8 character waits in the decoder).</summary>
        public string Append(int token, ITokenizer tokenizer)
        {
            byte[] bytes = tokenizer.DecodeBytes(Tokens[^1], token);
            var chars = new char[Decoder.GetCharCount(bytes, flush: false)];
            Decoder.GetChars(bytes, chars, flush: false);
            Tokens.Add(token);
            return new string(chars);
        }

        /// <summary>Takes up a generation after its delivered tokens: they join the sequence, the sampler and the UTF-8 decoder move past them.</summary>
        public void ResumeAfter(int[] delivered, ITokenizer tokenizer)
        {
            foreach (int token in delivered) Append(token, tokenizer);
            Sampler.Skip(delivered.Length);
        }
        /// <summary>Tokens not yet sent in any step.</summary>
        public int Unscheduled => Tokens.Count - Scheduled;
    }

    private sealed class Replica(int index, string[][] stageKeys)
    {
        public int Index => index;
        /// <summary>(stage, rank): a recovery gives the shards of lost silos new keys (MoveShardsOffLostSilos).</summary>
        public string[][] StageKeys => stageKeys;
        public IEnumerable<string> AllKeys => stageKeys.SelectMany(k => k);
        public long Epoch { get; set; }
        public long NextStep { get; set; }
        public int Lanes { get; set; }
        public bool Recovering { get; set; }
        public int ReservedBlocks { get; set; }
        public List<Sequence> Running { get; } = [];
        /// <summary>Ended sequences whose blocks the next step frees on every shard.</summary>
        public List<Guid> Released { get; } = [];
        public Queue<Sequence> Waiting { get; } = [];
        /// <summary>The silos its shards answered the epoch's load from: one leaving the cluster fails its steps in flight.</summary>
        public SiloAddress[] Silos { get; set; } = [];
        /// <summary>The epoch's measured steps, which give the next step its timeout.</summary>
        public StepClock StepTimes { get; } = new();
        /// <summary>The silo (by name) each shard key answered its last load from.</summary>
        public Dictionary<string, string> ShardSilos { get; } = [];
        /// <summary>Silos (by name) found gone by a probe, a failed load or the membership: the next recovery moves their shards.</summary>
        public HashSet<string> LostSilos { get; } = [];
        /// <summary>Shard keys given out by recoveries so far (ShardKey's generation).</summary>
        public int Generation { get; set; }
    }

    private ModelServing? _serving;
    private ITokenizer? _tokenizer;
    // Steps down the pipeline whose tokens have not come back from the last stage yet (IShardGrain.SampledTokens), by
    // StageBatch.StepId, with when each was sent (Stopwatch ticks); failing one's Tokens fails the step.
    private readonly Dictionary<Guid, (Replica Replica, TaskCompletionSource<StageResult> Tokens, long Sent)> _awaitingTokens = [];
    private readonly CancellationTokenSource _deactivating = new();
    private int _longestPieceBytes;
    private Replica[] _replicas = [];
    private ShardDescription? _shape;   // rank 0 of the first stage: context, KV blocks (every shard has as many)
    private long _lastEpoch;
    private Task<ShardDescription>? _servingConfigured;

    private string ModelId => this.GetPrimaryKeyString();
    private KeyValuePair<string, object?> ModelTag => new("model", ModelId);
    private SchedulerOptions Options => options.Value;

    private readonly Guid _incarnation = Guid.NewGuid();

    public Task<Guid> Incarnation() => Task.FromResult(_incarnation);

    // The running generations by their callers' stream ids (GenerationRequest.Stream).
    private readonly Dictionary<Guid, Sequence> _streams = [];

    public Task<int> StreamProgress(Guid stream) => Task.FromResult(_streams.TryGetValue(stream, out var sequence) ? sequence.Generated : -1);

    public override Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _ = WatchMembership(_deactivating.Token);
        _ = WatchOverdueSteps(_deactivating.Token);
        return base.OnActivateAsync(cancellationToken);
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _deactivating.Cancel();
        return base.OnDeactivateAsync(reason, cancellationToken);
    }

    /// <summary>
    /// Fails the steps in flight of each replica one of whose shards' silos has left the cluster (Stopping: it stopped
    /// without handing its work over; Dead: its peers declared it dead), so the replica recovers now rather than when a
    /// call to the lost silo times out. The loop runs on the grain's turn: its awaits resume on the activation.
    /// </summary>
    private async Task WatchMembership(CancellationToken stop)
    {
        try
        {
            await foreach (var snapshot in membership.MembershipUpdates.WithCancellation(stop))
                foreach (var replica in _replicas)
                    if (replica.Silos.FirstOrDefault(s => snapshot.GetSiloStatus(s) is SiloStatus.Stopping or SiloStatus.Dead) is { } lost)
                    {
                        if (snapshot.Members.TryGetValue(lost, out var member)) replica.LostSilos.Add(member.Name);
                        FailStepsInFlight(replica, new SiloUnavailableException(
                            $"silo {lost} holding a shard of model '{ModelId}' replica {replica.Index} is {snapshot.GetSiloStatus(lost)}"));
                    }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
        catch (Exception e)
        {
            log.LogError(e, "model {Model}: watching the cluster's membership failed; lost silos are found by step timeouts only", ModelId);
        }
    }

    private void FailStepsInFlight(Replica replica, Exception error)
    {
        // A list first: a failed step's continuation may run inline and remove itself from the dictionary.
        foreach (var (owner, tokens, _) in _awaitingTokens.Values.ToList())
            if (owner == replica) tokens.TrySetException(error);
    }

    /// <summary>
    /// Every ShardProbeInterval, pings the shards of each replica with a step in flight for longer than that. A killed
    /// silo process refuses the ping's connection at once, while a call it had already taken stays pending until the
    /// cluster declares the silo dead (seconds) or the response timeout: a refused ping fails the replica's steps in
    /// flight now, and marks the silo lost so the recovery moves its shards. A ping that merely times out (a busy
    /// silo) decides nothing. The loop runs on the grain's turn.
    /// </summary>
    private async Task WatchOverdueSteps(CancellationToken stop)
    {
        try
        {
            using var timer = new PeriodicTimer(Options.ShardProbeInterval);
            while (await timer.WaitForNextTickAsync(stop))
            {
                long overdue = Stopwatch.GetTimestamp() - (long)(Options.ShardProbeInterval.TotalSeconds * Stopwatch.Frequency);
                var probed = _replicas.Where(r => !r.Recovering && _awaitingTokens.Values.Any(s => s.Replica == r && s.Sent < overdue)).ToList();
                await Task.WhenAll(probed.Select(ProbeShards));
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
        catch (Exception e)
        {
            log.LogError(e, "model {Model}: probing the shards of overdue steps failed; lost silos are found by the membership and step timeouts only", ModelId);
        }
    }

    /// <summary>The silo could not take the call at all (its process is gone), as opposed to a call that is slow or failed there.</summary>
    private static bool IsRefusal(Exception error) => error is OrleansMessageRejectionException or Orleans.Runtime.Messaging.ConnectionFailedException;

    private async Task ProbeShards(Replica replica)
    {
        long epoch = replica.Epoch;
        string[] keys = [.. replica.AllKeys];
        var pings = keys.Select(key => grains.GetGrain<IShardGrain>(key).Ping().WaitAsync(Options.ShardProbeTimeout)).ToArray();
        try { await Task.WhenAll(pings); }
        catch (Exception) { }   // each ping's own outcome is read below
        if (replica.Epoch != epoch) return;
        for (int i = 0; i < keys.Length; i++)
        {
            if (pings[i].Exception?.InnerException is not { } refused || !IsRefusal(refused)) continue;
            if (replica.ShardSilos.TryGetValue(keys[i], out var silo)) replica.LostSilos.Add(silo);
            else silo = "unknown";
            log.LogWarning("model {Model} replica {Replica}: shard {Shard} on silo {Silo} refused a probe ({Error}); failing the steps in flight",
                ModelId, replica.Index, keys[i], silo, refused.GetType().Name);
            FailStepsInFlight(replica, new SiloUnavailableException($"shard {keys[i]} on silo {silo} refused a probe: {refused.Message}"));
        }
    }

    public async Task<ShardDescription> Serve(ModelServing serving)
    {
        if (_serving == serving && _shape is not null) return _shape;   // already serving; a lost shard comes back by failover
        if (_serving != serving)
        {
            var layout = ParallelLayoutOf(serving);
            foreach (var replica in _replicas) FailAll(replica, new ModelUnavailableException($"model '{ModelId}' is being served anew"));
            _tokenizer = await Task.Run(() => ModelSources.LoadTokenizer(serving.Source));
            _longestPieceBytes = Enumerable.Range(0, _tokenizer.VocabSize).Max(id => _tokenizer.DecodeBytes(-1, id).Length);
            int shard = 0;
            string? Pin() => serving.Silos is { Length: > 0 } silos ? silos[shard++ % silos.Length] : null;
            _replicas = [.. Enumerable.Range(0, layout.DataParallel).Select(r => new Replica(r,
                [.. Enumerable.Range(0, layout.PipelineStages).Select(s =>
                    Enumerable.Range(0, layout.StageRanks).Select(t => ShardKey.Create(ModelId, r, s, t, Pin())).ToArray())]))];
            _serving = serving;
        }
        foreach (var replica in _replicas) await Load(replica);
        await Register();
        if (!Options.ConfiguredModels.ContainsKey(ModelId) && stored.State.Serving != _serving)
        {
            stored.State.Serving = _serving;   // served through the API: remembered, so a later activation serves it again
            await stored.WriteStateAsync();
        }
        return _shape!;
    }

    /// <summary>Tells the registry the shards' new keys, retrying (on the grain's turn) until FailoverTimeout while it comes back.</summary>
    private async Task RegisterMovedShards()
    {
        var deadline = DateTime.UtcNow + Options.FailoverTimeout;
        while (true)
        {
            try
            {
                await Register();
                return;
            }
            catch (Exception e) when (DateTime.UtcNow < deadline && e is not ArgumentException)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(500));
            }
            catch (Exception e)
            {
                log.LogWarning(e, "model {Model}: the registry was not told the moved shards' keys", ModelId);
                return;
            }
        }
    }

    /// <summary>Tells the model registry (behind /v1/models) the model's shape and its shards' keys.</summary>
    private Task Register() => grains.GetGrain<IModelRegistryGrain>(0).Register(
        new ModelEntry(ModelId, _shape!.Config, ParallelLayoutOf(_serving!).ToString(), [.. _replicas.SelectMany(r => r.AllKeys)]));

    private static ParallelLayout ParallelLayoutOf(ModelServing serving)
    {
        try { return ParallelLayout.Parse(serving.Layout); }
        catch (FormatException e) { throw new ArgumentException(e.Message, nameof(serving), e); }
    }

    /// <summary>Starts a new epoch on every shard of the replica (each loads its slice where it is not loaded yet).</summary>
    private async Task Load(Replica replica)
    {
        var serving = _serving!;
        long epoch = _lastEpoch = Math.Max(_lastEpoch + 1, DateTime.UtcNow.Ticks);   // above any epoch an earlier activation used
        replica.Epoch = epoch;
        replica.NextStep = 0;
        replica.StepTimes.Reset();
        var keys = replica.StageKeys;
        var loads = new List<Task<ShardDescription>>();
        for (int stage = 0; stage < keys.Length; stage++)
            for (int rank = 0; rank < keys[stage].Length; rank++)
            {
                var assignment = new ShardAssignment(serving.Source, serving.Layout, replica.Index, stage, rank, keys[stage],
                    stage + 1 < keys.Length ? keys[stage + 1][rank] : null, epoch);
                loads.Add(grains.GetGrain<IShardGrain>(keys[stage][rank]).Load(assignment));
            }
        string[] loadedKeys = [.. keys.SelectMany(k => k)];   // in the order of loads
        ShardDescription[] descriptions;
        try { descriptions = await Task.WhenAll(loads); }
        catch
        {
            for (int i = 0; i < loads.Count; i++)   // a silo that refuses a load is gone: the next attempt moves its shard
                if (loads[i].Exception?.InnerException is { } error && IsRefusal(error) && replica.ShardSilos.TryGetValue(loadedKeys[i], out var silo))
                    replica.LostSilos.Add(silo);
            throw;
        }
        if (replica.Epoch != epoch) return;
        _shape = descriptions[0];
        replica.ShardSilos.Clear();
        foreach (var d in descriptions) replica.ShardSilos[d.Key] = d.Silo;
        replica.Silos = HostingSilos(replica.ShardSilos.Values);
    }

    /// <summary>
    /// The active silos the shards answered from, found by name in the membership (the newest generation of a name). A
    /// silo this one has not heard of yet is left out: a step held up there is caught by its timeout instead.
    /// </summary>
    private SiloAddress[] HostingSilos(IEnumerable<string> names)
    {
        var active = membership.CurrentSnapshot.Members.Values.Where(m => m.Status == SiloStatus.Active).ToList();
        return [.. names.Distinct()
            .Select(name => active.Where(m => m.Name == name).MaxBy(m => m.SiloAddress.Generation)?.SiloAddress).OfType<SiloAddress>()];
    }

    public async Task<int[]> Tokenize(string prompt, CancellationToken cancellation)
    {
        var shape = await ServingShape();
        return await Encode(prompt, shape, cancellation);
    }

    /// <summary>
    /// The prompt's tokens, encoded on the thread pool so the grain's turn stays free. Every token decodes to at most
    /// the vocabulary's longest piece, so a prompt of more UTF-8 bytes than the context times that cannot fit: it is
    /// refused before any work.
    /// </summary>
    private async Task<int[]> Encode(string prompt, ShardDescription shape, CancellationToken cancellation)
    {
        long limit = (long)shape.MaxSeqLen * Math.Max(1, _longestPieceBytes);
        if (System.Text.Encoding.UTF8.GetByteCount(prompt) > limit)
            throw new ArgumentException($"the prompt is longer than the model's context of {shape.MaxSeqLen} tokens could hold");
        var tokenizer = Tokenizer;
        return await Task.Run(() => tokenizer.Encode(prompt, addBos: true), cancellation);
    }

    private ITokenizer Tokenizer => _tokenizer ?? throw new ModelNotServedException($"The model '{ModelId}' does not exist.");

    /// <summary>
    /// The served model's shape; a fresh activation (its previous one died with its silo) serves again what its
    /// configuration or its durable record says first.
    /// </summary>
    private async Task<ShardDescription> ServingShape()
    {
        if (_shape is not null) return _shape;
        var known = Options.ConfiguredModels.GetValueOrDefault(ModelId) ?? stored.State.Serving
            ?? throw new ModelNotServedException($"The model '{ModelId}' does not exist.");
        var serving = _servingConfigured ??= Serve(known);   // once, however many requests arrive meanwhile
        try { return await serving; }
        catch
        {
            if (_servingConfigured == serving) _servingConfigured = null;   // a failed start is not kept: the next request tries again
            throw;
        }
    }

    /// <summary>The most alternatives a token's log-probabilities list (OpenAI's top_logprobs limit).</summary>
    public const int MaxTopLogprobs = 20;

    /// <summary>The most tokens a logit bias lists (OpenAI's limit).</summary>
    public const int MaxBiasedTokens = 300;

    /// <summary>
    /// Throws ArgumentException unless the sampling asks for -1 to 20 alternatives' log-probabilities, penalties from -2
    /// to 2, and a logit bias of at most 300 distinct tokens of the vocabulary with values from -100 to 100: checked where
    /// a request enters the scheduler and again by the shard that samples (a grain call from outside).
    /// </summary>
    public static void CheckSampling(int topLogprobs, float presencePenalty, float frequencyPenalty, LogitBias? bias, int vocab)
    {
        if (topLogprobs is < -1 or > MaxTopLogprobs)
            throw new ArgumentException($"top logprobs must be from 0 to {MaxTopLogprobs} (or -1 for none), got {topLogprobs}");
        if (!(presencePenalty is >= -2 and <= 2) || !(frequencyPenalty is >= -2 and <= 2))
            throw new ArgumentException($"presence and frequency penalties must be from -2 to 2, got {presencePenalty} and {frequencyPenalty}");
        if (bias is null) return;
        if (bias.Tokens.Length != bias.Values.Length || bias.Tokens.Length > MaxBiasedTokens)
            throw new ArgumentException($"a logit bias lists at most {MaxBiasedTokens} tokens, each with one value");
        if (bias.Tokens.Any(t => (uint)t >= (uint)vocab) || bias.Tokens.Distinct().Count() != bias.Tokens.Length)
            throw new ArgumentException($"logit bias tokens must be distinct ids of the vocabulary of {vocab}");
        if (bias.Values.Any(v => !(v is >= -100 and <= 100)))
            throw new ArgumentException("logit bias values must be from -100 to 100");
    }

    public Task<SchedulerStatus> Status() => Task.FromResult(new SchedulerStatus(silo.Name,
        [.. _replicas.SelectMany(r => r.AllKeys)], _replicas.Sum(r => r.Running.Count), _replicas.Sum(r => r.Waiting.Count)));

    public async IAsyncEnumerable<GeneratedChunk> Generate(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellation)
    {
        var shape = await ServingShape();
        CheckSampling(request.TopLogprobs, request.PresencePenalty, request.FrequencyPenalty, request.LogitBias, Tokenizer.VocabSize);
        int[] prompt = request.PromptTokens ?? await Encode(request.Prompt, shape, cancellation);
        int[] resume = request.Resume ?? [];
        if (prompt.Length == 0) throw new ArgumentException("the prompt has no tokens (not even BOS)");
        if (prompt.Length >= shape.MaxSeqLen)
            throw new ArgumentException($"the prompt has {prompt.Length} tokens; the model's context is {shape.MaxSeqLen}");
        int maxTokens = Math.Min(request.MaxTokens, shape.MaxSeqLen - prompt.Length);
        if (maxTokens <= resume.Length) yield break;
        int vocab = Tokenizer.VocabSize;
        foreach (int token in prompt.Concat(resume))
            if ((uint)token >= (uint)vocab) throw new ArgumentException($"prompt token {token} is outside the vocabulary of {vocab}");
        var sequence = new Sequence(request, prompt, maxTokens, (prompt.Length + maxTokens + shape.KvBlockSize - 1) / shape.KvBlockSize);
        if (sequence.Blocks > shape.TotalKvBlocks)
            throw new ArgumentException($"prompt and max tokens need {sequence.Blocks} KV blocks; each shard's cache has {shape.TotalKvBlocks}");
        if (_replicas.Sum(r => r.Waiting.Count) >= Options.MaxWaiting)
        {
            ClusterTelemetry.Requests.Add(1, ModelTag, new("outcome", "refused"));
            throw new ModelOverloadedException($"model '{ModelId}' has {Options.MaxWaiting} requests waiting already; retry shortly", Options.RetryAfterSeconds);
        }
        sequence.ResumeAfter(resume, Tokenizer);
        var replica = _replicas.MinBy(r => (r.Recovering ? 1 : 0, r.Running.Count + r.Waiting.Count))!;
        sequence.Replica = replica;
        replica.Waiting.Enqueue(sequence);
        ClusterTelemetry.Waiting.Add(1, ModelTag);
        Kick(replica);
        if (request.Stream != Guid.Empty) _streams[request.Stream] = sequence;
        try
        {
            await foreach (var chunk in sequence.Output.Reader.ReadAllAsync(cancellation)) yield return chunk;
        }
        finally
        {
            if (!sequence.Finished) Cancel(sequence);
            if (_streams.TryGetValue(request.Stream, out var current) && current == sequence) _streams.Remove(request.Stream);
        }
    }

    /// <summary>Starts lanes (up to one per pipeline stage) while the replica has work no lane carries.</summary>
    private void Kick(Replica replica)
    {
        int depth = replica.StageKeys.Length;
        while (!replica.Recovering && replica.Lanes < depth &&
               (replica.Waiting.Count > 0 || replica.Released.Count > 0 || replica.Running.Any(s => s.Unscheduled > 0)))
        {
            replica.Lanes++;
            _ = RunLane(replica);
        }
    }

    private async Task RunLane(Replica replica)
    {
        // A lane outlives the request whose arrival started it: its steps choose their traces themselves (RunStep).
        Activity.Current = null;
        try
        {
            while (!replica.Recovering)
            {
                Admit(replica);
                var batch = NextBatch(replica);
                Guid[] released = [.. replica.Released];
                replica.Released.Clear();
                if (batch.Count == 0 && released.Length == 0) break;
                await RunStep(replica, batch, released);
            }
        }
        catch (Exception e)
        {
            log.LogError(e, "model {Model} replica {Replica}: lane failed", ModelId, replica.Index);
            FailAll(replica, e);
        }
        finally
        {
            replica.Lanes--;
        }
    }

    /// <summary>
    /// Moves waiting sequences into the running set, in arrival order, while their KV reservations fit. One that does not
    /// fit yet lets later ones pass until it has been overtaken MaxOvertakes times; then admission waits for it.
    /// </summary>
    private void Admit(Replica replica)
    {
        int capacity = _shape!.TotalKvBlocks;
        var stillWaiting = new Queue<Sequence>();
        Sequence? blocked = null;   // the first that did not fit
        while (replica.Waiting.TryDequeue(out var next))
        {
            bool fits = replica.ReservedBlocks + next.Blocks <= capacity;
            if (fits && (blocked is null || blocked.Overtaken < Options.MaxOvertakes))
            {
                if (blocked is not null) blocked.Overtaken++;
                replica.ReservedBlocks += next.Blocks;
                replica.Running.Add(next);
                ClusterTelemetry.Waiting.Add(-1, ModelTag);
                ClusterTelemetry.Running.Add(1, ModelTag);
                ClusterTelemetry.PromptTokens.Add(next.PromptLength, ModelTag);
                continue;
            }
            blocked ??= next;
            stillWaiting.Enqueue(next);
        }
        foreach (var sequence in stillWaiting) replica.Waiting.Enqueue(sequence);
    }

    /// <summary>
    /// The next step: every ready decode token first, then prompt chunks sharing what is left of the token budget:
    /// shortest remaining prompt first, each taking at most an even share of what is left, so short prompts finish in
    /// one step and a long one still advances every step.
    /// </summary>
    private List<(Sequence Sequence, ForwardChunk Chunk, bool Last)> NextBatch(Replica replica)
    {
        var batch = new List<(Sequence, ForwardChunk, bool)>();
        int budget = Math.Max(1, Options.MaxBatchTokens);
        void Take(Sequence sequence, int n)
        {
            budget -= n;
            bool last = n == sequence.Unscheduled;   // the step ends with its latest token: the last stage samples the next
            batch.Add((sequence, new ForwardChunk(sequence.Id, sequence.Tokens.GetRange(sequence.Scheduled, n).ToArray(), last ? sequence.Sampling : null), last));
            sequence.Scheduled += n;
        }
        static bool Decoding(Sequence s) => s.Cached > 0 && s.Unscheduled == 1;
        // A pipeline's decoding sequences split evenly over its lanes (one per stage): each stage then works on one lane's
        // batch while the next stage works on another's, rather than every sequence riding one lane while the others idle.
        int decoding = replica.Running.Count(s => s.Scheduled >= s.PromptLength);
        int laneShare = (decoding + replica.StageKeys.Length - 1) / replica.StageKeys.Length;
        foreach (var sequence in replica.Running.Where(s => s.Unscheduled > 0 && Decoding(s)).Take(laneShare))
        {
            if (budget == 0) return batch;
            Take(sequence, 1);
        }
        var prefills = replica.Running.Where(s => s.Unscheduled > 0 && !Decoding(s)).OrderBy(s => s.Unscheduled).ToList();
        int[] shares = PromptShares([.. prefills.Select(s => s.Unscheduled)], budget);
        for (int i = 0; i < prefills.Count; i++)
            if (shares[i] > 0) Take(prefills[i], shares[i]);
        return batch;
    }

    /// <summary>
    /// Tokens each waiting prompt gets from a step's <paramref name="budget"/>, the prompts ordered by what they have
    /// left (ascending): each takes at most an even share of what is still unspent, so short prompts finish in one step
    /// and pass what they leave to the longer ones, and every prompt advances while the budget has a token for each.
    /// </summary>
    public static int[] PromptShares(IReadOnlyList<int> remaining, int budget)
    {
        var shares = new int[remaining.Count];
        for (int i = 0; i < remaining.Count && budget > 0; i++)
        {
            shares[i] = Math.Min(remaining[i], Math.Max(1, budget / (remaining.Count - i)));
            budget -= shares[i];
        }
        return shares;
    }

    /// <summary>One step down the pipeline: frees <paramref name="released"/>, runs the chunks, streams the tokens the last stage sampled.</summary>
    private async Task RunStep(Replica replica, List<(Sequence Sequence, ForwardChunk Chunk, bool Last)> batch, Guid[] released)
    {
        long epoch = replica.Epoch, step = replica.NextStep++;
        var stepId = Guid.NewGuid();
        var stageBatch = new StageBatch(epoch, step, [.. batch.Select(b => b.Chunk)], [], released, StepId: stepId);
        var replicaTags = new TagList { ModelTag, { "replica", replica.Index } };
        int stepTokens = batch.Sum(b => b.Chunk.Tokens.Length);
        // A step that carries one request's sequences only is part of that request's trace (a lone completion shows every
        // step and shard hop under it); a step shared by several requests is a trace of its own, linked from each.
        bool traced = ClusterTelemetry.Source.HasListeners();
        ActivityContext[] traces = traced ? [.. batch.Select(b => b.Sequence.Trace).Where(c => c != default).Distinct()] : [];
        using var span = traced
            ? ClusterTelemetry.Source.StartActivity("serving.step", ActivityKind.Internal, parentContext: traces.Length == 1 ? traces[0] : default,
                tags: [ModelTag, new("replica", replica.Index), new("step", step), new("sequences", batch.Count), new("tokens", stepTokens)],
                links: traces.Length > 1 ? [.. traces.Select(c => new ActivityLink(c))] : null)
            : null;
        long started = Stopwatch.GetTimestamp();
        StageResult result;
        var delivered = new TaskCompletionSource<StageResult>();
        _awaitingTokens[stepId] = (replica, delivered, started);
        try
        {
            // The tokens come straight from the last stage (asked for as the step is sent); the calls down the pipeline
            // complete after that, and fail if a stage did. Whichever comes first decides: the step is done once its
            // tokens are here.
            _ = grains.GetGrain<IShardGrain>(replica.StageKeys[^1][0]).SampledTokens(epoch, stepId).ContinueWith(sampled =>
            {
                if (sampled.IsCompletedSuccessfully) delivered.TrySetResult(sampled.Result);
                else delivered.TrySetException(sampled.Exception?.InnerExceptions ?? [new TaskCanceledException(sampled)]);
            }, TaskScheduler.Default);
            var pipeline = Task.WhenAll(replica.StageKeys[0].Select(key => grains.GetGrain<IShardGrain>(key).Forward(stageBatch)));
            var timeout = replica.StepTimes.TimeoutFor(stepTokens, Options);
            var first = await Task.WhenAny(delivered.Task, pipeline).WaitAsync(timeout);
            if (first == pipeline) await pipeline;   // throws the stage's failure; after a success the tokens are on their way
            else _ = pipeline.ContinueWith(t => t.Exception, TaskScheduler.Default);   // its late failure is observed, not awaited
            result = await delivered.Task.WaitAsync(timeout);
            CheckTokens(result, batch, step);
        }
        catch (Exception e) when (e is not ArgumentException)
        {
            if (replica.Epoch != epoch) return;   // a failover already replays these sequences
            foreach (var (sequence, _, _) in batch)
                if (++sequence.StepFailures > Options.MaxStepFailures)
                    Finish(sequence, new ModelUnavailableException(
                        $"model '{ModelId}': a step of this request failed {sequence.StepFailures} times ({e.GetType().Name}); it is not replayed again"));
            await Recover(replica, e);
            return;   // the failover replays the rest
        }
        finally
        {
            _awaitingTokens.Remove(stepId);
        }
        if (replica.Epoch != epoch) return;   // a failover started while this step ran: its sequences replay
        var elapsed = Stopwatch.GetElapsedTime(started);
        replica.StepTimes.Record(elapsed, stepTokens);
        ClusterTelemetry.StepTime.Record(elapsed.TotalSeconds, replicaTags);
        ClusterTelemetry.StepTokens.Record(stepTokens, replicaTags);

        var finished = new List<Sequence>();
        for (int i = 0; i < batch.Count; i++)
        {
            var (sequence, chunk, last) = batch[i];
            sequence.Cached += chunk.Tokens.Length;
            if (last) (sequence.NextToken, sequence.NextLogprobs) = (result.Tokens[i], result.Logprobs?[i]);
            if (sequence.InFlight) continue;   // another chunk of its prompt is still in the pipeline
            if (sequence.Cancelled) finished.Add(sequence);
            else if (sequence.Unscheduled == 0 && Emit(sequence, sequence.NextToken, sequence.NextLogprobs)) finished.Add(sequence);   // a token only once its last chunk is in
        }
        foreach (var sequence in finished) Finish(sequence);
        Kick(replica);
    }

    /// <summary>A token for every chunk that asked for one, each in the vocabulary; else the step failed.</summary>
    private void CheckTokens(StageResult result, List<(Sequence Sequence, ForwardChunk Chunk, bool Last)> batch, long step)
    {
        if (result.Tokens.Length != batch.Count)
            throw new InvalidDataException($"step {step}: the last stage delivered {result.Tokens.Length} tokens for {batch.Count} chunks");
        int vocab = Tokenizer.VocabSize;
        for (int i = 0; i < batch.Count; i++)
        {
            if (!batch[i].Last) continue;
            if ((uint)result.Tokens[i] >= (uint)vocab)
                throw new InvalidDataException($"step {step}: the last stage sampled token {result.Tokens[i]}, outside the vocabulary of {vocab}");
            int asked = batch[i].Sequence.Request.TopLogprobs;
            if (asked >= 0 && (result.Logprobs?.ElementAtOrDefault(i) is not { } logprobs || logprobs.TopTokens.Length != Math.Min(asked, vocab)
                || logprobs.TopLogprobs.Length != logprobs.TopTokens.Length || logprobs.TopTokens.Any(t => (uint)t >= (uint)vocab)))
                throw new InvalidDataException($"step {step}: the last stage did not deliver the {asked} log-probabilities chunk {i} asked for");
        }
    }

    /// <summary>Streams the token the last stage sampled (with its log-probabilities, when asked for); true when the sequence is done.</summary>
    private bool Emit(Sequence sequence, int next, TokenLogprobs? logprobs)
    {
        var tokenizer = Tokenizer;
        sequence.Sampler.Skip(1);   // the last stage drew from a copy of this generator
        if (sequence.Request.StopAtEos && (next == tokenizer.BosId || next == tokenizer.EosId)) return true;
        ChunkLogprobs? withText = null;
        if (logprobs is not null)
        {
            int previous = sequence.Tokens[^1];
            TokenLogprob Text(int token, float value)   // the token's own piece after the same previous token
            {
                byte[] bytes = tokenizer.DecodeBytes(previous, token);
                return new TokenLogprob(Encoding.UTF8.GetString(bytes), bytes, value);
            }
            withText = new ChunkLogprobs(Text(next, logprobs.Logprob), [.. logprobs.TopTokens.Zip(logprobs.TopLogprobs, Text)]);
        }
        sequence.Output.Writer.TryWrite(new GeneratedChunk(next, sequence.Append(next, tokenizer), withText));
        long now = Stopwatch.GetTimestamp();
        if (sequence.LastToken == 0) ClusterTelemetry.TimeToFirstToken.Record(Stopwatch.GetElapsedTime(sequence.Arrived, now).TotalSeconds, ModelTag);
        else ClusterTelemetry.InterTokenLatency.Record(Stopwatch.GetElapsedTime(sequence.LastToken, now).TotalSeconds, ModelTag);
        sequence.LastToken = now;
        ClusterTelemetry.GeneratedTokens.Add(1, ModelTag);
        return sequence.Generated >= sequence.MaxTokens;
    }

    /// <summary>The client went away: the sequence leaves now, or when its step in flight returns.</summary>
    private void Cancel(Sequence sequence)
    {
        sequence.Cancelled = true;
        if (sequence.InFlight) return;
        Finish(sequence);
        Kick(sequence.Replica!);   // its KV reservation may let a waiting sequence in
    }

    /// <summary>Ends the stream and frees the sequence. Starts no lane: a lane started here would run before the caller finishes its own bookkeeping.</summary>
    private void Finish(Sequence sequence, Exception? error = null)
    {
        if (sequence.Finished) return;
        sequence.Finished = true;
        sequence.Output.Writer.TryComplete(error);
        ClusterTelemetry.Requests.Add(1, ModelTag, new("outcome", error is not null ? "failed" : sequence.Cancelled ? "cancelled" : "completed"));
        var replica = sequence.Replica!;
        bool running = replica.Running.Remove(sequence);
        (running ? ClusterTelemetry.Running : ClusterTelemetry.Waiting).Add(-1, ModelTag);
        if (!running)
        {
            var waiting = replica.Waiting.Where(s => s != sequence).ToList();
            replica.Waiting.Clear();
            foreach (var s in waiting) replica.Waiting.Enqueue(s);
            return;   // never admitted: it holds no blocks
        }
        replica.ReservedBlocks -= sequence.Blocks;
        if (sequence.Scheduled > 0) replica.Released.Add(sequence.Id);   // freed by the next step, after any step it is in
    }

    /// <summary>Brings a failed pipeline back in a new epoch and replays its sequences, or fails them after FailoverTimeout.</summary>
    private async Task Recover(Replica replica, Exception cause)
    {
        replica.Recovering = true;
        ClusterTelemetry.Failovers.Add(1, ModelTag, new("replica", replica.Index));
        ClusterTelemetry.Replays.Add(replica.Running.Count, ModelTag, new("replica", replica.Index));
        log.LogWarning(cause, "model {Model} replica {Replica}: step failed in epoch {Epoch}; replaying {Count} sequences on a new epoch",
            ModelId, replica.Index, replica.Epoch, replica.Running.Count);
        replica.Epoch = 0;   // results still in flight belong to the lost epoch
        foreach (var sequence in replica.Running) sequence.Cached = sequence.Scheduled = 0;
        replica.Released.Clear();   // the new epoch's caches start empty
        var deadline = DateTime.UtcNow + Options.FailoverTimeout;
        try
        {
            while (true)
            {
                try
                {
                    bool moved = MoveShardsOffLostSilos(replica);
                    await Load(replica).WaitAsync(Options.StepTimeout);
                    replica.LostSilos.Clear();
                    if (moved) _ = RegisterMovedShards();   // the registry may have been on the lost silo: serving does not wait for it
                    log.LogInformation("model {Model} replica {Replica}: recovered in epoch {Epoch}", ModelId, replica.Index, replica.Epoch);
                    break;
                }
                catch (Exception e) when (DateTime.UtcNow < deadline)
                {
                    replica.Epoch = 0;
                    log.LogWarning(e, "model {Model} replica {Replica}: reloading failed; retrying", ModelId, replica.Index);
                    await Task.Delay(TimeSpan.FromMilliseconds(500));
                }
                catch (Exception e)
                {
                    FailAll(replica, new ModelUnavailableException(
                        $"model '{ModelId}' lost a shard and could not bring it back within {Options.FailoverTimeout.TotalSeconds:0} s: {e.Message}"));
                    break;
                }
            }
        }
        finally
        {
            replica.Recovering = false;
        }
        Kick(replica);
    }

    /// <summary>
    /// Gives each shard that sat on a lost silo a new key (the next generation, so no registration the dead silo left
    /// in the grain directory stands in its way) pinned to a live silo: the active silo, not lost, holding the fewest of
    /// the replica's shards. Returns whether any key changed. With no live silo left the keys stay, and the retries wait.
    /// </summary>
    private bool MoveShardsOffLostSilos(Replica replica)
    {
        var lost = replica.LostSilos;
        if (lost.Count == 0) return false;
        var live = membership.CurrentSnapshot.Members.Values
            .Where(m => m.Status == SiloStatus.Active && !lost.Contains(m.Name)).Select(m => m.Name).Distinct().ToList();
        if (live.Count == 0) return false;
        bool moved = false;
        var keys = replica.StageKeys;
        for (int stage = 0; stage < keys.Length; stage++)
            for (int rank = 0; rank < keys[stage].Length; rank++)
            {
                if (!replica.ShardSilos.TryGetValue(keys[stage][rank], out var silo) || !lost.Contains(silo)) continue;
                string target = live.MinBy(name => (replica.ShardSilos.Values.Count(s => s == name), name))!;
                string key = ShardKey.Create(ModelId, replica.Index, stage, rank, target, ++replica.Generation);
                log.LogInformation("model {Model} replica {Replica}: shard {Old} on lost silo {Silo} becomes {New}", ModelId, replica.Index, keys[stage][rank], silo, key);
                replica.ShardSilos.Remove(keys[stage][rank]);
                replica.ShardSilos[key] = target;
                keys[stage][rank] = key;
                moved = true;
            }
        return moved;
    }

    private void FailAll(Replica replica, Exception error)
    {
        foreach (var sequence in replica.Running.Concat(replica.Waiting).ToList()) Finish(sequence, error);
    }
}
