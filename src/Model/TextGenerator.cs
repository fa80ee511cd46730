// Text in, text out for one sequence, with llama2.c run.c semantics: BOS first, the whole prompt in one
// prefill forward, then one decode step per token until the budget, BOS/EOS, or the context runs out.
using System.Text;
using Cluster.Model.Tokenizers;

namespace Cluster.Model;

/// <summary>One generated token and the text it completes (UTF-8 sequences split across tokens are held back until whole).</summary>
public readonly record struct GeneratedToken(int Id, string Text);

public sealed class TextGenerator(TransformerModel model, ITokenizer tokenizer)
{
    public TransformerModel Model => model;
    public ITokenizer Tokenizer => tokenizer;

    /// <summary>Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/> (BOS is prepended).</summary>
    public IEnumerable<GeneratedToken> Generate(string prompt, int maxNewTokens, SamplingOptions sampling)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxNewTokens);
        var sampler = new Sampler(sampling);
        int[] promptTokens = tokenizer.Encode(prompt, addBos: true);
        return Generate(promptTokens, maxNewTokens, sampler);
    }

    public IEnumerable<GeneratedToken> Generate(int[] promptTokens, int maxNewTokens, Sampler sampler)
    {
        var config = model.Config;
        if (promptTokens.Length == 0) throw new ArgumentException("the prompt has no tokens (not even BOS)", nameof(promptTokens));
        if (promptTokens.Length >= config.MaxSeqLen)
            throw new ArgumentException($"the prompt has {promptTokens.Length} tokens; the model's context is {config.MaxSeqLen}", nameof(promptTokens));
        return Run(promptTokens, Math.Min(maxNewTokens, config.MaxSeqLen - promptTokens.Length), sampler);
    }

    private IEnumerable<GeneratedToken> Run(int[] promptTokens, int maxNewTokens, Sampler sampler)
    {
        if (maxNewTokens == 0) yield break;
        using var cache = model.CreateCache(1, promptTokens.Length + maxNewTokens, blockSize: 16);
        int sequence = cache.CreateSequence();
        var decoder = Encoding.UTF8.GetDecoder();
        var chars = new char[64];
        int previous = promptTokens[^1];
        var logits = new float[model.Config.VocabSize];   // (V,) reused: one row of logits per step
        model.ForwardInto([new SequenceChunk(sequence, promptTokens)], cache, logits);
        for (int generated = 0; generated < maxNewTokens; generated++)
        {
            int next = sampler.Sample(logits);
            if (next == tokenizer.BosId || next == tokenizer.EosId) yield break;
            byte[] bytes = tokenizer.DecodeBytes(previous, next);
            if (chars.Length < bytes.Length + 4) chars = new char[bytes.Length + 4];
            int n = decoder.GetChars(bytes, chars, flush: false);
            yield return new GeneratedToken(next, new string(chars, 0, n));
            previous = next;
            if (generated + 1 < maxNewTokens) model.ForwardInto([new SequenceChunk(sequence, [next])], cache, logits);
        }
    }
}
