// The tensor-parallel regions' pairs on a 2-rank InProcessTransport group (both ranks on their own threads):
// CopyToRegion (identity / all-reduce), ReduceFromRegion (all-reduce / identity), GatherFromRegion (all-gather joined by
// columns, uneven blocks / this rank's columns); and a group of one or none calls no collective.
using System.Diagnostics.Metrics;
using Cluster.Compute;
using Cluster.Compute.Collectives;
using Cluster.Compute.Cpu;
using static Cluster.Model.Parallel.TensorParallelRegions;

namespace Cluster.Tests.Parallel;

public sealed class TensorParallelRegionsTests
{
    [Fact]
    public async Task EachPairsForwardAndBackwardOnTwoRanks()
    {
        const int rows = 2, columns = 5;   // rank 0 holds columns 0..2, rank 1 columns 3..4
        float[][] partial = [[1, 2, 3], [10, 20, 30]];
        float[] sum = [11, 22, 33];
        float[][] local = [[0, 1, 2, 5, 6, 7], [3, 4, 8, 9]];                            // (rows, Cr)
        float[] whole = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];                                  // (rows, columns)
        var transports = InProcessTransport.CreateGroup(2);
        await Task.WhenAll(transports.Select(transport => Task.Run(() =>
        {
            var group = new CollectiveGroup(transport);
            int rank = group.Rank;

            using var device = new CpuDevice(1);
            using var x = device.Upload([.. partial[rank], 7]);
            CopyToRegion.Forward(device, x, partial[rank].Length, group);
            Assert.Equal([.. partial[rank], 7], Read(device, x));      // identity
            CopyToRegion.Backward(device, x, partial[rank].Length, group);
            Assert.Equal([.. sum, 7], Read(device, x));                // the input gradient, summed (only the first n floats)

            using var y = device.Upload([.. partial[rank], 7]);
            ReduceFromRegion.Forward(device, y, partial[rank].Length, group);
            Assert.Equal([.. sum, 7], Read(device, y));                // the partial outputs, summed (only the first n floats)
            ReduceFromRegion.Backward(device, y, partial[rank].Length, group);
            Assert.Equal([.. sum, 7], Read(device, y));                // identity

            var joined = GatherFromRegion.Forward(local[rank], rows, columns, group);
            Assert.Equal(whole, joined);                      // (rows, columns) in column order
            Assert.Equal(local[rank], GatherFromRegion.Backward(whole, rows, columns, group));   // this rank's columns
        }, TestContext.Current.CancellationToken)));
    }

    [Fact]
    public async Task AGroupOfOneOrNoneCallsNoCollective()
    {
        int thread = Environment.CurrentManagedThreadId, collectives = 0;
        using var meters = new MeterListener();
        meters.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == ClusterTelemetry.Name && instrument.Name == "cluster.collective.duration")
                listener.EnableMeasurementEvents(instrument);
        };
        meters.SetMeasurementEventCallback<double>((_, _, _, _) =>
        {
            if (Environment.CurrentManagedThreadId == thread) collectives++;   // a group of one completes on the caller's thread
        });
        meters.Start();
        var one = new CollectiveGroup(InProcessTransport.CreateGroup(1)[0]);
        using var device = new CpuDevice(1);
        using var buffer = device.Upload([1, 2, 3]);
        foreach (var group in new[] { one, null })
        {
            CopyToRegion.Forward(device, buffer, 3, group);
            CopyToRegion.Backward(device, buffer, 3, group);
            ReduceFromRegion.Forward(device, buffer, 3, group);
            ReduceFromRegion.Backward(device, buffer, 3, group);
            Assert.Equal(new float[] { 1, 2, 3 }, Read(device, buffer));
            float[] x = [1, 2, 3, 4];
            Assert.Same(x, GatherFromRegion.Forward(x, 2, 2, group));                   // no copy either
            Assert.Same(x, GatherFromRegion.Backward(x, 2, 2, group));
        }
        Assert.Equal(0, collectives);
        await one.AllReduce([1], TestContext.Current.CancellationToken);                 // the listener does see a real one (synchronous)
        Assert.Equal(1, collectives);
    }

    private static float[] Read(IDevice device, DeviceBuffer buffer)
    {
        var data = new float[buffer.Length];
        device.Download(buffer, data);
        return data;
    }
}
