// Text in, text out for one sequence, with llama2.c run.c semantics: BOS first, the whole prompt in one
// prefill forward, then one decode step per token until the budget, BOS/EOS, or the context runs out.
using System.Text;
using Cluster.Model.Tokenizers;

namespace Cluster.Model;

/// <summary>One generated token and the text it completes (UTF-8 sequences split across tokens are held back until whole).</summary>
public readonly record struct GeneratedToken(int Id, string Text);

/// <summary>A model run in this process for one sequence at a time: whole (TransformerModel) or a layout's shards (LocalPipeline).</summary>
public interface ILocalModel : IDisposable
{
    ModelConfig Config { get; }

    /// <summary>A new sequence with KV room for <paramref name="tokens"/> tokens; disposing it frees that room.</summary>
    ILocalSequence Start(int tokens);
}

public interface ILocalSequence : IDisposable
{
    /// <summary>Appends <paramref name="tokens"/> to the sequence and writes the last one's logits (V,).</summary>
    void Forward(int[] tokens, Span<float> logits);
}

public sealed class TextGenerator(ILocalModel model, ITokenizer tokenizer)
{
    public ILocalModel Model => model;
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
        using var sequence = model.Start(promptTokens.Length + maxNewTokens);
        var decoder = Encoding.UTF8.GetDecoder();
        var chars = new char[64];
        int previous = promptTokens[^1];
        var logits = new float[model.Config.VocabSize];   // (V,) reused: one row of logits per step
        sequence.Forward(promptTokens, logits);
        for (int generated = 0; generated < maxNewTokens; generated++)
        {
            int next = sampler.Sample(logits);
            if (next == tokenizer.BosId || next == tokenizer.EosId) yield break;
            byte[] bytes = tokenizer.DecodeBytes(previous, next);
            if (chars.Length < bytes.Length + 4) chars = new char[bytes.Length + 4];
            int n = decoder.GetChars(bytes, chars, flush: false);
            yield return new GeneratedToken(next, new string(chars, 0, n));
            previous = next;
            if (generated + 1 < maxNewTokens) sequence.Forward([next], logits);
        }
    }
}
