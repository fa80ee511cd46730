// MFU's two halves: the model's parameter count (N of 6·N FLOPs per token) and the peak of the cores its trainers use.
using Cluster.Model;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed class ModelFlopsTests
{
    [Theory]
    [InlineData("tiny")]
    [InlineData("gpt2-tiny")]
    [InlineData("storyteller")]
    public void ParameterCountIsEveryWeightOfTheModel(string preset)
    {
        var model = RandomModel.Create(preset, seed: 1);
        var w = model.Weights;
        long weights = w.TokenEmbedding.Length + (w.PositionEmbedding?.Length ?? 0) + w.FinalNorm.Length + (w.FinalNormBias?.Length ?? 0)
            + (w.Output?.Length ?? 0)
            + w.Layers.Sum(l => (long)l.AttnNorm.Length + (l.AttnNormBias?.Length ?? 0) + l.Wq.Length + l.Wk.Length + l.Wv.Length + l.Wo.Length
                + (l.Bq?.Length ?? 0) + (l.Bk?.Length ?? 0) + (l.Bv?.Length ?? 0) + (l.Bo?.Length ?? 0) + l.FfnNorm.Length + (l.FfnNormBias?.Length ?? 0)
                + l.W1.Length + l.W2.Length + (l.W3?.Length ?? 0) + (l.B1?.Length ?? 0) + (l.B2?.Length ?? 0));
        Assert.Equal(weights, model.Config.ParameterCount);
    }

    [Fact]
    public void FullTrainingCountsSixFlopsPerParameterAndLoraFour()
    {
        var config = RandomModel.Preset("tiny");
        Assert.Equal(6.0 * config.ParameterCount, ModelFlops.PerTrainedToken(config, lora: false));
        Assert.Equal(4.0 * config.ParameterCount, ModelFlops.PerTrainedToken(config, lora: true));
    }

    [Fact]
    public void TrainersSharingASiloShareItsCores()
    {
        // Silo a: three 1-thread trainers on 2 cores count 2 cores; silo b: one 2-thread trainer on 8 cores counts 2.
        TrainerCompute[] trainers =
        [
            new("a", 1, 2, 10e9), new("a", 1, 2, 10e9), new("a", 1, 2, 10e9),
            new("b", 2, 8, 20e9),
        ];
        Assert.Equal(2 * 10e9 + 2 * 20e9, ModelFlops.Peak(trainers));
    }

    [Fact]
    public void AnUnknownPeakGivesNoPeak()
    {
        Assert.Equal(0, ModelFlops.Peak([new("a", 1, 2, 10e9), new("b", 1, 1, 0)]));
        Assert.Equal(0, ModelFlops.Peak([]));
    }
}
