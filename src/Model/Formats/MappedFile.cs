// A read-only memory map of a model file, so files past 2 GiB load without one giant byte[] and the
// OS pages weights in as they are converted. A tensor's pages are given back as soon as it is copied out (on Linux),
// so the map never holds a second copy of the model in the process's memory. Every access is bounds-checked against
// the file length and fails with a ModelFormatException naming what was being read.
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace Cluster.Model.Formats;

public sealed unsafe partial class MappedFile : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;

    private MappedFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, long length)
    {
        Path = path;
        _map = map;
        _view = view;
        Length = length;
        byte* pointer = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        _base = pointer + _view.PointerOffset;
    }

    public string Path { get; }
    public long Length { get; }

    public static MappedFile Open(string path)
    {
        FileStream stream;
        try { stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ModelFormatException(path, "cannot open: " + e.Message, inner: e);
        }
        long length = stream.Length;
        if (length == 0)
        {
            stream.Dispose();
            throw new ModelFormatException(path, "file is empty");
        }
        try
        {
            var map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            return new MappedFile(path, map, map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read), length);
        }
        catch (IOException e)
        {
            stream.Dispose();
            throw new ModelFormatException(path, "cannot map: " + e.Message, inner: e);
        }
    }

    /// <summary>The bytes [offset, offset+count), which must lie inside the file and fit one span (under 2 GiB).</summary>
    public ReadOnlySpan<byte> Span(long offset, long count, string what, string? tensor = null)
    {
        if (offset < 0 || count < 0 || offset > Length || count > Length - offset)
            throw new ModelFormatException(Path, $"{what}: bytes [{offset}, {offset}+{count}) lie outside the file ({Length} bytes)", tensor);
        if (count > int.MaxValue)
            throw new ModelFormatException(Path, $"{what}: {count} bytes exceed one span", tensor);
        return new ReadOnlySpan<byte>(_base + offset, (int)count);
    }

    /// <summary>The file's first bytes (all of it, up to 2 GiB) for parsing headers with a <see cref="SpanReader"/>.</summary>
    public ReadOnlySpan<byte> Head => Span(0, Math.Min(Length, int.MaxValue), "header");

    /// <summary>Copies <paramref name="count"/> little-endian float32 values at <paramref name="offset"/>, checking they lie inside the file first.</summary>
    public float[] ReadFloats(long offset, long count, string tensor)
    {
        if (count <= 0 || count > Array.MaxLength)
            throw new ModelFormatException(Path, $"element count {count} out of range", tensor);
        if (offset < 0 || offset > Length || count * 4 > Length - offset)
            throw new ModelFormatException(Path, $"data [{offset}, {offset}+{count * 4}) runs past the end of the file ({Length} bytes)", tensor);
        var result = new float[count];
        fixed (float* destination = result) Buffer.MemoryCopy(_base + offset, destination, count * 4, count * 4);
        DropPages(offset, count * 4);
        return result;
    }

    /// <summary>Decodes <paramref name="count"/> elements of <paramref name="type"/> at <paramref name="offset"/> to float32, checking they lie inside the file first.</summary>
    public float[] ReadTensor(long offset, TensorType type, long count, string tensor)
    {
        if (type == TensorType.F32) return ReadFloats(offset, count, tensor);
        if (count <= 0 || count > Array.MaxLength)
            throw new ModelFormatException(Path, $"element count {count} out of range", tensor);
        var bytes = Span(offset, TensorCodec.ByteSize(type, count, Path, tensor), "tensor data", tensor);
        var result = new float[count];
        TensorCodec.Decode(bytes, type, result);
        DropPages(offset, bytes.Length);
        return result;
    }

    /// <summary>
    /// Gives back the mapped pages of bytes [offset, offset + count), copied out already. Best effort: a page shared with
    /// a neighbour is read from the file again if the neighbour is read later, and elsewhere than Linux nothing is done
    /// (the pages go when the file is closed).
    /// </summary>
    private void DropPages(long offset, long count)
    {
        if (!OperatingSystem.IsLinux() || count <= 0) return;
        long page = Environment.SystemPageSize;
        long start = (long)(_base + offset) & ~(page - 1), end = (long)(_base + offset + count);
        _ = Advise((nint)start, (nuint)(end - start), DontNeed);
    }

    private const int DontNeed = 4;   // MADV_DONTNEED

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Advise(nint address, nuint length, int advice);

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
