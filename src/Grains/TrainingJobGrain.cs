// A training job (see ITrainingJobGrain): starts one trainer grain per data-parallel replica, then each step takes
// the next global batch from the packed dataset, splits it between the replicas and has them step together
// (gradients summed by their all-reduce), publishing every step's loss to the job's subscribers. Reentrant, so
// status, events and cancel are answered while the step loop runs on the grain's own thread.
using System.Threading.Channels;
using Cluster.Compute.Collectives;
using Cluster.Contracts;
using Cluster.Training;
using Microsoft.Extensions.Logging;
using Orleans.Concurrency;

namespace Cluster.Grains;

[Reentrant]
public sealed class TrainingJobGrain(IGrainFactory grains, ILogger<TrainingJobGrain> log) : Grain, ITrainingJobGrain
{
    private TrainingJobSpec? _spec;
    private TrainingJobState _state = TrainingJobState.Queued;
    private string? _error;
    private readonly List<TrainingJobEvent> _events = [];
    private readonly List<Channel<TrainingJobEvent>> _subscribers = [];
    private readonly CancellationTokenSource _cancel = new();

    private string Id => this.GetPrimaryKeyString();
    private bool Ended => _state is TrainingJobState.Completed or TrainingJobState.Failed or TrainingJobState.Cancelled;

    public Task<TrainingJobStatus> Submit(TrainingJobSpec spec)
    {
        if (_spec is not null)
            return _spec == spec ? Task.FromResult(Describe()) : throw new ArgumentException($"job '{Id}' already runs another spec");
        Validate(spec);
        _spec = spec;
        Publish(new TrainingJobEvent(0, float.NaN, 0, 0, TrainingJobState.Queued));
        _ = Run(spec);   // the step loop runs on this grain's scheduler; Submit answers at once
        return Task.FromResult(Describe());
    }

    private static void Validate(TrainingJobSpec s)
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new ArgumentException(what);
        }
        Require(s.Source.Path is not null || Model.RandomModel.Presets.Contains(s.Source.Preset ?? ""),
            $"preset must be one of {string.Join(", ", Model.RandomModel.Presets)} (or give a model path)");
        Require(s.Steps is >= 1 and <= 1_000_000, "steps must be from 1 to 1000000");
        Require(s.DataParallel is >= 1 and <= 64, "data_parallel must be from 1 to 64");
        Require(s.BatchSize >= s.DataParallel && s.BatchSize <= 4096, "batch_size must be at least data_parallel (every replica takes a sequence) and at most 4096");
        Require(s.SequenceLength is >= 2 and <= 1 << 16, "sequence_length must be from 2 to 65536");
        Require(float.IsFinite(s.LearningRate) && s.LearningRate > 0 && s.LearningRate < 1, "learning_rate must be in (0, 1)");
        Require(s.WarmupSteps >= 0, "warmup_steps must be at least 0");
        Require(s.ZeroStage is 0 or 1, "zero_stage must be 0 or 1");
        Require(s.Dataset == "additions" || (s.Dataset == "documents" && s.Documents is { Length: > 0 }),
            "dataset must be 'additions' or 'documents' (with a non-empty documents list)");
    }

    private async Task Run(TrainingJobSpec spec)
    {
        try
        {
            _state = TrainingJobState.Running;
            var (dataset, keys) = await Task.Run(() =>
            {
                var tokenizer = ModelSources.LoadTokenizer(spec.Source);
                string[] documents = spec.Dataset == "additions" ? ArithmeticData.Additions(10_000, spec.Seed) : spec.Documents!;
                var data = new PackedDataset(documents.Select(d => tokenizer.Encode(d, addBos: true)), spec.SequenceLength, spec.Seed);
                string[] trainerKeys = [.. Enumerable.Range(0, spec.DataParallel).Select(r =>
                    spec.Silos is { Length: > 0 } silos ? $"{Id}/{r}@{silos[r % silos.Length]}" : $"{Id}/{r}")];
                return (data, trainerKeys);
            });
            var trainers = keys.Select(k => grains.GetGrain<ITrainerGrain>(k)).ToArray();
            long epoch = DateTime.UtcNow.Ticks;
            await Task.WhenAll(trainers.Select((t, rank) => t.Start(new TrainerAssignment(spec.Source, keys, rank, epoch,
                spec.LearningRate, spec.LearningRate / 10, spec.WarmupSteps, spec.Steps, WeightDecay: 0.1f, ClipNorm: 1f, spec.ZeroStage))));
            Publish(new TrainingJobEvent(0, float.NaN, 0, 0, TrainingJobState.Running));

            var cursor = default(DataCursor);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            for (int step = 1; step <= spec.Steps; step++)
            {
                if (_cancel.IsCancellationRequested)
                {
                    _state = TrainingJobState.Cancelled;
                    break;
                }
                (var batch, cursor) = dataset.Take(spec.BatchSize, cursor);
                int targets = batch.Sum(s => s.Targets.Count(t => t != Compute.Cpu.CrossEntropy.Ignore));
                var reports = await Task.WhenAll(trainers.Select((trainer, rank) =>
                {
                    var (offset, count) = CollectiveGroup.Partition(batch.Length, trainers.Length, rank);
                    TrainingSequenceMessage[] part = [.. batch.Skip(offset).Take(count).Select(s => new TrainingSequenceMessage(s.Tokens, s.Targets, s.Documents))];
                    return trainer.Step(new TrainingStepMessage(epoch, part, targets));
                }));
                float tokensPerSecond = (float)(step * spec.BatchSize * spec.SequenceLength / clock.Elapsed.TotalSeconds);
                Publish(new TrainingJobEvent(step, reports.Sum(r => r.LossShare), reports[0].LearningRate, tokensPerSecond, TrainingJobState.Running));
            }
            if (_state == TrainingJobState.Running) _state = TrainingJobState.Completed;
        }
        catch (Exception e)
        {
            log.LogError(e, "training job {Job} failed", Id);
            _state = TrainingJobState.Failed;
            _error = e.Message;
        }
        var last = _events.LastOrDefault(e => e.Step > 0);
        Publish(new TrainingJobEvent(last?.Step ?? 0, last?.Loss ?? float.NaN, last?.LearningRate ?? 0, last?.TokensPerSecond ?? 0, _state, _error));
        foreach (var subscriber in _subscribers) subscriber.Writer.TryComplete();
        _subscribers.Clear();
    }

    private void Publish(TrainingJobEvent e)
    {
        _events.Add(e);
        foreach (var subscriber in _subscribers) subscriber.Writer.TryWrite(e);
    }

    public Task<TrainingJobStatus?> Status() => Task.FromResult(_spec is null ? null : Describe());

    public async IAsyncEnumerable<TrainingJobEvent> Events()
    {
        if (_spec is null) throw new ArgumentException($"no job '{Id}'");
        var channel = Channel.CreateUnbounded<TrainingJobEvent>();
        foreach (var e in _events) channel.Writer.TryWrite(e);
        if (Ended) channel.Writer.TryComplete();
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

    public Task<TrainingJobStatus?> Cancel()
    {
        if (_spec is null) return Task.FromResult<TrainingJobStatus?>(null);
        _cancel.Cancel();
        return Task.FromResult<TrainingJobStatus?>(Describe());
    }

    private TrainingJobStatus Describe()
    {
        var last = _events.LastOrDefault(e => e.Step > 0);
        return new TrainingJobStatus(Id, _state, last?.Step ?? 0, _spec!.Steps, last?.Loss, _error);
    }
}
