// The per-model scheduler: tokenizes, runs prefill then one decode step per token on the shard, samples, and
// streams tokens with llama2.c run.c semantics. The grain is non-reentrant, so concurrent requests interleave one
// step at a time and never overlap on the shard. A sequence's KV blocks are released however the stream ends.
using System.Runtime.InteropServices;
using System.Text;
using Cluster.Contracts;
using Cluster.Model;
using Cluster.Model.Tokenizers;

namespace Cluster.Grains;

public sealed class InferenceSchedulerGrain(IGrainFactory grains, ILocalSiloDetails silo) : Grain, IInferenceSchedulerGrain
{
    private ModelServing? _serving;
    private ITokenizer? _tokenizer;

    private string ModelId => this.GetPrimaryKeyString();
    private string ShardKeyOf(ModelServing serving) => ShardKey.Create(ModelId, 0, serving.ShardSilo);

    public async Task<ShardDescription> Serve(ModelServing serving)
    {
        if (_serving != serving)
        {
            _tokenizer = await Task.Run(() => ModelSources.LoadTokenizer(serving.Source));
            _serving = serving;
        }
        var description = await Shard(serving).Load(serving.Source);
        await grains.GetGrain<IModelRegistryGrain>(0).Register(new ModelEntry(ModelId, description.Config, description.Silo));
        return description;
    }

    public Task<int[]> Tokenize(string prompt) =>
        Task.FromResult((_tokenizer ?? throw new InvalidOperationException($"model '{ModelId}' is not being served")).Encode(prompt, addBos: true));

    public Task<SchedulerStatus> Status() => Task.FromResult(new SchedulerStatus(silo.Name, _serving is null ? null : ShardKeyOf(_serving)));

    public async IAsyncEnumerable<GeneratedChunk> Generate(GenerationRequest request)
    {
        var serving = _serving ?? throw new InvalidOperationException($"model '{ModelId}' is not being served");
        var tokenizer = _tokenizer!;
        var shard = Shard(serving);
        var description = await shard.Load(serving.Source);   // reloads where the shard reactivated elsewhere
        int[] prompt = request.PromptTokens ?? tokenizer.Encode(request.Prompt, addBos: true);
        if (prompt.Length == 0) throw new ArgumentException("the prompt has no tokens (not even BOS)");
        if (prompt.Length >= description.MaxSeqLen)
            throw new ArgumentException($"the prompt has {prompt.Length} tokens; the model's context is {description.MaxSeqLen}");
        int maxTokens = Math.Min(request.MaxTokens, description.MaxSeqLen - prompt.Length);
        var sampler = new Sampler(new SamplingOptions(request.Temperature, request.TopP, request.TopK, request.Seed));
        var sequence = Guid.NewGuid();
        var decoder = Encoding.UTF8.GetDecoder();
        try
        {
            int previous = prompt[^1];
            float[] logits = maxTokens > 0 ? await Step(shard, sequence, prompt) : [];
            for (int generated = 0; generated < maxTokens; generated++)
            {
                int next = sampler.Sample(logits);
                if (request.StopAtEos && (next == tokenizer.BosId || next == tokenizer.EosId)) yield break;
                byte[] bytes = tokenizer.DecodeBytes(previous, next);
                var chars = new char[decoder.GetCharCount(bytes, flush: false)];
                decoder.GetChars(bytes, chars, flush: false);
                yield return new GeneratedChunk(next, new string(chars));
                previous = next;
                if (generated + 1 < maxTokens) logits = await Step(shard, sequence, [next]);
            }
        }
        finally
        {
            await shard.ReleaseSequence(sequence);
        }
    }

    private IShardGrain Shard(ModelServing serving) => grains.GetGrain<IShardGrain>(ShardKeyOf(serving));

    private static async Task<float[]> Step(IShardGrain shard, Guid sequence, int[] tokens)
    {
        var result = await shard.Forward(new ForwardBatch([new ForwardChunk(sequence, tokens)]));
        return MemoryMarshal.Cast<byte, float>(result.Logits).ToArray();
    }
}
