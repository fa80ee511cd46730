// Picks the next token from a row of logits: greedy (temperature below 1e-4, 0 included), or temperature + top-k +
// top-p (nucleus) sampling with run.c's xorshift generator, so a seed reproduces llama2.c's choices.
namespace Cluster.Model;

public sealed record SamplingOptions(float Temperature = 1f, float TopP = 0.9f, int TopK = 0, ulong Seed = 1)
{
    /// <summary>Temperatures below this pick the argmax: dividing logits by them overflows to ±∞ and the softmax to NaN.</summary>
    public const float GreedyBelow = 1e-4f;

    public static SamplingOptions Greedy { get; } = new(Temperature: 0f);

    /// <summary>Whether sampling is the argmax, which draws nothing from the generator.</summary>
    public bool IsGreedy => Temperature < GreedyBelow;

    /// <summary>Throws ArgumentOutOfRangeException naming the bad parameter.</summary>
    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "temperature must be finite and ≥ 0");
        if (!float.IsFinite(TopP) || TopP < 0 || TopP > 1) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top_p must be in [0, 1]");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top_k must be ≥ 0 (0 = off)");
        if (Seed == 0) throw new ArgumentOutOfRangeException(nameof(Seed), Seed, "xorshift needs a non-zero seed");
    }
}

