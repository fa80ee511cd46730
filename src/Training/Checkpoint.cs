// Sharded training checkpoints keyed by logical tensor, so a run saved at one layout resumes at another. A checkpoint
// is a directory per step: one safetensors file per shard that wrote (replica 0's: every replica holds the same
// state), each tensor slice stored under "<name>|<rows>x<columns>|<axis>|<offset>+<count>" with AdamW's moments beside
// it ("…|m", "…|v"), and manifest.msgpack (step, data cursor, the layout it was saved at, each shard file's length and
// SHA-256). Every file is written durably (DurableFile) into a staging directory of the attempt that saves it, and the
// whole directory is renamed to step-N last: a step directory is complete, and never written again (a redo after a
// resume writes its own staging directory, and a step directory that exists refuses the rename). A resume takes the
// newest checkpoint that verifies, removing damaged ones; pruning keeps the newest few. A shard restores by
// assembling each of its tensors from the pieces that hold it, whatever their slicing, then cutting its own slice.
using System.Globalization;
using System.Security.Cryptography;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Parallel;
using MessagePack;

namespace Cluster.Training;

[MessagePackObject]
public sealed class CheckpointManifest
{
    public const int CurrentFormat = 3;

    [Key(0)] public int Format { get; set; } = CurrentFormat;
    [Key(1)] public int Step { get; set; }
    [Key(2)] public int DataEpoch { get; set; }
    [Key(3)] public int DataPosition { get; set; }
    [Key(4)] public string Layout { get; set; } = "";
    [Key(5)] public CheckpointFile[] Files { get; set; } = [];

    [IgnoreMember] public DataCursor Cursor => new(DataEpoch, DataPosition);
}

/// <summary>A shard file of a checkpoint as it was written: what verification checks it against.</summary>
[MessagePackObject]
public sealed class CheckpointFile
{
    [Key(0)] public string Name { get; set; } = "";
    [Key(1)] public long Length { get; set; }
    /// <summary>SHA-256 of the file's bytes, lower-case hex.</summary>
    [Key(2)] public string Sha256 { get; set; } = "";
}

/// <summary>A copy of one shard's training state, taken between steps (ShardTrainer.CaptureState), to be written while training goes on.</summary>
public sealed record ShardState(ShardSpec Spec, ParameterSlice[] Parameters, float[][] M, float[][] V, int Step);

/// <summary>
/// Where a run resumes: the newest checkpoint that verifies (Directory and Manifest null: from the start), and the
/// checkpoints after it that were removed, with why.
/// </summary>
public sealed record ResumePoint(string? Directory, CheckpointManifest? Manifest, IReadOnlyList<string> Removed);

public static class Checkpoint
{
    public const string ManifestFile = "manifest.msgpack";
    /// <summary>Checkpoints a run keeps unless told otherwise: the newest and two to fall back on.</summary>
    public const int DefaultKeep = 3;

    private const string StepPrefix = "step-", StagingInfix = ".partial-";

    /// <summary>The directory the checkpoint of <paramref name="step"/> is committed as under <paramref name="root"/>.</summary>
    public static string StepDirectory(string root, int step) => Path.Combine(root, $"{StepPrefix}{step:D8}");

    /// <summary>Where <paramref name="attempt"/> (a name no other attempt uses) writes its checkpoint of <paramref name="step"/> before Commit.</summary>
    public static string StagingDirectory(string root, int step, string attempt) => StepDirectory(root, step) + StagingInfix + attempt;

    /// <summary>The file a shard writes (replica 0's shards: one per (stage, rank)).</summary>
    public static string ShardFile(int stage, int rank) => $"shard-{stage}-{rank}.safetensors";

    /// <summary>The newest committed checkpoint under <paramref name="root"/>, unverified, or null.</summary>
    public static string? Latest(string root) => Committed(root).Select(c => c.Directory).FirstOrDefault();

    /// <summary>The committed checkpoints (step directories, not staging ones) under <paramref name="root"/>, newest first.</summary>
    private static IEnumerable<(int Step, string Directory)> Committed(string root) => Steps(root).Where(s => !s.Staging).Select(s => (s.Step, s.Directory));

