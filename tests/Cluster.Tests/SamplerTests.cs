// Sampling: greedy is argmax, a seed reproduces a run, top-k / top-p only ever pick from their nucleus,
// and sampled frequencies follow the softmax.
using Cluster.Model;

namespace Cluster.Tests;

public sealed class SamplerTests
{
    private static readonly float[] Logits = [1f, 3f, 2.5f, -1f, 0f, 2.9f];

    [Fact]
    public void GreedyPicksTheFirstMaximum()
    {
        Assert.Equal(1, new Sampler(SamplingOptions.Greedy).Sample(Logits.ToArray()));
        Assert.Equal(0, new Sampler(SamplingOptions.Greedy).Sample(new float[] { 2, 2, 1 }));
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
