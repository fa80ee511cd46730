// Model FLOP utilisation, MFU (PaLM, appendix B; nanoGPT's estimate_mfu): the FLOPs a trained token needs by the
// model's arithmetic, times tokens/s, over the peak of the hardware that trained it. A training job reports it per step
// (cluster.training.mfu and its events); cluster-bench training prints it beside tokens/s.
using Cluster.Model;

namespace Cluster.Training;

/// <summary>Where one trainer ran: its silo, its threads, the silo's cores and one core's FLOP/s (0: unknown).</summary>
public readonly record struct TrainerCompute(string Silo, int Threads, int SiloCores, double FlopsPerCore);

public static class ModelFlops
{
    /// <summary>
    /// 6·N per token for full training (2N forward, 4N backward), 4N with LoRA (the frozen weights get no gradient
    /// of their own). Attention's score FLOPs and recomputed forwards are not counted, as in the usual estimate.
    /// </summary>
    public static double PerTrainedToken(ModelConfig config, bool lora) => (lora ? 4.0 : 6.0) * config.ActiveParameterCount;

    /// <summary>
    /// The peak of the cores a job's trainers use: on each silo, its trainers' threads (at most its cores: trainers
    /// sharing a machine share its cores) times one core's FLOP/s. 0 when any trainer's peak is unknown (ILGPU devices).
    /// </summary>
    public static double Peak(IReadOnlyCollection<TrainerCompute> trainers)
    {
        if (trainers.Count == 0 || trainers.Any(t => t.FlopsPerCore <= 0)) return 0;
        return trainers.GroupBy(t => t.Silo).Sum(silo =>
            Math.Min(silo.Sum(t => t.Threads), silo.Max(t => t.SiloCores)) * silo.Average(t => t.FlopsPerCore));
    }
}
