// Sampling: greedy is argmax (temperature 0 or any below 1e-4), a seed reproduces a run, top-k / top-p only ever
// pick from their nucleus, and sampled frequencies follow the softmax; log-probabilities and OpenAI's penalties.
using Cluster.Model;

namespace Cluster.Tests;

public sealed class SamplerTests
{
    private static readonly float[] Logits = [1f, 3f, 2.5f, -1f, 0f, 2.9f];

    /// <summary>Log-probabilities: the log-softmax of the logits, the k most likely first (ties to the lower id), exp summing to 1.</summary>
    [Fact]
    public void LogprobsAreTheLogSoftmaxWithTheMostLikelyFirst()
    {
        float[] logits = [0f, 2f, 1f, 2f, -3f];
        double logSum = Math.Log(logits.Sum(v => Math.Exp(v)));
        var (chosen, top, values) = Sampler.Logprobs(logits, chosen: 2, top: 3);
        Assert.Equal(1 - logSum, chosen, 5);
        Assert.Equal([1, 3, 2], top);   // 2 and 2 tie: the lower id first
        Assert.Equal([2 - logSum, 2 - logSum, 1 - logSum], values.Select(v => (double)v), new Tolerance(1e-5));
        Assert.Equal(1, Sampler.Logprobs(logits, 0, 5).TopLogprobs.Sum(v => Math.Exp(v)), 5);
        Assert.Empty(Sampler.Logprobs(logits, 0, 0).TopTokens);
    }

    private sealed class Tolerance(double tolerance) : IEqualityComparer<double>
    {
        public bool Equals(double a, double b) => Math.Abs(a - b) <= tolerance;
        public int GetHashCode(double value) => 0;
    }

    /// <summary>OpenAI's penalties: presence once per generated token, frequency per occurrence.</summary>
    [Fact]
    public void PenaltiesLowerEachGeneratedTokenByPresenceAndFrequency()
    {
        float[] logits = [1f, 1f, 1f, 1f];
        Sampler.ApplyPenalties(logits, [2, 2, 0, 2], presence: 0.5f, frequency: 0.25f);
        Assert.Equal([1f - 0.5f - 0.25f, 1f, 1f - 0.5f - 0.75f, 1f], logits);
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampler.ApplyPenalties(logits, [4], 1, 1));
    }

    [Fact]
    public void GreedyPicksTheFirstMaximum()
    {
        Assert.Equal(1, new Sampler(SamplingOptions.Greedy).Sample(Logits.ToArray()));
        Assert.Equal(0, new Sampler(SamplingOptions.Greedy).Sample(new float[] { 2, 2, 1 }));
    }

    [Theory]
    [InlineData(1e-30f)]
    [InlineData(1e-38f)]   // a subnormal once turned every probability into NaN
    [InlineData(5e-5f)]
    public void TemperaturesBelowTheGreedyThresholdAreArgMax(float temperature)
    {
        var tiny = new Sampler(new SamplingOptions(Temperature: temperature, TopP: 0f, Seed: 5));
        float[] logits = [.. Logits];
        Assert.Equal(1, tiny.Sample(logits));
        Assert.Equal(Logits, logits);   // greedy leaves the logits as they are: nothing was scaled or softmaxed
        Assert.Equal(0, tiny.Sample(new float[] { 2, 2, 1 }));
        Assert.True(new SamplingOptions(Temperature: temperature).IsGreedy);   // so Skip draws nothing either, as at 0
    }

    [Fact]
    public void TemperatureJustAboveTheGreedyThresholdStillSamples()
    {
        // At 1e-3 the gaps between logits 3, 2.9 and 2.5 become 100 and 500: token 1 has all the mass but the softmax
        // is still finite; an exact tie at the top shows the draw (coins split it between the two maxima).
        var sampler = new Sampler(new SamplingOptions(Temperature: 1e-3f, TopP: 0f, Seed: 13));
        float[] probabilities = [.. Logits];
        Assert.Equal(1, sampler.Sample(probabilities));
        Assert.All(probabilities, p => Assert.True(float.IsFinite(p)));
        Assert.Equal(1f, probabilities[1], 1e-6f);

        var tie = new Sampler(new SamplingOptions(Temperature: 1e-3f, TopP: 0f, Seed: 13));
        var picks = Enumerable.Range(0, 200).Select(_ => tie.Sample(new float[] { 2, 2, 1 })).ToHashSet();
        Assert.Equal([0, 1], picks.Order());
    }

    [Fact]
    public void SameSeedSameTokensDifferentSeedDifferentTokens()
    {
        int[] Run(ulong seed)
        {
            var sampler = new Sampler(new SamplingOptions(Temperature: 1.5f, TopP: 0f, Seed: seed));
            return Enumerable.Range(0, 64).Select(_ => sampler.Sample(Logits.ToArray())).ToArray();
        }
        Assert.Equal(Run(7), Run(7));
        Assert.NotEqual(Run(7), Run(8));
    }

    [Fact]
    public void TopKAndTopPStayInsideTheirNucleus()
    {
        var topK = new Sampler(new SamplingOptions(Temperature: 2f, TopP: 0f, TopK: 2, Seed: 3));
        var topP = new Sampler(new SamplingOptions(Temperature: 1f, TopP: 0.5f, Seed: 3));
        for (int i = 0; i < 500; i++)
        {
            Assert.Contains(topK.Sample(Logits.ToArray()), new[] { 1, 5 });
            Assert.Contains(topP.Sample(Logits.ToArray()), new[] { 1, 5 });   // p(1)+p(5) ≈ 0.55 > 0.5 after sorting
        }
        Assert.Equal(1, new Sampler(new SamplingOptions(Temperature: 1f, TopK: 1, Seed: 9)).Sample(Logits.ToArray()));
    }

    [Fact]
    public void FrequenciesFollowTheSoftmax()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 1f, TopP: 0f, Seed: 11));
        var probabilities = Logits.ToArray();
        Sampler.Softmax(probabilities);
        var counts = new int[Logits.Length];
        const int draws = 40000;
        for (int i = 0; i < draws; i++) counts[sampler.Sample(Logits.ToArray())]++;
        for (int i = 0; i < Logits.Length; i++) Assert.InRange(counts[i] / (double)draws, probabilities[i] - 0.01, probabilities[i] + 0.01);
    }

    [Fact]
    public void BadOptionsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions(Temperature: -1f)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions(Temperature: float.NaN)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions(TopP: 1.5f)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions(TopK: -2)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions(Seed: 0)));
    }
}
