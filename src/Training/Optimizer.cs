// The optimizer of a training run: AdamW over every parameter of a TrainableModel, the gradient clipped to a global
// L2 norm first, and the learning rate from a linear warmup then cosine decay to a floor (nanoGPT's get_lr). The update
// runs where the model's kernels run (TrainableModel.AdamWStep): on a GPU, parameters and moments stay there.
namespace Cluster.Training;

public sealed record OptimizerOptions
{
    public float LearningRate { get; init; } = 3e-4f;
    public float MinLearningRate { get; init; } = 3e-5f;
    public int WarmupSteps { get; init; } = 10;
    public int TotalSteps { get; init; } = 1000;
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.95f;
    public float Eps { get; init; } = 1e-8f;
    public float WeightDecay { get; init; } = 0.1f;
    /// <summary>Largest global L2 norm of the gradient; 0 turns clipping off.</summary>
    public float ClipNorm { get; init; } = 1f;

    /// <summary>The learning rate of 1-based <paramref name="step"/>: linear warmup, cosine decay, then the floor.</summary>
    public float LearningRateAt(int step)
    {
        if (step <= WarmupSteps) return LearningRate * step / Math.Max(1, WarmupSteps);
        if (step >= TotalSteps) return MinLearningRate;
        double progress = (step - WarmupSteps) / (double)Math.Max(1, TotalSteps - WarmupSteps);
        return (float)(MinLearningRate + 0.5 * (1 + Math.Cos(Math.PI * progress)) * (LearningRate - MinLearningRate));
    }
}

public sealed class Optimizer(TrainableModel model, OptimizerOptions options)
{
    private readonly (float[] M, float[] V)[] _moments = [.. model.TrainedTensors().Select(p => (new float[p.Parameter.Length], new float[p.Parameter.Length]))];

    public OptimizerOptions Options => options;
    /// <summary>Steps taken so far.</summary>
    public int Step { get; private set; }

    /// <summary>
    /// The first and second moments of each parameter, in <see cref="TrainableModel.Parameters"/> order. On a device
    /// that is not the CPU they live there between steps: read them after Parameters(), which brings them down too.
    /// </summary>
    internal IReadOnlyList<(float[] M, float[] V)> Moments => _moments;

    /// <summary>Continues from a checkpoint taken after <paramref name="step"/> steps (the moments are restored in place).</summary>
    internal void ResumeAt(int step) => Step = step;

    /// <summary>Clips the accumulated gradient, applies one AdamW step and returns (learning rate, gradient norm before clipping).</summary>
    public (float LearningRate, float GradientNorm) Apply() => Apply((float)Math.Sqrt(model.CountedGradientSquares()));

    /// <summary>As Apply(), with the gradient norm of the whole model given (a shard's optimizer clips by the norm over every shard).</summary>
    public (float LearningRate, float GradientNorm) Apply(float norm)
    {
        Step++;
        float clip = options.ClipNorm > 0 && norm > options.ClipNorm ? options.ClipNorm / norm : 1f;
        float lr = options.LearningRateAt(Step);
        model.AdamWStep(_moments, Step, lr, clip, options);
        return (lr, norm);
    }
}
