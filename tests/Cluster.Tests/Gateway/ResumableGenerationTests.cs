// ResumableGeneration against schedulers that misbehave in the one way a live cluster cannot be made to on demand: a
// streamed call whose responses are lost (they were to come back through a gateway silo that died) while the scheduler
// itself lives on and keeps generating. The stream resumes after the tokens it has, rather than wait for Orleans'
// response timeout; a scheduler that is merely slow is waited for.
//   dotnet test --project tests/Cluster.Tests -c Release -- --filter-class Cluster.Tests.Gateway.ResumableGenerationTests
using System.Runtime.CompilerServices;
using Cluster.Contracts;
using Cluster.Gateway;

namespace Cluster.Tests.Gateway;

public sealed class ResumableGenerationTests
{
    private const int Tokens = 10;

    [Fact]
    public async Task AStreamWhoseResponsesAreLostResumesAfterTheTokensItHas()
    {
        var scheduler = new ScriptedScheduler(firstCallYields: 3, thenGeneratesUnseen: 2, thenPauses: Timeout.InfiniteTimeSpan);
        int[] tokens = await Read(scheduler);
        Assert.Equal(Enumerable.Range(0, Tokens), tokens);
        Assert.Equal(2, scheduler.Calls.Count);
        Assert.Equal([0, 1, 2], scheduler.Calls[1].Resume ?? []);
        Assert.Equal(scheduler.Calls[0].Stream, scheduler.Calls[1].Stream);   // the same stream, asked about by its id
        Assert.NotEqual(Guid.Empty, scheduler.Calls[0].Stream);
    }

    [Fact]
    public async Task ASlowSchedulerIsWaitedFor()
    {
        // Silent for longer than two probes, with nothing generated that did not arrive: no resume.
        var scheduler = new ScriptedScheduler(firstCallYields: 3, thenGeneratesUnseen: 0, thenPauses: ResumableGeneration.ProbeInterval * 3);
        int[] tokens = await Read(scheduler);
        Assert.Equal(Enumerable.Range(0, Tokens), tokens);
        Assert.Single(scheduler.Calls);
    }

    private static async Task<int[]> Read(IInferenceSchedulerGrain scheduler)
    {
        var cancel = TestContext.Current.CancellationToken;
        var read = new List<int>();
        await using var stream = new ResumableGeneration(scheduler, new GenerationRequest { Prompt = "x", MaxTokens = Tokens }, TimeSpan.FromMinutes(1), cancel);
        while (await stream.MoveNextAsync().WaitAsync(TimeSpan.FromMinutes(1), cancel)) read.Add(stream.Current.TokenId);
        return [.. read];
    }

    /// <summary>
    /// Generates tokens 0..9. Its first call yields <c>firstCallYields</c> of them, then generates
    /// <c>thenGeneratesUnseen</c> more whose responses never arrive, and is silent for <c>thenPauses</c> (forever: the
    /// call is lost) before it yields the rest. A resumed call yields the tokens after the ones it was given.
    /// </summary>
    private sealed class ScriptedScheduler(int firstCallYields, int thenGeneratesUnseen, TimeSpan thenPauses) : IInferenceSchedulerGrain
    {
        private static readonly Guid Activation = Guid.NewGuid();
        private int _generated;

        public List<GenerationRequest> Calls { get; } = [];

        public IAsyncEnumerable<GeneratedChunk> Generate(GenerationRequest request, CancellationToken cancellation = default)
        {
            lock (Calls) Calls.Add(request);
            return Calls.Count == 1 ? First(cancellation) : From(request.Resume!.Length, cancellation);
        }

        private async IAsyncEnumerable<GeneratedChunk> First([EnumeratorCancellation] CancellationToken cancellation)
        {
            for (int i = 0; i < firstCallYields; i++) yield return Chunk(i);
            _generated += thenGeneratesUnseen;
            await Task.Delay(thenPauses, cancellation);
            await foreach (var chunk in From(firstCallYields, cancellation)) yield return chunk;
        }

        private async IAsyncEnumerable<GeneratedChunk> From(int first, [EnumeratorCancellation] CancellationToken cancellation)
        {
            _generated = first;
            for (int i = first; i < Tokens; i++)
            {
                await Task.Yield();
                cancellation.ThrowIfCancellationRequested();
                yield return Chunk(i);
            }
        }

        private GeneratedChunk Chunk(int token)
        {
            _generated = Math.Max(_generated, token + 1);
            return new GeneratedChunk(token, $"t{token}");
        }

        public Task<Guid> Incarnation() => Task.FromResult(Activation);
        public Task<int> StreamProgress(Guid stream) => Task.FromResult(Calls.Count > 0 && stream == Calls[^1].Stream ? _generated : -1);
        public Task<ShardDescription> Serve(ModelServing serving) => throw new NotSupportedException();
        public Task<int[]> Tokenize(string prompt, CancellationToken cancellation = default) => throw new NotSupportedException();
        public Task<SchedulerStatus> Status() => throw new NotSupportedException();
    }
}
