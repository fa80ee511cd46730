// A training checkpoint in a directory: weights.safetensors (every parameter by its logical name), optimizer.safetensors
// (AdamW's moments, "<name>.m" / "<name>.v") and manifest.msgpack (step, data cursor, the tensor names, MessagePack).
// Loading writes into an existing model and optimizer of the same config, so a run resumes bitwise where it stopped.
using Cluster.Model;
using Cluster.Model.Formats;
using MessagePack;

namespace Cluster.Training;

[MessagePackObject]
public sealed class CheckpointManifest
{
    public const int CurrentFormat = 1;

    [Key(0)] public int Format { get; set; } = CurrentFormat;
    [Key(1)] public int Step { get; set; }
    [Key(2)] public int DataEpoch { get; set; }
    [Key(3)] public int DataPosition { get; set; }
    [Key(4)] public string[] Tensors { get; set; } = [];
}

public static class Checkpoint
{
    public const string WeightsFile = "weights.safetensors", OptimizerFile = "optimizer.safetensors", ManifestFile = "manifest.msgpack";

    public static void Save(string directory, TrainableModel model, Optimizer optimizer, DataCursor cursor)
    {
        Directory.CreateDirectory(directory);
        var parameters = model.Parameters().ToArray();
        SafetensorsWriter.WriteTensors([.. parameters.Select(p => (p.Name, new long[] { p.Parameter.Length }, p.Parameter))],
            Path.Combine(directory, WeightsFile));
        var moments = optimizer.Moments;
        SafetensorsWriter.WriteTensors([.. parameters.SelectMany((p, i) => new[]
        {
            (p.Name + ".m", new long[] { p.Parameter.Length }, moments[i].M),
            (p.Name + ".v", new long[] { p.Parameter.Length }, moments[i].V),
        })], Path.Combine(directory, OptimizerFile));
        var manifest = new CheckpointManifest
        {
            Step = optimizer.Step, DataEpoch = cursor.Epoch, DataPosition = cursor.Position, Tensors = [.. parameters.Select(p => p.Name)],
        };
        // The manifest goes last: a directory with a manifest holds a whole checkpoint.
        File.WriteAllBytes(Path.Combine(directory, ManifestFile), MessagePackSerializer.Serialize(manifest));
    }

    /// <summary>Restores parameters and optimizer state in place; returns the data cursor to continue from.</summary>
    public static DataCursor Load(string directory, TrainableModel model, Optimizer optimizer)
    {
        string manifestPath = Path.Combine(directory, ManifestFile);
        if (!File.Exists(manifestPath)) throw new ModelFormatException(directory, $"no {ManifestFile}: not a (complete) checkpoint");
        CheckpointManifest manifest;
        try { manifest = MessagePackSerializer.Deserialize<CheckpointManifest>(File.ReadAllBytes(manifestPath)); }
        catch (MessagePackSerializationException e) { throw new ModelFormatException(manifestPath, "unreadable manifest: " + e.Message, inner: e); }
        if (manifest.Format != CheckpointManifest.CurrentFormat)
            throw new ModelFormatException(manifestPath, $"checkpoint format {manifest.Format}; this build reads {CheckpointManifest.CurrentFormat}");
        var parameters = model.Parameters().ToArray();
        if (!manifest.Tensors.SequenceEqual(parameters.Select(p => p.Name)))
            throw new ModelFormatException(manifestPath, "its tensors are not this model's (a different architecture or layer count)");

        ReadInto(Path.Combine(directory, WeightsFile), parameters.Select(p => (p.Name, p.Parameter)));
        var moments = optimizer.Moments;
        ReadInto(Path.Combine(directory, OptimizerFile), parameters.SelectMany((p, i) => new[] { (p.Name + ".m", moments[i].M), (p.Name + ".v", moments[i].V) }));
        optimizer.ResumeAt(manifest.Step);
        return new DataCursor(manifest.DataEpoch, manifest.DataPosition);
    }

    private static void ReadInto(string path, IEnumerable<(string Name, float[] Destination)> tensors)
    {
        using var file = MappedFile.Open(path);
        var index = SafetensorsFile.Parse(file);
        foreach (var (name, destination) in tensors)
        {
            if (!index.TryGetValue(name, out var tensor)) throw new ModelFormatException(path, "missing", name);
            if (tensor.ElementCount != destination.Length)
                throw new ModelFormatException(path, $"has {tensor.ElementCount} elements, the model's tensor {destination.Length}", name);
            file.ReadTensor(tensor.Offset, tensor.Type, tensor.ElementCount, name).CopyTo(destination, 0);
        }
    }
}
