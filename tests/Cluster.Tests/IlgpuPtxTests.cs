// Compiles every ILGPU kernel to PTX (SM 8.0) without a GPU, so a math function or construct the CUDA
// backend cannot lower fails here rather than on the first machine that has CUDA.
using System.Reflection;
using Cluster.Compute.Ilgpu;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace Cluster.Tests;

public sealed class IlgpuPtxTests
{
    [Fact]
    public void EveryKernelCompilesToPtx()
    {
        using var context = Context.Create(builder => builder.EnableAlgorithms());
        var architecture = CudaArchitecture.SM_80;
        using var backend = new PTXBackend(context, new CudaCapabilityContext(architecture), architecture, CudaInstructionSet.ISA_80, null);
        var kernels = typeof(IlgpuDevice).Assembly.GetTypes()
            .Where(t => t.Namespace == typeof(IlgpuDevice).Namespace && (t.Name.EndsWith("Kernel") || t.Name.EndsWith("Kernels")))
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly))
            .ToList();
        Assert.True(kernels.Count >= 12, $"found only {kernels.Count} kernels");
        foreach (var kernel in kernels)
        {
            bool implicitlyGrouped = kernel.GetParameters()[0].ParameterType == typeof(Index1D);
            var entry = implicitlyGrouped ? EntryPointDescription.FromImplicitlyGroupedKernel(kernel) : EntryPointDescription.FromExplicitlyGroupedKernel(kernel);
            var compiled = (PTXCompiledKernel)backend.Compile(entry, KernelSpecialization.Empty);
            Assert.Contains(".entry", compiled.PTXAssembly);
            File.WriteAllText($"/tmp/ptx_{kernel.DeclaringType!.Name}_{kernel.Name}.ptx", compiled.PTXAssembly);
        }
    }
}
