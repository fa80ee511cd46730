// Shard grains on a silo's configured devices (ShardOptions.Devices, Cluster__Devices): the two tensor-parallel shards
// of a tp=2 model on a silo with two devices take one each and the inventory says which shard holds which device; on a
// machine with CUDA, a model served from the GPU (both shards sharing it) gives the CPU's greedy tokens.
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Contracts;
using Cluster.Model;

namespace Cluster.Tests.Grains;

public sealed class ShardDeviceTests
{
    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    /// <summary>
    /// Two epochs' loads reaching a shard at once (a configured model served at start while the first request serves it
    /// too): the second waits for the first and reuses its slice, so the shard holds one copy of its weights and one
    /// device, and answers in the newer epoch.
    /// </summary>
    [Fact]
    public async Task ConcurrentLoadsOfAShardKeepOneSliceOnOneDevice()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 1);
        string silo = cluster.Silos[0].Name, key = ShardKey.Create("loaded-twice", 0, 0, 0, silo);
        var shard = cluster.Client.GetGrain<IShardGrain>(key);
        ShardAssignment Assignment(long epoch) => new(TestClusters.Tiny, "", 0, 0, 0, [key], null, epoch);
        var older = shard.Load(Assignment(1));
        var newer = shard.Load(Assignment(2));
        Assert.Equal(2, (await newer).Epoch);
        // The two may arrive in either order: epoch 1 first loads and is then ended, or arrives second and is refused.
        try { await older; }
        catch (StaleEpochException) { }
        Assert.Equal(2, (await shard.Describe())!.Epoch);

        var inventory = cluster.Client.GetGrain<IClusterInventoryGrain>(0);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)   // the inventory lags the device's holders by a report
        {
            var holders = (await inventory.ActiveSilos()).Single().Devices.SelectMany(d => d.Holders).Where(h => h.Key == key).ToArray();
            if (holders.Length == 1 && holders[0].WeightBytes > 0) break;
            Assert.True(DateTime.UtcNow < deadline, $"the shard holds {holders.Length} device leases: {string.Join(", ", holders)}");
            await Task.Delay(100, Cancel);
        }
    }

    [Fact]
    public async Task TensorParallelShardsOnASiloWithTwoDevicesTakeOneEach()
    {
        await using var cluster = await TestClusters.StartAsync(silos: 1, shards: o => o.Devices = DeviceSpec.ParseList("cpu:0,cpu:1"));
        string silo = cluster.Silos[0].Name;
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("on-devices");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "tp=2", [silo]));
        var served = await scheduler.GenerateAsync(new GenerationRequest { Prompt = "Once upon a time", MaxTokens = 8, Temperature = 0 }, Cancel);
        Assert.Equal(CpuGreedy("Once upon a time", 8), served.Select(c => c.TokenId));

        string[] shards = [ShardKey.Create("on-devices", 0, 0, 0, silo), ShardKey.Create("on-devices", 0, 0, 1, silo)];
        var described = await Task.WhenAll(shards.Select(k => cluster.Client.GetGrain<IShardGrain>(k).Describe()));
        Assert.Equal(["cpu:0", "cpu:1"], described.Select(d => d!.Device.Split(' ')[0]).Order());

        // The inventory lists each device with the shard on it and what the shard keeps there: its half of the weights and
        // its KV cache, counted as the model's own figures (reported when they took them, so possibly a moment later).
        var inventory = cluster.Client.GetGrain<IClusterInventoryGrain>(0);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            var devices = (await inventory.ActiveSilos()).Single().Devices;
            var holders = devices.Select(d => d.Holders.Where(h => h.Key.StartsWith("on-devices/", StringComparison.Ordinal)).ToArray()).ToArray();
            if (holders.Length == 2 && holders.All(h => h.Length == 1) && holders.SelectMany(h => h).Select(h => h.Key).Order().SequenceEqual(shards.Order())
                && holders.All(h => h[0].WorkspaceBytes > 0))
            {
                var config = RandomModel.Preset("tiny");
                foreach (var h in holders.Select(h => h[0]))
                {
                    // A rank holds half of every projection (packed, so at least that) and of the vocabulary's rows.
                    Assert.InRange(h.WeightBytes, config.ParameterCount * sizeof(float) / 2 - 2 * config.Dim * sizeof(float), config.ParameterCount * sizeof(float) * 3 / 4);
                    // Keys and values of its layers and half the KV heads, for every block of the KV pool (8 sequences).
                    Assert.Equal(2L * config.Layers * (8 * config.MaxSeqLen) * (config.KvDim / 2) * sizeof(float), h.KvBytes);
                }
                break;
            }
            Assert.True(DateTime.UtcNow < deadline, $"the inventory shows {string.Join("; ", devices.Select(d => $"{d.Device}: {string.Join(",", d.Holders)}"))}");
            await Task.Delay(100, Cancel);
        }
    }

    [Fact]
    public async Task UnpinnedShardsGoToTheSiloWithFreeDevices()
    {
        // Silo_0 has one device, Silo_1 four: the three shards of an unpinned pp=3 model all find a free device on Silo_1
        // (at random, all three would land there one time in eight).
        await using var cluster = await TestClusters.StartAsync(silos: 2, silo: (options, builder) =>
            builder.Configure<Cluster.Grains.ShardOptions>(o => o.Devices = DeviceSpec.ParseList(options.SiloName.EndsWith('0') ? "cpu" : "cpu:0,cpu:1,cpu:2,cpu:3")));
        var inventory = cluster.Client.GetGrain<IClusterInventoryGrain>(0);
        while ((await inventory.ActiveSilos()).Length < 2) await Task.Delay(100, Cancel);   // both silos have reported their devices
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("unpinned");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "pp=3", null));
        var described = await Task.WhenAll(Enumerable.Range(0, 3).Select(stage =>
            cluster.Client.GetGrain<IShardGrain>(ShardKey.Create("unpinned", 0, stage, 0)).Describe()));
        Assert.All(described, d => Assert.EndsWith("1", d!.Silo));
        Assert.Equal(3, described.Select(d => d!.Device.Split(' ')[0]).Distinct().Count());
    }

    [Fact]
    public async Task AModelServedFromACudaDeviceGivesTheCpusGreedyTokens()
    {
        // ILGPU's CPU accelerator runs each GPU thread as an OS thread: on two cores the tiny model's first step took
        // over a minute, so the served path is checked on CUDA only (the kernels themselves: IlgpuDeviceTests).
        if (!Cluster.Compute.Ilgpu.IlgpuDevice.Available().Contains(Cluster.Compute.Ilgpu.IlgpuTarget.Cuda))
            Assert.Skip("no CUDA device on this machine: serving from an ILGPU device not checked");
        await using var cluster = await TestClusters.StartAsync(silos: 1, schedulers: o => o.StepTimeout = TimeSpan.FromMinutes(1),
            shards: o => o.Devices = [DeviceSpec.Parse("cuda:0")]);
        var scheduler = cluster.Client.GetGrain<IInferenceSchedulerGrain>("on-cuda");
        await scheduler.Serve(new ModelServing(TestClusters.Tiny, "tp=2", [cluster.Silos[0].Name]));
        var served = await scheduler.GenerateAsync(new GenerationRequest { Prompt = "Once upon a time", MaxTokens = 16, Temperature = 0 }, Cancel);
        Assert.Equal(CpuGreedy("Once upon a time", 16), served.Select(c => c.TokenId));
        var shard = await cluster.Client.GetGrain<IShardGrain>(ShardKey.Create("on-cuda", 0, 0, 1, cluster.Silos[0].Name)).Describe();
        Assert.StartsWith("cuda:0", shard!.Device);
    }

    private static IEnumerable<int> CpuGreedy(string prompt, int tokens)
    {
        var loaded = RandomModel.Create("tiny", seed: 1);
        using var cpu = new CpuDevice(1);
        using var model = new TransformerModel(cpu, loaded.Config, loaded.Weights);
        return [.. new TextGenerator(model, loaded.Tokenizer!).Generate(prompt, tokens, SamplingOptions.Greedy).Select(t => t.Id)];
    }
}
