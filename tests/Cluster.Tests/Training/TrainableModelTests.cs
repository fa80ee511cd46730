// The trainable decoder: its logits equal the inference model's, packed documents do not see each other, its
// whole-model gradients agree with finite differences of its loss, and AdamW steps on it fit a small fixed set.
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class TrainableModelTests
{
    private static (ModelConfig Config, ModelWeights Weights) Small(int seed, Architecture architecture = Architecture.Llama) =>
        (TestModels.SmallConfig(architecture), TestModels.RandomWeights(TestModels.SmallConfig(architecture), seed));

    public static TheoryData<Architecture> Architectures => new() { Architecture.Llama, Architecture.Gpt2 };

    [Fact]
    public void LogitsEqualTheInferenceModel()
    {
        foreach (var (config, weights) in new[] { Small(1), Small(1, Architecture.Gpt2), (RandomModel.Preset("tiny"), RandomModel.Create("tiny", 2).Weights),
                                                  (RandomModel.Preset("gpt2-tiny"), RandomModel.Create("gpt2-tiny", 2).Weights) })
        {
            int[] tokens = [.. Enumerable.Range(0, 19).Select(i => (i * 7 + 3) % config.VocabSize)];
            using var device = new CpuDevice(1);
            using var inference = new TransformerModel(device, config, weights);
            using var cache = inference.CreateCache(1, tokens.Length, 4);
            float[] expected = inference.Forward([new SequenceChunk(cache.CreateSequence(), tokens, AllLogits: true)], cache);

            using var trainable = new TrainableModel(config, weights);
            float[] actual = trainable.Logits(tokens);

            Assert.True(Reference.MaxRelativeError(actual, expected) <= 1e-5, $"max error {Reference.MaxRelativeError(actual, expected)}");
        }
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void PackedDocumentsAreComputedAsIfAlone(Architecture architecture)
    {
        var (config, weights) = Small(3, architecture);
        using var model = new TrainableModel(config, weights);
        int[] first = [5, 9, 2, 40, 7], second = [11, 3, 3, 60];
        float[] packed = model.Logits([.. first, .. second], [.. first.Select(_ => 0), .. second.Select(_ => 1)]);

        float[] alone = [.. model.Logits(first), .. model.Logits(second)];

        Assert.True(Reference.MaxRelativeError(packed, alone) <= 1e-5);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void GradientsAgreeWithFiniteDifferencesOfTheLoss(Architecture architecture)
    {
        var (config, weights) = Small(4, architecture);
        using var model = new TrainableModel(config, weights);
        var batch = TestModels.FiniteDifferenceBatch(config, seed: 5);
        model.ZeroGradients();
        model.ForwardBackward(batch);

        Reference.AssertGradientsMatchFiniteDifferences([.. model.Parameters().Select(p => (p.Name, p.Parameter, p.Gradient))], Loss);

        double Loss()
        {
            using var probe = new TrainableModel(config, weights);   // shares the parameters; its own gradients are thrown away
            return probe.ForwardBackward(batch);
        }
    }

    [Fact]
    public void AdamWStepsFitASmallSet()
    {
        var (config, weights) = Small(6);
        using var model = new TrainableModel(config, weights);
        var rng = new Random(7);
        TrainingSequence[] data = [.. Enumerable.Range(0, 4).Select(_ =>
        {
            int[] text = [.. Enumerable.Range(0, 12).Select(_ => rng.Next(config.VocabSize))];
            return new TrainingSequence(text[..^1], text[1..]);
        })];
        var state = model.Parameters().Select(p => (M: new float[p.Parameter.Length], V: new float[p.Parameter.Length])).ToArray();
        float first = 0, last = 0;
        for (int step = 1; step <= 40; step++)
        {
            model.ZeroGradients();
            last = model.ForwardBackward(data);
            if (step == 1) first = last;
            int i = 0;
            foreach (var (_, parameter, gradient) in model.Parameters())
            {
                AdamW.Update(parameter, gradient, state[i].M, state[i].V, step, learningRate: 1e-2f);
                i++;
            }
        }
        Assert.True(last < 0.3f * first, $"loss went from {first} to {last}");
    }
}
