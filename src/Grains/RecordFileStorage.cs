// The grain storage of durable records (training jobs, served models, the model registry): one file per grain and
// state in {Root}/records, in the silo's grain storage serializer, written through DurableFile (0600 on Unix, flushed
// to the disk and renamed into place, so a crash leaves the old record or the new one). The ETag is the file's last
// write time: a write from an activation that read an older record fails with InconsistentStateException.
using System.Globalization;
using Cluster.Training;
using Orleans.Storage;

namespace Cluster.Grains;

public sealed class RecordFileStorage(string directory, IGrainStorageSerializer serializer) : IGrainStorage
{
    public async Task ReadStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        string path = PathOf(stateName, grainId);
        string? etag = ETagOf(path);
        if (etag is null)
        {
            grainState.ETag = null;
            grainState.RecordExists = false;
            return;   // the state stays the fresh one the grain started with
        }
        grainState.State = serializer.Deserialize<T>(new BinaryData(await File.ReadAllBytesAsync(path)));
        grainState.ETag = etag;
        grainState.RecordExists = true;
    }

    public async Task WriteStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        string path = PathOf(stateName, grainId);
        CheckETag(path, grainState);
        byte[] bytes = serializer.Serialize(grainState.State).ToArray();
        await Task.Run(() =>
        {
            DurableFile.CreatePrivateDirectory(directory);
            DurableFile.WriteAllBytes(path, bytes);
        });
        grainState.ETag = ETagOf(path);
        grainState.RecordExists = true;
    }

    public async Task ClearStateAsync<T>(string stateName, GrainId grainId, IGrainState<T> grainState)
    {
        string path = PathOf(stateName, grainId);
        CheckETag(path, grainState);
        await Task.Run(() =>
        {
            File.Delete(path);
            if (Directory.Exists(directory)) DurableFile.FlushDirectory(directory);
        });
        grainState.ETag = null;
        grainState.RecordExists = false;
    }

    private string PathOf(string stateName, GrainId grainId) => Path.Combine(directory, Uri.EscapeDataString($"{grainId}.{stateName}"));

    private static string? ETagOf(string path)
    {
        var file = new FileInfo(path);
        return file.Exists ? file.LastWriteTimeUtc.Ticks.ToString(CultureInfo.InvariantCulture) : null;
    }

    private static void CheckETag<T>(string path, IGrainState<T> grainState)
    {
        string? stored = ETagOf(path);
        if (stored != grainState.ETag)
            throw new InconsistentStateException($"{path} changed since this activation read it", stored ?? "none", grainState.ETag ?? "none");
    }
}
