// A training job (see ITrainingJobGrain): starts one trainer grain per shard of the layout, then each step takes the
// next global batch from the packed dataset, splits it between the replicas and into micro-batches, and has every
// trainer step together, publishing the step's loss to subscribers. Every CheckpointEvery steps the trainers copy
// their state and write it, while training goes on, into a staging directory of this attempt; when all have written,
// the manifest follows, the directory is renamed whole to its step and the job's durable record (the step log up to
// that step) is written; KeepCheckpoints are kept. A failed or timed-out step starts a new attempt: a new epoch on the
// same keys (pinned placement puts a dead silo's shards on a live one), every trainer restores the newest checkpoint
// that verifies (a damaged one falls back to the one before), and the steps after it are redone and logged once.
// Failure budgets end the retries: a failure that repeats with the trainers' silos alive fails the job after
// StepRetries, a job whose silos died MaxSiloLosses times fails rather than resume, and trainers that cannot be placed
// again within RecoveryTimeout fail it. Cancel is recorded before it answers, so a cancelled job never resumes.
// Reentrant: status, events and cancel are answered while the step loop runs on the grain's own thread.
using System.Diagnostics;
using System.Globalization;
using System.Threading.Channels;
using Cluster.Compute;
using Cluster.Compute.Collectives;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using Cluster.Training;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans.Concurrency;
using Orleans.Configuration;

namespace Cluster.Grains;

