// How a shard trains, beside its weights and groups: which parameters (all, or LoRA adapters on a frozen base),
// whether the forward keeps every activation or only each layer's input (activation checkpointing: the backward
// recomputes a layer before it differentiates it, trading one more forward for activation memory), the precision of
// the matrix products, and the device they run on.
namespace Cluster.Training;

public enum Precision
{
    /// <summary>Every product in fp32.</summary>
    Float32,
    /// <summary>
    /// bf16 compute: the products' inputs (weights, activations, gradients) are rounded to bfloat16 and accumulated in
    /// fp32, as bf16 autocast does; master weights, gradients and AdamW state stay fp32, and bf16's 8-bit exponent
    /// needs no loss scaling. On this CPU backend the rounding gives bf16's numerics, not its speed.
    /// </summary>
    BFloat16,
}

public sealed record TrainingMode
{
    /// <summary>Null: every weight trains; else LoRA adapters on the frozen weights.</summary>
    public LoraOptions? Lora { get; init; }
    public bool ActivationCheckpointing { get; init; }
    public Precision Precision { get; init; }
    /// <summary>Where the forward and backward run: null for a CPU device of the shard's own, else this device (e.g. ILGPU; parameters and gradients reach it through DeviceTensors). AdamW updates the host parameters.</summary>
    public Cluster.Compute.IDevice? Device { get; init; }
}
