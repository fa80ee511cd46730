// Crash-safe, private files: a file is written under a temporary name (mode 0600 on Unix), flushed to the disk,
// renamed over its final name, and the rename flushed with its directory, so after a crash the name holds the old
// whole file or the new whole file, never a torn one. Directories are created 0700 on Unix, and flushed into their
// parents. Checkpoints, job records and the running-job markers are written this way.
using System.Runtime.InteropServices;

namespace Cluster.Training;

public static partial class DurableFile
{
    public const UnixFileMode PrivateFileMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    public const UnixFileMode PrivateDirectoryMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    /// <summary>The temporary names files are written under (a crash may leave one behind; nothing reads them).</summary>
    public const string TemporarySuffix = ".tmp-";

    /// <summary>Creates <paramref name="path"/> and its missing parents, 0700 on Unix (existing ones keep their mode).</summary>
    public static void CreatePrivateDirectory(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(path);   // Windows: the user profile's ACLs apply
            return;
        }
        // Directory.CreateDirectory gives the mode to the last directory only: the missing ones are created one by one,
        // each flushed into its parent.
        var missing = new Stack<string>();
        for (string? directory = Path.GetFullPath(path); directory is not null && !Directory.Exists(directory); directory = Path.GetDirectoryName(directory))
            missing.Push(directory);
        while (missing.TryPop(out string? directory))
        {
            Directory.CreateDirectory(directory, PrivateDirectoryMode);
            FlushDirectory(Path.GetDirectoryName(directory)!);
        }
    }

    /// <summary>Writes <paramref name="path"/> whole through <paramref name="write"/>: temporary name, flushed, renamed, directory flushed.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        string temporary = path + TemporarySuffix + Guid.NewGuid().ToString("N")[..12];
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None, BufferSize = 1 << 20 };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = PrivateFileMode;
        try
        {
            using (var stream = new FileStream(temporary, options))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        catch
        {
            if (File.Exists(temporary)) File.Delete(temporary);
            throw;
        }
        FlushDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, stream => stream.Write(bytes));

    /// <summary>Renames directory <paramref name="source"/> to <paramref name="destination"/> (which must not exist) and flushes the rename.</summary>
    public static void MoveDirectory(string source, string destination)
    {
        Directory.Move(source, destination);
        FlushDirectory(Path.GetDirectoryName(Path.GetFullPath(destination))!);
    }

    /// <summary>
    /// Makes the names in <paramref name="directory"/> (files created, renamed or removed) durable: fsync on the
    /// directory. Linux only: .NET opens no handle on a directory, so through libc; elsewhere this does nothing
    /// (Windows journals its metadata; macOS's fsync does not reach the disk anyway).
    /// </summary>
    public static void FlushDirectory(string directory)
    {
        if (!OperatingSystem.IsLinux()) return;
        int descriptor = Open(directory, ReadOnly);   // O_DIRECTORY is left out: its value differs between architectures
        if (descriptor < 0) throw new IOException($"cannot open directory {directory} to flush it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            // EINVAL: the file system cannot sync a directory (some network and FUSE ones); nothing more to do there.
            if (Fsync(descriptor) != 0 && Marshal.GetLastPInvokeError() is int error && error != InvalidArgument)
                throw new IOException($"cannot flush directory {directory} (errno {error})");
        }
        finally
        {
            Close(descriptor);
        }
    }

    private const int ReadOnly = 0, InvalidArgument = 22;

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int descriptor);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int descriptor);
}