[Reentrant, PinnedShardPlacement]   // a key ending "@{silo}" pins the job there (its trainers' keys inherit the pin unless the spec names silos)
public sealed class TrainingJobGrain(
    IGrainFactory grains, IOptions<TrainingOptions> options, IOptions<SchedulerOptions> schedulers, ModelRoots modelRoots,
    IOptions<ClusterOptions> cluster, IClusterMembershipService membership, ILogger<TrainingJobGrain> log,
    [PersistentState("job", SiloBuilderExtensions.RecordStorage)] IPersistentState<TrainingJobRecord> stored) : Grain, ITrainingJobGrain
{
    private readonly List<TrainingJobEvent> _events = [];   // the step log: the stored one plus the steps since its checkpoint
    private readonly List<Channel<TrainingJobEvent>> _subscribers = [];
    private readonly CancellationTokenSource _cancel = new();
    private readonly SemaphoreSlim _writing = new(1, 1);   // one record write at a time: the step loop, checkpoints and Cancel all write
    private int _stepFailures;   // attempts in a row that failed while their trainers' silos lived, since the last checkpoint
    private bool _runsHere;      // this activation runs the job (one that read another cluster's record never writes it)

    private string Id => this.GetPrimaryKeyString();
    private TrainingJobRecord Record => stored.State;
    private static bool IsEnded(TrainingJobState s) => s is TrainingJobState.Completed or TrainingJobState.Failed or TrainingJobState.Cancelled;
    private string Marker => Path.Combine(options.Value.RunningDirectory, Uri.EscapeDataString(Id));

    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        _events.AddRange(Record.Events);
        if (Record.Spec is { } spec && !IsEnded(Record.State))
        {
            if (Record.ClusterId != cluster.Value.ClusterId)
                log.LogWarning("training job {Job} was submitted to cluster {Recorded}, not this silo's {Cluster}: not resumed", Id, Record.ClusterId, cluster.Value.ClusterId);
            else
            {
                // The previous activation died with its silo, unless it was deactivated in order (the silo shut down).
                if (!Record.DeactivatedInOrder) Record.SiloLosses++;
                Record.DeactivatedInOrder = false;
                if (Record.CancelRequested) Record.State = TrainingJobState.Cancelled;
                else if (Record.SiloLosses >= options.Value.MaxSiloLosses)
                {
                    Record.State = TrainingJobState.Failed;
                    Record.Error = $"took down its silo {Record.SiloLosses} times: not resumed again";
                    log.LogError("training job {Job} {Error}", Id, Record.Error);
                }
                if (IsEnded(Record.State)) _ = End(Trainers(Keys(spec)));
                else
                {
                    log.LogInformation("training job {Job} resumes from step {Step} after its grain was lost", Id, Record.CheckpointStep);
                    _runsHere = true;
                    Record.Restarts++;
                    ClusterTelemetry.TrainingRestarts.Add(1, JobTag);
                    await WriteRecord();   // the loss counts even if this silo dies too before the next checkpoint
                    _ = Run(spec);   // carry on from the last checkpoint
                }
            }
        }
        await base.OnActivateAsync(cancellationToken);
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        if (_runsHere && !IsEnded(Record.State))
        {
            Record.DeactivatedInOrder = true;
            try { await WriteRecord(); }
            catch (Exception e) { log.LogWarning(e, "training job {Job}: recording an orderly deactivation ({Reason})", Id, reason); }
        }
        await base.OnDeactivateAsync(reason, cancellationToken);
    }

    public async Task<TrainingJobStatus> Submit(TrainingJobSpec spec)
    {
        spec = spec with { Source = modelRoots.Require(spec.Source) };   // paths named through the API: inside the model roots, resolved
        if (Record.Spec is not null)
            return Record.Spec == spec ? Describe() : throw new ArgumentException($"job '{Id}' already runs another spec");
        Validate(spec);
        await CheckAgainstTheCluster(spec);
        _runsHere = true;
        Record.Spec = spec;
        Record.State = TrainingJobState.Queued;
        Record.ClusterId = cluster.Value.ClusterId;
        Publish(new TrainingJobEvent(0, float.NaN, 0, 0, TrainingJobState.Queued));
        Record.Events = [.. _events];
        await WriteRecord();
        string marker = Marker;
        byte[] clusterId = System.Text.Encoding.UTF8.GetBytes(Record.ClusterId);
        await Task.Run(() =>
        {
            DurableFile.CreatePrivateDirectory(options.Value.RunningDirectory);
            DurableFile.WriteAllBytes(marker, clusterId);
        });
        _ = Run(spec);   // the step loop runs on this grain's scheduler; Submit answers at once
        return Describe();
    }

    private static void Validate(TrainingJobSpec s)
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new ArgumentException(what);
        }
        Require(s.Source.Path is not null || RandomModel.Presets.Contains(s.Source.Preset ?? ""),
            $"preset must be one of {string.Join(", ", RandomModel.Presets)} (or give a model path)");
        ParallelLayout layout;
        try { layout = ParallelLayout.Parse(s.Layout); }
        catch (FormatException e) { throw new ArgumentException(e.Message); }
        if (s.Source.Path is null) ShardingPlan.Create(RandomModel.Preset(s.Source.Preset!), layout);   // throws ArgumentException when it does not fit
        Require(s.Steps is >= 1 and <= 1_000_000, "steps must be from 1 to 1000000");
        Require(s.MicroBatches is >= 1 and <= 1024, "micro_batches must be from 1 to 1024");
        Require(s.BatchSize >= layout.DataParallel * s.MicroBatches && s.BatchSize <= 4096,
            "batch_size must be at least data parallel × micro_batches (every micro-batch takes a sequence) and at most 4096");
        Require(s.SequenceLength is >= 2 and <= 1 << 16, "sequence_length must be from 2 to 65536");
        Require(float.IsFinite(s.LearningRate) && s.LearningRate > 0 && s.LearningRate < 1, "learning_rate must be in (0, 1)");
        Require(s.WarmupSteps >= 0, "warmup_steps must be at least 0");
        Require(s.ZeroStage is >= 0 and <= 3, "zero_stage must be 0, 1, 2 or 3");
        Require(s.Schedule is "1f1b" or "gpipe", "schedule must be '1f1b' or 'gpipe'");
        Require(s.Precision is "fp32" or "bf16", "precision must be 'fp32' or 'bf16'");
        Require(s.CheckpointEvery >= 1, "checkpoint_every must be at least 1");
        Require(s.KeepCheckpoints is >= 1 and <= 1000, "keep_checkpoints must be from 1 to 1000");
        Require(s.Dataset is "additions" or "stories" ? s.Documents is null : s.Dataset is "text" or "jsonl" && s.Documents is { Length: > 0 },
            "dataset must be 'additions' or 'stories' (generated: no documents), or 'text' or 'jsonl' with a non-empty documents list");
        if (s.Lora is { } lora)
        {
            Require(s.Source.AdapterPath is null, "LoRA trains on a base model without an adapter");
            Require(layout.TensorParallel == 1, "LoRA training runs without tensor parallelism (tp = 1)");
            var options = new LoraOptions { Rank = lora.Rank, Alpha = lora.Alpha, Targets = lora.Targets ?? [], Dropout = lora.Dropout };
            if (s.Source.Path is null) options.Validate(RandomModel.Preset(s.Source.Preset!));
        }
        Require(s.ServeAs is null || (s.ServeAs.Length is > 0 and <= 128 && !s.ServeAs.Contains('/') && !s.ServeAs.Contains('@')),
            "serve_as must be a model id of 1 to 128 characters without '/' or '@'");
        if (s.ServeAs is not null)
            try { ParallelLayout.Parse(s.ServeLayout); }
            catch (FormatException e) { throw new ArgumentException("serve_layout: " + e.Message); }
    }

    /// <summary>
    /// What a spec cannot know alone: that its model loads and its layout fits the model, that the layout's trainers fit
    /// in the silos' memory (TrainingMemory's estimate), and that the model id it publishes under is free or may be replaced.
    /// </summary>
    private async Task CheckAgainstTheCluster(TrainingJobSpec spec)
    {
        var config = await Task.Run(() => ConfigOf(spec.Source));
        var layout = ParallelLayout.Parse(spec.Layout);
        ShardingPlan.Create(config, layout);   // throws ArgumentException when it does not fit
        int trainers = layout.DataParallel * layout.PipelineStages * layout.StageRanks;
        if (trainers > options.Value.MaxTrainersPerJob)
            throw new ArgumentException($"layout {layout} needs {trainers} trainers; a job may have at most {options.Value.MaxTrainersPerJob} (Cluster__Training__MaxTrainersPerJob)");
        long shardBytes = TrainingMemory.LargestShardBytes(config, new TrainingMemoryPlan(layout, spec.BatchSize, spec.SequenceLength, spec.MicroBatches,
            spec.Schedule, spec.ZeroStage, spec.Lora is not null, spec.ActivationCheckpointing));
        var silos = await grains.GetGrain<IClusterInventoryGrain>(0).ActiveSilos();
        foreach (var silo in silos)
        {
            int shardsThere = spec.Silos is { Length: > 0 } pinned
                ? Enumerable.Range(0, trainers).Count(i => pinned[i % pinned.Length] == silo.Silo)
                : (trainers + silos.Length - 1) / silos.Length;
            long memory = silo.Devices.FirstOrDefault(d => d.Kind == "Cpu")?.MemoryBytes ?? 0;
            long needed = (long)Math.Min((double)shardsThere * shardBytes, long.MaxValue / 2);   // no overflow for absurd specs
            if (memory > 0 && needed > memory)
                throw new ArgumentException($"the job needs about {TrainingMemory.Describe(needed)} on silo {silo.Silo} ({shardsThere} trainers × " +
                    $"{TrainingMemory.Describe(shardBytes)}: parameters, gradients, AdamW state and activations for batch {spec.BatchSize} × sequence " +
                    $"{spec.SequenceLength}), which has {TrainingMemory.Describe(memory)}; use a smaller batch or sequence, more micro-batches, ZeRO, or more shards");
        }
        if (spec.ServeAs is { } modelId) await CheckModelIdFree(spec, modelId);
    }

    /// <summary>A job may publish under a new id; over a served one only with ReplaceServed; over a configured one never.</summary>
    private async Task CheckModelIdFree(TrainingJobSpec spec, string modelId)
    {
        if (schedulers.Value.ConfiguredModels.ContainsKey(modelId))
            throw new ModelIdTakenException($"'{modelId}' is a model the silos serve from their configuration; a job cannot replace it");
        if (!spec.ReplaceServed && Record.Model != modelId && (await grains.GetGrain<IModelRegistryGrain>(0).List()).Any(m => m.Id == modelId))
            throw new ModelIdTakenException($"a model '{modelId}' is served already: publish under another id, or set \"replace\": true (needs the admin role)");
    }

    /// <summary>The model's config, from a preset or the model file's header (no weights read); load failures are told in words, the detail logged.</summary>
    private ModelConfig ConfigOf(ModelSource source)
    {
        if (source.Path is null) return RandomModel.Preset(source.Preset!);
        try { return ModelSources.Load(source, _ => WeightFilter.Nothing).Config; }
        catch (Exception e) when (e is ModelFormatException or IOException or UnauthorizedAccessException or InvalidDataException or ArgumentException)
        {
            log.LogWarning(e, "training job {Job}: its model does not load", Id);
            throw new ArgumentException("'model_path' (with its tokenizer) is not a model this cluster reads; the silo log has the detail");
        }
    }

    private ITrainerGrain[] Trainers(string[] keys) => [.. keys.Select(k => grains.GetGrain<ITrainerGrain>(k))];

    /// <summary>The keys of the job's trainers: one per shard of the layout, pinned round-robin to the spec's silos when it names some.</summary>
    private string[] Keys(TrainingJobSpec spec)
    {
        var layout = ParallelLayout.Parse(spec.Layout);
        int shardsPerReplica = layout.PipelineStages * layout.StageRanks;
        return [.. Enumerable.Range(0, layout.DataParallel * shardsPerReplica).Select(i => ShardKey.Create(Id,
            i / shardsPerReplica, i % shardsPerReplica / layout.StageRanks, i % layout.StageRanks,
            spec.Silos is { Length: > 0 } silos ? silos[i % silos.Length] : null))];
    }

    private async Task Run(TrainingJobSpec spec)
    {
        // The run outlives the call that started it: each training step begins a trace of its own rather than
        // hanging the whole job (thousands of steps) under the Submit request's trace.
        Activity.Current = null;
        var o = options.Value;
        var layout = ParallelLayout.Parse(spec.Layout);
        string directory = o.JobDirectory(Id);
        string[] keys = Keys(spec);
        var trainers = Trainers(keys);
        PackedDataset? dataset = null;   // kept once built: a failure to build it is retried like any other, never kept
        double? flopsPerToken = null;
        DateTime? lostSince = null;      // when the trainers were first found missing: re-placing them may take until RecoveryTimeout
        var slots = grains.GetGrain<ITrainingSlotsGrain>(0);
        var sinceRenewal = Stopwatch.StartNew();
        try
        {
            await WaitForASlot(slots);
            while (!_cancel.IsCancellationRequested)
            {
                Record.Epoch = Math.Max(Record.Epoch + 1, DateTime.UtcNow.Ticks);   // above any epoch an earlier activation used
                long epoch = Record.Epoch;
                var pendingSave = Task.CompletedTask;
                SiloAddress[] silos = [];   // where this attempt's trainers run, once they started
                int step = 0;
                try
                {
                    dataset ??= await Task.Run(() => Dataset(spec));
                    flopsPerToken ??= await Task.Run(() => ModelFlops.PerTrainedToken(ConfigOf(spec.Source), spec.Lora is not null));
                    int recorded = Record.CheckpointStep;
                    var resume = await Task.Run(() => Checkpoint.FindResumePoint(directory, recorded));
                    if (resume.Manifest is null && recorded > 0)
                        throw new ModelFormatException(directory, $"no checkpoint of step {recorded} or before verifies: {string.Join("; ", resume.Removed)}");
                    (Record.Checkpoint, Record.CheckpointStep) = (resume.Directory, resume.Manifest?.Step ?? 0);
                    step = Record.CheckpointStep;
                    var cursor = resume.Manifest?.Cursor ?? default;
                    _events.RemoveAll(e => e.Step > step);   // steps after the checkpoint are redone: each is logged once
                    foreach (string removed in resume.Removed)
                    {
                        log.LogWarning("training job {Job}: {Removed}; removed", Id, removed);
                        Publish(new TrainingJobEvent(step, float.NaN, 0, 0, Record.State, Note: $"{removed}; removed"));
                    }
                    var started = await AllOrFirstFailure(trainers.Select((t, i) => t.Start(Assignment(spec, keys, i, epoch))).ToArray(), o.StepTimeout);
                    silos = [.. started.Select(s => s.Silo)];
                    double peak = ModelFlops.Peak([.. started.Select(s => new TrainerCompute(s.Silo.ToString(), s.Threads, s.SiloCores, s.FlopsPerCore))]);
                    lostSince = null;
                    Record.State = TrainingJobState.Running;
                    Publish(new TrainingJobEvent(step, float.NaN, 0, 0, TrainingJobState.Running,
                        Note: resume.Manifest is null ? $"started: {keys.Length} trainers, layout {layout}" : $"resumed from the checkpoint of step {step}"));
                    var clock = Stopwatch.StartNew();
                    long tokens = 0;
                    while (step < spec.Steps && !_cancel.IsCancellationRequested)
                    {
                        (var batch, cursor) = dataset.Take(spec.BatchSize, cursor);
                        bool checkpoint = (step + 1) % spec.CheckpointEvery == 0 || step + 1 == spec.Steps;
                        long stepStarted = Stopwatch.GetTimestamp();
                        float loss, lr, gradientNorm;
                        MoeStepStats? experts;
                        // A trace per step; each trainer's Step call is a child span of it (Orleans' call spans, propagated).
                        using (ClusterTelemetry.Source.StartActivity("training.step", ActivityKind.Internal, parentContext: default,
                                   tags: [JobTag, new("step", step + 1), new("trainers", trainers.Length)]))
                            (loss, lr, gradientNorm, experts) = await Step(trainers, layout, spec, batch, epoch, captureAfter: checkpoint);
                        ClusterTelemetry.TrainingStepTime.Record(Stopwatch.GetElapsedTime(stepStarted).TotalSeconds, JobTag);
                        ClusterTelemetry.GradientNorm.Record(gradientNorm, JobTag);
                        if (experts is not null)
                        {
                            ClusterTelemetry.RouterLoss.Record(experts.RouterLoss, JobTag);
                            ClusterTelemetry.ExpertImbalance.Record(experts.Imbalance, JobTag);
                            ClusterTelemetry.DroppedTokens.Add(experts.Dropped, JobTag);
                        }
                        if (sinceRenewal.Elapsed > o.SlotLease / 4)
                        {
                            await slots.TryHold(Id);   // renews the lease; a job that runs is never stopped for lack of one
                            sinceRenewal.Restart();
                        }
                        step++;
                        tokens += (long)spec.BatchSize * spec.SequenceLength;
                        double tokensPerSecond = tokens / clock.Elapsed.TotalSeconds;
                        Publish(new TrainingJobEvent(step, loss, lr, (float)tokensPerSecond, Record.State,
                            Mfu: peak > 0 ? (float)(tokensPerSecond * flopsPerToken.Value / peak) : null,
                            ExpertLoad: experts?.Load, DroppedTokens: experts?.Dropped, RouterLoss: (float?)experts?.RouterLoss));
                        if (checkpoint)
                        {
                            await pendingSave;   // one checkpoint in flight at a time
                            pendingSave = Save(trainers, epoch, spec, layout, directory, step, cursor);
                        }
                    }
                    await pendingSave;
                    break;
                }
                catch (Exception e) when (!_cancel.IsCancellationRequested && e is not (ArgumentException or FormatException or ModelFormatException))
                {
                    _ = pendingSave.ContinueWith(t => t.Exception, TaskScheduler.Default);   // an abandoned save fails on its own: observed, never awaited again
                    Record.Restarts++;
                    ClusterTelemetry.TrainingRestarts.Add(1, JobTag);
                    log.LogWarning(e, "training job {Job}: an attempt failed after step {Step}", Id, step);
                    // The wait doubles with each step retry; it also lets the membership declare a dead silo so before
                    // a silo loss is told from a failing step.
                    await Task.Delay(o.RetryBackoff * Math.Pow(2, Math.Min(_stepFailures, 10)));
                    string cause = $"{e.GetType().Name}: {e.Message}";
                    string retry;
                    if (silos.Length == 0)
                    {
                        lostSince ??= DateTime.UtcNow;
                        if (DateTime.UtcNow - lostSince > o.RecoveryTimeout) throw new TimeoutException($"trainers lost and not back within {o.RecoveryTimeout}: {cause}", e);
                        retry = $"trainers not started ({cause})";
                    }
                    else if (silos.Any(s => membership.CurrentSnapshot.GetSiloStatus(s) == SiloStatus.Dead))
                    {
                        Record.SiloLosses++;
                        await WriteRecord();
                        if (Record.SiloLosses >= o.MaxSiloLosses) throw new InvalidOperationException($"took down its silo {Record.SiloLosses} times (the last: {cause})", e);
                        retry = $"a trainer's silo died ({cause})";
                    }
                    else
                    {
                        if (++_stepFailures > o.StepRetries) throw new InvalidOperationException($"failed {_stepFailures} times in a row (the last after step {step}): {cause}", e);
                        retry = $"failed after step {step} ({cause}); retry {_stepFailures} of {o.StepRetries}";
                    }
                    Publish(new TrainingJobEvent(Record.CheckpointStep, float.NaN, 0, 0, Record.State,
                        Note: $"{retry}; resuming from the newest checkpoint that verifies"));
                }
            }
            // Published before the state says completed, so whoever sees "completed" finds the model served.
            if (!_cancel.IsCancellationRequested && spec.ServeAs is { } modelId) await PublishModel(spec, modelId, directory);
            Record.State = _cancel.IsCancellationRequested ? TrainingJobState.Cancelled : TrainingJobState.Completed;
        }
        catch (Exception e) when (_cancel.IsCancellationRequested)
        {
            log.LogInformation(e, "training job {Job} failed while it was being cancelled", Id);
            Record.State = TrainingJobState.Cancelled;
        }
        catch (Exception e)
        {
            log.LogError(e, "training job {Job} failed", Id);
            Record.State = TrainingJobState.Failed;
            // what the job's users read: a model file's complaint can quote bytes it read, so it is told in words (the log has it whole)
            Record.Error = e is ModelFormatException ? "its model or tokenizer is not a file this cluster reads (the silo log has the detail)" : e.Message;
        }
        await End(trainers);
        try { await slots.Release(Id); }
        catch (Exception e) { log.LogWarning(e, "training job {Job}: releasing its slot failed; it lapses by itself", Id); }
    }

    /// <summary>Stays queued until the cluster has a running-job slot for this job (or it is cancelled).</summary>
    private async Task WaitForASlot(ITrainingSlotsGrain slots)
    {
        bool told = false;
        while (!_cancel.IsCancellationRequested && !await slots.TryHold(Id))
        {
            if (!told) Publish(new TrainingJobEvent(0, float.NaN, 0, 0, Record.State,
                Note: $"queued: {options.Value.MaxRunningJobs} jobs are running (Cluster__Training__MaxRunningJobs); this one starts when one ends"));
            told = true;
            await Task.Delay(TimeSpan.FromSeconds(1));
        }
    }

    /// <summary>A job that will not run again (completed, failed or cancelled): its trainers stop, its record is final and its marker goes.</summary>
    private async Task End(ITrainerGrain[] trainers)
    {
        await Task.WhenAll(trainers.Select(async t =>
        {
            try { await t.Stop().WaitAsync(TimeSpan.FromSeconds(10)); }
            catch (Exception e) { log.LogDebug(e, "stopping a trainer of job {Job}", Id); }
        }));
        var last = _events.LastOrDefault(e => e.IsStep);
        Publish(new TrainingJobEvent(last?.Step ?? 0, last?.Loss ?? float.NaN, last?.LearningRate ?? 0, last?.TokensPerSecond ?? 0, Record.State, Record.Error,
            Record.Model is { } served ? $"serving the trained model as '{served}'" : null));
        Record.Events = [.. _events];
        await WriteRecord();
        File.Delete(Marker);
        foreach (var subscriber in _subscribers) subscriber.Writer.TryComplete();
        _subscribers.Clear();
    }

    private async Task WriteRecord()
    {
        await _writing.WaitAsync();
        try { await stored.WriteStateAsync(); }
        finally { _writing.Release(); }
    }

    private TrainerAssignment Assignment(TrainingJobSpec spec, string[] keys, int index, long epoch) => new(spec.Source, spec.Layout, keys, index, epoch,
        spec.LearningRate, spec.LearningRate / 10, spec.WarmupSteps, spec.Steps, WeightDecay: spec.Lora is null ? 0.1f : 0f, ClipNorm: 1f, spec.ZeroStage,
        Record.Checkpoint, spec.Lora, spec.ActivationCheckpointing, spec.Precision);

    private static PackedDataset Dataset(TrainingJobSpec spec)
    {
        var tokenizer = ModelSources.LoadTokenizer(spec.Source);
        TrainingDocument[] documents = Datasets.Generated(spec.Dataset, spec.Seed, tokenizer) ?? (spec.Dataset == "text"
            ? Datasets.Text(spec.Documents!, tokenizer)
            : Datasets.Jsonl(spec.Documents!, tokenizer, "documents"));
        return new PackedDataset(documents, spec.SequenceLength, spec.Seed);
    }

    /// <summary>
    /// One step on every trainer: replica r takes its share of the batch in micro-batches; returns the global mean loss,
    /// the learning rate, the gradient norm and, for an MoE model, its experts' loads, drops and router losses.
    /// </summary>
    private async Task<(float Loss, float LearningRate, float GradientNorm, MoeStepStats? Experts)> Step(ITrainerGrain[] trainers, ParallelLayout layout, TrainingJobSpec spec, TrainingSequence[] batch,
        long epoch, bool captureAfter)
    {
        int globalTargets = batch.Sum(s => s.CountedTargets);
        if (globalTargets == 0) throw new ArgumentException("a global batch has no counted targets: are the documents shorter than 2 tokens?");
        int shardsPerReplica = layout.PipelineStages * layout.StageRanks;
        var messages = Enumerable.Range(0, layout.DataParallel).Select(replica =>
        {
            var (offset, count) = CollectiveGroup.Partition(batch.Length, layout.DataParallel, replica);
            return new TrainingStepMessage(epoch, [.. Enumerable.Range(0, spec.MicroBatches).Select(m =>
            {
                var (mOffset, mCount) = CollectiveGroup.Partition(count, spec.MicroBatches, m);
                return batch.Skip(offset + mOffset).Take(mCount).Select(s => new TrainingSequenceMessage(s.Tokens, s.Targets, s.Documents)).ToArray();
            })], globalTargets, spec.Schedule, captureAfter);
        }).ToArray();
        var reports = await AllOrFirstFailure(trainers.Select((t, i) => t.Step(messages[i / shardsPerReplica])).ToArray(), options.Value.StepTimeout);
        int lossReporter = (layout.PipelineStages - 1) * layout.StageRanks;   // last stage, rank 0, of each replica
        // Every trainer clips with the same global norm, so any report's norm is the step's.
        MoeStepStats[] moe = [.. reports.Where(r => r.ExpertLoad is not null).Select(r => new MoeStepStats(r.ExpertLoad!, r.DroppedTokens, r.RouterLoss))];   // rank 0 of each stage of each replica
        return (reports.Where((_, i) => i % shardsPerReplica == lossReporter).Sum(r => r.LossShare), reports[0].LearningRate, reports[0].GradientNorm,
            moe.Length == 0 ? null : MoeStepStats.Sum(moe));
    }

    /// <summary>
    /// The trainers write the state they copied after <paramref name="step"/> into this attempt's staging directory
    /// while training goes on; then the manifest, the rename to the step's directory, the job's record and pruning.
    /// </summary>
    private async Task Save(ITrainerGrain[] trainers, long epoch, TrainingJobSpec spec, ParallelLayout layout, string root, int step, DataCursor cursor)
    {
        long started = Stopwatch.GetTimestamp();
        string staging = Checkpoint.StagingDirectory(root, step, epoch.ToString(CultureInfo.InvariantCulture));
        Record.State = TrainingJobState.Checkpointing;
        await Task.Run(() => DurableFile.CreatePrivateDirectory(staging));
        await AllOrFirstFailure(trainers.Select(t => t.SaveCheckpoint(epoch, staging, step)).ToArray(), options.Value.StepTimeout);
        string[] files = [.. Enumerable.Range(0, layout.PipelineStages).SelectMany(s => Enumerable.Range(0, layout.StageRanks).Select(r => Checkpoint.ShardFile(s, r)))];
        await Task.Run(() => Checkpoint.WriteManifest(staging, step, cursor, layout, files));
        ClusterTelemetry.CheckpointTime.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, JobTag);
        ClusterTelemetry.CheckpointBytes.Record(await Task.Run(() => new DirectoryInfo(staging).EnumerateFiles().Sum(f => f.Length)), JobTag);
        // A later attempt resumed from an earlier checkpoint and redoes this step in its own staging directory: drop this one (pruning removes it).
        if (Record.Epoch != epoch) return;
        // Renamed on the grain's thread, the record updated with it: an attempt starting later resumes from here.
        Record.Checkpoint = Checkpoint.Commit(root, step, staging);
        Record.CheckpointStep = step;
        Record.Events = [.. _events.Where(e => e.Step <= step)];
        _stepFailures = 0;
        if (Record.State == TrainingJobState.Checkpointing) Record.State = TrainingJobState.Running;
        await WriteRecord();
        Publish(new TrainingJobEvent(step, float.NaN, 0, 0, Record.State, Note: $"checkpoint of step {step} saved"));
        await Task.Run(() => Checkpoint.Prune(root, spec.KeepCheckpoints));
    }

    /// <summary>
    /// The final checkpoint, whatever its layout, served under <paramref name="modelId"/>: a full fine-tune assembled
    /// whole and written as GGUF (safetensors where GGUF cannot hold it); LoRA adapters written as a PEFT adapter and
    /// served on their base model.
    /// </summary>
    private async Task PublishModel(TrainingJobSpec spec, string modelId, string directory)
    {
        string checkpoint = Record.Checkpoint!;
        var source = await Task.Run(() =>
        {
            var loaded = ModelSources.Load(spec.Source);
            var tensors = Checkpoint.ReadTensors(checkpoint);
            if (spec.Lora is { } lora)
            {
                string adapter = Path.Combine(directory, "adapter");
                PeftAdapter.Save(adapter, loaded.Config, new PeftAdapterConfig(lora.Rank, lora.Alpha, lora.Targets, lora.Dropout),
                    tensors.Keys.Where(k => k.EndsWith(".lora_a")).Select(k =>
                    {
                        string[] parts = k.Split('.');   // layers.{N}.{target}.lora_a
                        return new LoraTensors(int.Parse(parts[1]), parts[2], tensors[k], tensors[k[..^1] + "b"]);
                    }), spec.Source.ToString());
                return spec.Source with { AdapterPath = adapter };
            }
            var trained = loaded with { Weights = WeightAssembly.Assemble(loaded.Config, tensors) };
            if (GgufWriter.CannotWrite(loaded.Config) is not null)   // a mixture llama.cpp does not compute: Hugging Face's format holds it
            {
                string checkpointDirectory = Path.Combine(directory, "model");
                SafetensorsWriter.Write(trained, checkpointDirectory);
                return ModelSource.File(checkpointDirectory);
            }
            string path = Path.Combine(directory, "model.gguf");
            GgufWriter.Write(trained, path, name: modelId);
            return ModelSource.File(path);
        });
        await CheckModelIdFree(spec, modelId);   // another job may have taken the id since this one was accepted
        await grains.GetGrain<IInferenceSchedulerGrain>(modelId).Serve(new ModelServing(source, spec.ServeLayout, spec.Silos));
        Record.Model = modelId;
    }

    /// <summary>Every task's result; fails as soon as one fails (its peers may wait on it for ever) or when <paramref name="timeout"/> passes.</summary>
    private static async Task<T[]> AllOrFirstFailure<T>(Task<T>[] tasks, TimeSpan timeout)
    {
        await AllOrFirstFailure(tasks.Cast<Task>().ToArray(), timeout);
        return [.. tasks.Select(t => t.Result)];
    }

    private static async Task AllOrFirstFailure(Task[] tasks, TimeSpan timeout)
    {
        var all = Task.WhenAll(tasks);
        _ = all.ContinueWith(t => t.Exception, TaskScheduler.Default);   // observed: abandoned calls fail later
        var deadline = Task.Delay(timeout);
        var pending = tasks.ToList();
        while (pending.Count > 0)
        {
            var done = await Task.WhenAny([.. pending, deadline]);
            if (done == deadline) throw new TimeoutException($"no answer within {timeout}");
            await done;   // throws when it failed
            pending.Remove(done);
        }
    }

    private KeyValuePair<string, object?> JobTag => new("job", Id);

    private void Publish(TrainingJobEvent e)
    {
        if (e.IsStep)
        {
            ClusterTelemetry.TrainingSteps.Add(1, JobTag);
            ClusterTelemetry.TrainingLoss.Record(e.Loss, JobTag);
            ClusterTelemetry.LearningRate.Record(e.LearningRate, JobTag);
            ClusterTelemetry.TrainingTokensPerSecond.Record(e.TokensPerSecond, JobTag);
            if (e.Mfu is { } mfu) ClusterTelemetry.TrainingMfu.Record(mfu, JobTag);
        }
        _events.Add(e);
        foreach (var subscriber in _subscribers) subscriber.Writer.TryWrite(e);
    }

    public Task<TrainingJobStatus?> Status() => Task.FromResult(Record.Spec is null ? null : Describe());

    public async IAsyncEnumerable<TrainingJobEvent> Events()
    {
        if (Record.Spec is null) throw new ArgumentException($"no job '{Id}'");
        var channel = Channel.CreateUnbounded<TrainingJobEvent>();
        foreach (var e in _events) channel.Writer.TryWrite(e);
        if (IsEnded(Record.State)) channel.Writer.TryComplete();
        else _subscribers.Add(channel);
        try
        {
            await foreach (var e in channel.Reader.ReadAllAsync()) yield return e;
        }
        finally
        {
            _subscribers.Remove(channel);
        }
    }

    public async Task<TrainingJobStatus?> Cancel()
    {
        if (Record.Spec is null) return null;
        if (!IsEnded(Record.State) && !_runsHere) throw new ArgumentException($"job '{Id}' runs under cluster '{Record.ClusterId}', not this one");
        if (!IsEnded(Record.State) && !Record.CancelRequested)
        {
            Record.CancelRequested = true;
            await WriteRecord();   // before it answers: a silo that dies now leaves a job that is not resumed
        }
        _cancel.Cancel();
        return Describe();
    }

    private TrainingJobStatus Describe()
    {
        var last = _events.LastOrDefault(e => e.IsStep);
        return new TrainingJobStatus(Id, Record.State, last?.Step ?? 0, Record.Spec!.Steps, last?.Loss, Record.Error,
            ParallelLayout.Parse(Record.Spec.Layout).ToString(), Record.CheckpointStep, Record.Restarts, Record.Model);
    }
}