public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private ulong _state;
    [ThreadStatic] private static (float Probability, int Index)[]? t_candidates;   // sort space, one per thread: samplers are made per step on shards

    public Sampler(SamplingOptions options)
    {
        options.Validate();
        _options = options;
        _state = options.Seed;
    }

    /// <summary>The generator's state now: a sampler made with it as its seed continues where this one is.</summary>
    public ulong Generator => _state;

    /// <summary>The next token; <paramref name="logits"/> (V,) is overwritten with probabilities when sampling.</summary>
    public int Sample(Span<float> logits)
    {
        if (_options.IsGreedy) return ArgMax(logits);
        for (int i = 0; i < logits.Length; i++) logits[i] /= _options.Temperature;
        Softmax(logits);
        float coin = RandomFloat();
        if (_options.TopK > 0 && _options.TopK < logits.Length) return SampleTopK(logits, _options.TopK, coin);
        return _options.TopP <= 0 || _options.TopP >= 1 ? SampleMultinomial(logits, coin) : SampleTopP(logits, _options.TopP, coin);
    }

    /// <summary>Moves the generator past <paramref name="samples"/> earlier samples (resuming a generation elsewhere).</summary>
    public void Skip(int samples)
    {
        if (_options.IsGreedy) return;   // greedy draws nothing
        for (int i = 0; i < samples; i++) RandomFloat();
    }

    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;   // first maximum wins, as in run.c
        return best;
    }

    /// <summary>
    /// OpenAI's penalties on a row of <paramref name="logits"/> (V,): each token is lowered by
    /// <paramref name="presence"/> if it is among the <paramref name="generated"/> tokens and by <paramref name="frequency"/>
    /// times its count there.
    /// </summary>
    public static void ApplyPenalties(Span<float> logits, ReadOnlySpan<int> generated, float presence, float frequency)
    {
        var counts = new Dictionary<int, int>();
        foreach (int token in generated)
        {
            if ((uint)token >= (uint)logits.Length) throw new ArgumentOutOfRangeException(nameof(generated), token, $"token outside the vocabulary of {logits.Length}");
            counts[token] = counts.GetValueOrDefault(token) + 1;
        }
        foreach (var (token, count) in counts) logits[token] -= presence + frequency * count;
    }

    /// <summary>
    /// Log-probabilities from raw <paramref name="logits"/> (V,) (log-softmax, in double): the chosen token's, and the
    /// <paramref name="top"/> most likely tokens' ids and values, most likely first (ties to the lower id).
    /// </summary>
    public static (float Chosen, int[] TopTokens, float[] TopLogprobs) Logprobs(ReadOnlySpan<float> logits, int chosen, int top)
    {
        float max = float.NegativeInfinity;
        foreach (float v in logits) max = MathF.Max(max, v);
        double sum = 0;
        foreach (float v in logits) sum += Math.Exp(v - max);
        double logSum = max + Math.Log(sum);
        top = Math.Min(top, logits.Length);
        var ids = new int[top];
        int count = 0;
        for (int i = 0; i < logits.Length && top > 0; i++)   // an insertion into the k best so far: k is at most 20
        {
            if (count == top && !(logits[i] > logits[ids[top - 1]])) continue;
            int at = count < top ? count++ : top - 1;
            while (at > 0 && logits[i] > logits[ids[at - 1]]) { ids[at] = ids[at - 1]; at--; }
            ids[at] = i;
        }
        var values = new float[top];
        for (int j = 0; j < top; j++) values[j] = (float)(logits[ids[j]] - logSum);
        return ((float)(logits[chosen] - logSum), ids, values);
    }

    public static void Softmax(Span<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        float sum = 0;
        for (int i = 0; i < x.Length; i++) { x[i] = MathF.Exp(x[i] - max); sum += x[i]; }
        for (int i = 0; i < x.Length; i++) x[i] /= sum;
    }

    private static int SampleMultinomial(ReadOnlySpan<float> probabilities, float coin)
    {
        float cdf = 0;
        for (int i = 0; i < probabilities.Length; i++)
        {
            cdf += probabilities[i];
            if (coin < cdf) return i;
        }
        return probabilities.Length - 1;   // rounding left the cdf just under the coin
    }

    // run.c sample_topp: drop tokens below (1 − p)/(n − 1) (they cannot be in the nucleus), sort the rest,
    // keep the shortest prefix whose mass exceeds p, and draw from it.
    private int SampleTopP(ReadOnlySpan<float> probabilities, float topP, float coin)
    {
        float cutoff = (1f - topP) / (probabilities.Length - 1);
        var candidates = Candidates(probabilities, cutoff);
        candidates.Sort(static (a, b) => b.Probability.CompareTo(a.Probability));
        float cumulative = 0;
        int last = candidates.Length - 1;
        for (int i = 0; i < candidates.Length; i++)
        {
            cumulative += candidates[i].Probability;
            if (cumulative > topP) { last = i; break; }
        }
        return Draw(candidates[..(last + 1)], coin * cumulative);
    }

    // The k most likely tokens, renormalised; top-p then applies inside them when set.
    private int SampleTopK(ReadOnlySpan<float> probabilities, int k, float coin)
    {
        var candidates = Candidates(probabilities, 0f);
        candidates.Sort(static (a, b) => b.Probability.CompareTo(a.Probability));
        candidates = candidates[..Math.Min(k, candidates.Length)];
        float mass = 0;
        int last = candidates.Length - 1;
        bool nucleus = _options.TopP > 0 && _options.TopP < 1;
        float nucleusMass = _options.TopP * TotalOf(candidates);
        for (int i = 0; i < candidates.Length; i++)
        {
            mass += candidates[i].Probability;
            if (nucleus && mass > nucleusMass) { last = i; break; }
        }
        return Draw(candidates[..(last + 1)], coin * mass);
    }

    private static float TotalOf(ReadOnlySpan<(float Probability, int Index)> candidates)
    {
        float total = 0;
        foreach (var c in candidates) total += c.Probability;
        return total;
    }

    private static int Draw(ReadOnlySpan<(float Probability, int Index)> candidates, float target)
    {
        float cdf = 0;
        foreach (var c in candidates)
        {
            cdf += c.Probability;
            if (target < cdf) return c.Index;
        }
        return candidates[^1].Index;
    }

    /// <summary>The tokens of probability ≥ <paramref name="cutoff"/>, in this thread's sort space.</summary>
    private static Span<(float Probability, int Index)> Candidates(ReadOnlySpan<float> probabilities, float cutoff)
    {
        if (t_candidates is null || t_candidates.Length < probabilities.Length) t_candidates = new (float, int)[probabilities.Length];
        var candidates = t_candidates;
        int n = 0;
        for (int i = 0; i < probabilities.Length; i++)
            if (probabilities[i] >= cutoff) candidates[n++] = (probabilities[i], i);
        return candidates.AsSpan(0, n);
    }

    // run.c random_u32 / random_f32: xorshift64* and the top 24 bits as a float in [0, 1).
    private float RandomFloat()
    {
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        uint u = (uint)((_state * 0x2545F4914F6CDD1DUL) >> 32);
        return (u >> 8) / 16777216.0f;
    }
}
