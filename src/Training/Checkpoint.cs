// Sharded training checkpoints keyed by logical tensor, so a run saved at one layout resumes at another. A checkpoint
// is a directory per step: one safetensors file per shard that wrote (replica 0's: every replica holds the same
// state), each tensor slice stored under "<name>|<rows>x<columns>|<axis>|<offset>+<count>" with AdamW's moments beside
// it ("…|m", "…|v"), and manifest.msgpack (step, data cursor, the layout it was saved at, the shard files), written
// last: a directory with a manifest is whole. A shard restores by assembling each of its tensors from the pieces that
// hold it, whatever their slicing, then cutting its own slice.
using System.Globalization;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using MessagePack;

namespace Cluster.Training;

[MessagePackObject]
public sealed class CheckpointManifest
{
    public const int CurrentFormat = 2;

    [Key(0)] public int Format { get; set; } = CurrentFormat;
    [Key(1)] public int Step { get; set; }
    [Key(2)] public int DataEpoch { get; set; }
    [Key(3)] public int DataPosition { get; set; }
    [Key(4)] public string Layout { get; set; } = "";
    [Key(5)] public string[] Files { get; set; } = [];

    [IgnoreMember] public DataCursor Cursor => new(DataEpoch, DataPosition);
}

/// <summary>A copy of one shard's training state, taken between steps (ShardTrainer.CaptureState), to be written while training goes on.</summary>
public sealed record ShardState(ShardSpec Spec, ParameterSlice[] Parameters, float[][] M, float[][] V, int Step);

public static class Checkpoint
{
    public const string ManifestFile = "manifest.msgpack";

    /// <summary>The directory a checkpoint of <paramref name="step"/> goes to under <paramref name="root"/>.</summary>
    public static string StepDirectory(string root, int step) => Path.Combine(root, $"step-{step:D8}");

    /// <summary>The file a shard writes (replica 0's shards: one per (stage, rank)).</summary>
    public static string ShardFile(int stage, int rank) => $"shard-{stage}-{rank}.safetensors";

    /// <summary>The newest whole checkpoint under <paramref name="root"/> (a step directory with a manifest), or null.</summary>
    public static string? Latest(string root) =>
        !Directory.Exists(root) ? null
        : Directory.EnumerateDirectories(root, "step-*").Where(d => File.Exists(Path.Combine(d, ManifestFile))).Order(StringComparer.Ordinal).LastOrDefault();

    /// <summary>Writes one shard's tensors and moments into <paramref name="directory"/>; returns the file's name.</summary>
    public static string WriteShard(string directory, ShardState state)
    {
        Directory.CreateDirectory(directory);
        string file = ShardFile(state.Spec.Stage, state.Spec.Rank);
        SafetensorsWriter.WriteTensors([.. state.Parameters.SelectMany((p, i) =>
        {
            string key = $"{p.Name}|{p.Rows}x{p.Columns}|{p.Axis}|{p.Range.Offset}+{p.Range.Count}";
            long[] shape = [p.Parameter.Length];
            return new[] { (key, shape, p.Parameter), (key + "|m", shape, state.M[i]), (key + "|v", shape, state.V[i]) };
        })], Path.Combine(directory, file));
        return file;
    }

    /// <summary>Completes a checkpoint whose shard files are written: the manifest goes last.</summary>
    public static void WriteManifest(string directory, int step, DataCursor cursor, ParallelLayout layout, IEnumerable<string> files)
    {
        var manifest = new CheckpointManifest
        {
            Step = step, DataEpoch = cursor.Epoch, DataPosition = cursor.Position, Layout = layout.ToString(), Files = [.. files],
        };
        string path = Path.Combine(directory, ManifestFile);
        File.WriteAllBytes(path + ".tmp", MessagePackSerializer.Serialize(manifest));
        File.Move(path + ".tmp", path, overwrite: true);
    }

    public static CheckpointManifest ReadManifest(string directory)
    {
        string path = Path.Combine(directory, ManifestFile);
        if (!File.Exists(path)) throw new ModelFormatException(directory, $"no {ManifestFile}: not a (complete) checkpoint");
        CheckpointManifest manifest;
        try { manifest = MessagePackSerializer.Deserialize<CheckpointManifest>(File.ReadAllBytes(path)); }
        catch (MessagePackSerializationException e) { throw new ModelFormatException(path, "unreadable manifest: " + e.Message, inner: e); }
        if (manifest.Format != CheckpointManifest.CurrentFormat)
            throw new ModelFormatException(path, $"checkpoint format {manifest.Format}; this build reads {CheckpointManifest.CurrentFormat}");
        return manifest;
    }

    /// <summary>
    /// This shard's state from a checkpoint saved at any layout: each of its tensors (and moments) is assembled from
    /// the pieces that hold it, then cut to this shard's slice. Returns the manifest (step, data cursor).
    /// </summary>
    public static CheckpointManifest Restore(string directory, ShardTrainer trainer)
    {
        var manifest = ReadManifest(directory);
        using var pieces = new Pieces(directory, manifest);
        var slices = trainer.Model.Parameters().ToArray();
        float[][] Mine(string suffix) => [.. slices.Select(slice =>
        {
            var mine = new float[slice.Length];
            WeightAssembly.CopySlice(mine, pieces.Whole(slice.Name, slice.Rows, slice.Columns, slice.Axis, suffix), slice, toWhole: false);
            return mine;
        })];
        trainer.RestoreState(Mine(""), Mine("|m"), Mine("|v"), manifest.Step);
        return manifest;
    }