    private static IEnumerable<(int Step, string Directory, bool Staging)> Steps(string root)
    {
        if (!Directory.Exists(root)) return [];
        return Directory.EnumerateDirectories(root, StepPrefix + "*").Select(directory =>
        {
            string name = Path.GetFileName(directory)[StepPrefix.Length..];
            int infix = name.IndexOf(StagingInfix, StringComparison.Ordinal);
            string digits = infix < 0 ? name : name[..infix];
            return (Step: int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int step) ? step : -1, directory, Staging: infix >= 0);
        }).Where(s => s.Step >= 0).OrderByDescending(s => s.Step).ToList();
    }

    /// <summary>Writes one shard's tensors and moments into <paramref name="directory"/> (which exists: a save abandoned with its staging directory fails); returns the file's name.</summary>
    public static string WriteShard(string directory, ShardState state)
    {
        string file = ShardFile(state.Spec.Stage, state.Spec.Rank);
        DurableFile.Write(Path.Combine(directory, file), stream => SafetensorsWriter.WriteTensors([.. state.Parameters.SelectMany((p, i) =>
        {
            string key = $"{p.Name}|{p.Rows}x{p.Columns}|{p.Axis}|{p.Range.Offset}+{p.Range.Count}";
            long[] shape = [p.Parameter.Length];
            return new[] { (key, shape, p.Parameter), (key + "|m", shape, state.M[i]), (key + "|v", shape, state.V[i]) };
        })], stream));
        return file;
    }

    /// <summary>
    /// Completes the staged checkpoint in <paramref name="directory"/> whose shard files are written: the manifest, with
    /// each file's length and SHA-256, read back from the written files.
    /// </summary>
    public static void WriteManifest(string directory, int step, DataCursor cursor, ParallelLayout layout, IEnumerable<string> files)
    {
        var manifest = new CheckpointManifest
        {
            Step = step, DataEpoch = cursor.Epoch, DataPosition = cursor.Position, Layout = layout.ToString(),
            Files = [.. files.Select(name =>
            {
                using var stream = File.OpenRead(Path.Combine(directory, name));
                return new CheckpointFile { Name = name, Length = stream.Length, Sha256 = Convert.ToHexStringLower(SHA256.HashData(stream)) };
            })],
        };
        DurableFile.WriteAllBytes(Path.Combine(directory, ManifestFile), MessagePackSerializer.Serialize(manifest));
    }

    /// <summary>
    /// Renames the whole staged checkpoint <paramref name="staging"/> to the step directory of <paramref name="step"/>;
    /// returns that directory. A step directory that exists is complete and stays as it is: the staged one is removed and this throws.
    /// </summary>
    public static string Commit(string root, int step, string staging)
    {
        string directory = StepDirectory(root, step);
        if (Directory.Exists(directory))
        {
            Directory.Delete(staging, recursive: true);
            throw new IOException($"{directory} exists: a completed checkpoint is never written again");
        }
        DurableFile.MoveDirectory(staging, directory);
        return directory;
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

    /// <summary>The manifest of a checkpoint whose every file is there with the length and SHA-256 it was written with; else throws, naming the damage.</summary>
    public static CheckpointManifest Verify(string directory)
    {
        var manifest = ReadManifest(directory);
        foreach (var file in manifest.Files)
        {
            string path = WholeFile(directory, file);
            using var stream = File.OpenRead(path);
            if (Convert.ToHexStringLower(SHA256.HashData(stream)) != file.Sha256) throw new ModelFormatException(path, "its SHA-256 is not the one written: damaged");
        }
        return manifest;
    }

    /// <summary>The path of a checkpoint's file, there with the length it was written with; else throws.</summary>
    private static string WholeFile(string directory, CheckpointFile file)
    {
        string path = Path.Combine(directory, Path.GetFileName(file.Name));   // files inside the checkpoint only
        if (!File.Exists(path)) throw new ModelFormatException(path, "missing: the checkpoint is incomplete");
        long length = new FileInfo(path).Length;
        return length == file.Length ? path : throw new ModelFormatException(path, $"{length} bytes where {file.Length} were written: torn");
    }

    /// <summary>
    /// Where a run resumes: the newest checkpoint under <paramref name="root"/> of at most <paramref name="maxStep"/>
    /// that verifies. The checkpoints after it are removed, since the run redoes their steps: damaged ones, and whole
    /// ones past <paramref name="maxStep"/> (the caller never recorded them, so its step log stops earlier).
    /// </summary>
    public static ResumePoint FindResumePoint(string root, int maxStep = int.MaxValue)
    {
        var removed = new List<string>();
        foreach (var (step, directory) in Committed(root))
        {
            if (step <= maxStep)
                try { return new ResumePoint(directory, Verify(directory), removed); }
                catch (ModelFormatException e) { removed.Add($"the checkpoint of step {step} failed verification ({e.Message})"); }
            else removed.Add($"the checkpoint of step {step} was never recorded");
            Directory.Delete(directory, recursive: true);
        }
        return new ResumePoint(null, null, removed);
    }

    /// <summary>
    /// Keeps the newest <paramref name="keep"/> checkpoints under <paramref name="root"/> and removes the older ones,
    /// and the staging directories of attempts that were abandoned (up to the newest checkpoint's step).
    /// </summary>
    public static void Prune(string root, int keep)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(keep, 1);
        var steps = Steps(root).ToList();
        int newest = steps.Where(s => !s.Staging).Select(s => s.Step).DefaultIfEmpty(-1).First();
        foreach (var (_, directory, _) in steps.Where(s => !s.Staging).Skip(keep)) Directory.Delete(directory, recursive: true);
        foreach (var (_, directory, _) in steps.Where(s => s.Staging && s.Step <= newest))
            try { Directory.Delete(directory, recursive: true); }
            catch (IOException) { }   // an abandoned attempt's trainer still writing there: the next prune takes it
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
                foreach (var shard in manifest.Files)
                {
                    string path = WholeFile(directory, shard);
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
