// Where models named through the API may be read from. A job spec's model, tokenizer and adapter paths load only when,
// after resolving "..", "." and every symbolic link on the way, they lie inside one of the model roots: the folders
// in Cluster:ModelRoots (env Cluster__ModelRoots, comma-separated), the training root's jobs folder (published models)
// and the folder of the model the silo serves from its configuration. Anything else is refused with a message that
// names the rule, never whether the file exists or what it holds.
using Cluster.Contracts;
using Microsoft.Extensions.Options;

namespace Cluster.Grains;

public sealed class ModelRootOptions
{
    /// <summary>Folders API-named models may be read from (besides the training root's jobs folder, always one).</summary>
    public List<string> Roots { get; } = [];
}

public sealed class ModelRoots(IOptions<ModelRootOptions> options, IOptions<TrainingOptions> training)
{
    private const int MaxLinkHops = 40;   // as Linux's ELOOP

    private string[]? _resolvedRoots;

    /// <summary>The real paths of the roots (a root that does not exist yet still counts, by its full path).</summary>
    public IReadOnlyList<string> Roots => _resolvedRoots ??=
        [.. options.Value.Roots.Append(Path.Combine(training.Value.Root, "jobs")).Select(RealPath).Distinct()];

    /// <summary>The source with every path replaced by its real path; <see cref="ModelAccessDeniedException"/> for a path outside the roots.</summary>
    public ModelSource Require(ModelSource source) => source with
    {
        Path = source.Path is { } model ? Require(model, "model_path") : null,
        TokenizerPath = source.TokenizerPath is { } tokenizer ? Require(tokenizer, "tokenizer_path") : null,
        AdapterPath = source.AdapterPath is { } adapter ? Require(adapter, "adapter_path") : null,
    };

    public string Require(string path, string param)
    {
        string real;
        try { real = RealPath(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException or PathTooLongException)
        {
            real = "";   // unreadable or malformed: refused below like any path outside the roots
        }
        if (real.Length > 0 && Roots.Any(root => IsInside(real, root))) return real;
        throw new ModelAccessDeniedException(
            $"'{param}' must name a file inside the cluster's model roots (Cluster__ModelRoots, the published models folder, the served model's folder); this one is not.");
    }

    private static bool IsInside(string path, string root) =>
        path.Equals(root, StringComparison.Ordinal) || path.StartsWith(root.EndsWith(Path.DirectorySeparatorChar) ? root : root + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    /// <summary>
    /// The path with "." and ".." folded and every symbolic link followed, component by component in the order the
    /// operating system would (realpath(3)), so ".." after a link climbs from the link's target; components that do not
    /// exist are kept as they are.
    /// </summary>
    public static string RealPath(string path)
    {
        if (path.Length == 0 || path.Contains('\0')) throw new ArgumentException("empty path or NUL in path", nameof(path));
        string absolute = Path.IsPathRooted(path) ? path : Path.Combine(Directory.GetCurrentDirectory(), path);
        string current = Path.GetPathRoot(absolute)!;
        var pending = new Stack<string>();
        void PushParts(string p)
        {
            foreach (string part in p.Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries).Reverse()) pending.Push(part);
        }
        PushParts(absolute[current.Length..]);
        int hops = 0;
        while (pending.TryPop(out string? part))
        {
            if (part == ".") continue;
            if (part == "..")
            {
                current = Path.GetDirectoryName(current) ?? current;
                continue;
            }
            string next = Path.Combine(current, part);
            if (new FileInfo(next).LinkTarget is not { } target)
            {
                current = next;
                continue;
            }
            if (++hops > MaxLinkHops) throw new IOException($"too many symbolic links in '{path}'");
            if (Path.IsPathRooted(target)) current = Path.GetPathRoot(target)!;   // else relative to the link's folder
            PushParts(Path.IsPathRooted(target) ? target[current.Length..] : target);
        }
        return current;
    }
}