    /// <summary>Every tensor of a checkpoint, whole (to publish the trained model at any layout).</summary>
    public static Dictionary<string, float[]> ReadTensors(string directory)
    {
        using var pieces = new Pieces(directory, ReadManifest(directory));
        return pieces.Names.ToDictionary(name => name, name => pieces.Whole(name, null, null, null, ""));
    }

    /// <summary>The pieces of a checkpoint's files, by logical tensor.</summary>
    private sealed class Pieces : IDisposable
    {
        private sealed record Piece(MappedFile File, Dictionary<string, SafetensorsTensor> Index, SafetensorsTensor Tensor, int Rows, int Columns, int Axis, Slice Range);

        private readonly string _directory;
        private readonly List<MappedFile> _files = [];
        private readonly Dictionary<string, List<Piece>> _byName = [];

        public Pieces(string directory, CheckpointManifest manifest)
        {
            _directory = directory;
            try
            {
                foreach (string name in manifest.Files)
                {
                    string path = Path.Combine(directory, Path.GetFileName(name));   // files inside the checkpoint only
                    if (!File.Exists(path)) throw new ModelFormatException(path, "missing: the checkpoint is incomplete");
                    var file = MappedFile.Open(path);
                    _files.Add(file);
                    var index = SafetensorsFile.Parse(file);
                    foreach (var (key, tensor) in index)
                    {
                        string[] parts = key.Split('|');
                        if (parts.Length != 4) continue;   // the moments ride with their tensor
                        _byName.TryAdd(parts[0], []);
                        _byName[parts[0]].Add(Parse(path, key, parts, file, index, tensor));
                    }
                }
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public IEnumerable<string> Names => _byName.Keys;

        private static Piece Parse(string path, string key, string[] parts, MappedFile file, Dictionary<string, SafetensorsTensor> index, SafetensorsTensor tensor)
        {
            static bool Int(string s, out int v) => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out v);
            string[] shape = parts[1].Split('x'), range = parts[3].Split('+');
            if (shape.Length != 2 || !Int(shape[0], out int rows) || !Int(shape[1], out int columns) || !Int(parts[2], out int axis) || axis > 1
                || range.Length != 2 || !Int(range[0], out int offset) || !Int(range[1], out int count)
                || offset + count > (axis == 0 ? rows : columns) || tensor.ElementCount != (long)count * (axis == 0 ? columns : rows))
                throw new ModelFormatException(path, "not a checkpoint piece (name|RxC|axis|offset+count, sized to match)", key);
            return new Piece(file, index, tensor, rows, columns, axis, new Slice(offset, count));
        }

        /// <summary>Tensor <paramref name="name"/> (or its moment, by suffix) assembled whole from its pieces, checked against the expected shape and axis.</summary>
        public float[] Whole(string name, int? rows, int? columns, int? axis, string suffix)
        {
            if (!_byName.TryGetValue(name, out var pieces))
                throw new ModelFormatException(_directory, "the checkpoint does not hold this tensor (another architecture or layer count?)", name);
            var first = pieces[0];
            if ((rows ?? first.Rows, columns ?? first.Columns, axis ?? first.Axis) != (first.Rows, first.Columns, first.Axis)
                || pieces.Any(p => (p.Rows, p.Columns, p.Axis) != (first.Rows, first.Columns, first.Axis)))
                throw new ModelFormatException(_directory, $"holds it as {first.Rows}×{first.Columns} cut on axis {first.Axis}, not as this model's {rows}×{columns} on axis {axis}", name);
            var whole = new float[first.Rows * first.Columns];
            var covered = new bool[first.Axis == 0 ? first.Rows : first.Columns];
            foreach (var piece in pieces)
            {
                var tensor = suffix.Length == 0 ? piece.Tensor : Moment(piece, suffix);
                float[] data = piece.File.ReadTensor(tensor.Offset, tensor.Type, tensor.ElementCount, tensor.Name);
                WeightAssembly.CopySlice(data, whole, new ParameterSlice(name, data, data, piece.Rows, piece.Columns, piece.Axis, piece.Range, false), toWhole: true);
                Array.Fill(covered, true, piece.Range.Offset, piece.Range.Count);
            }
            if (Array.IndexOf(covered, false) is int gap and >= 0)
                throw new ModelFormatException(_directory, $"no piece holds index {gap} along axis {first.Axis}", name);
            return whole;
        }

        private SafetensorsTensor Moment(Piece piece, string suffix) =>
            piece.Index.TryGetValue(piece.Tensor.Name + suffix, out var moment) && moment.ElementCount == piece.Tensor.ElementCount
                ? moment : throw new ModelFormatException(_directory, $"missing or mis-sized {suffix}", piece.Tensor.Name);

        public void Dispose()
        {
            foreach (var file in _files) file.Dispose();
        }
    }
}
