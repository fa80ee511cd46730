// `--name value` command-line options with typed, range-checked reads and a clear error for anything unknown.
using System.Globalization;

namespace Cluster.Cli;

public sealed class Arguments
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _read = [];

    public Arguments(string[] args)
    {
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || args[i].Length == 2)
                throw new ArgumentException($"expected an option like --name, got '{args[i]}'");
            if (i + 1 >= args.Length) throw new ArgumentException($"option {args[i]} needs a value");
            if (!_values.TryAdd(args[i][2..], args[++i])) throw new ArgumentException($"option {args[i - 1]} given twice");
        }
    }

    public string? Optional(string name)
    {
        _read.Add(name);
        return _values.GetValueOrDefault(name);
    }

    public string Required(string name) => Optional(name) ?? throw new ArgumentException($"--{name} is required");

    public int Int(string name, int fallback, int min = int.MinValue)
    {
        if (Optional(name) is not { } text) return fallback;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) || value < min)
            throw new ArgumentException($"--{name} must be an integer ≥ {min}, got '{text}'");
        return value;
    }

    public float Float(string name, float fallback)
    {
        if (Optional(name) is not { } text) return fallback;
        if (!float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out float value) || !float.IsFinite(value))
            throw new ArgumentException($"--{name} must be a number, got '{text}'");
        return value;
    }

    public bool Bool(string name, bool fallback) => Optional(name) switch
    {
        null => fallback,
        "true" => true,
        "false" => false,
        var text => throw new ArgumentException($"--{name} must be true or false, got '{text}'"),
    };

    /// <summary>A device name (Cluster.Compute.DeviceSpec: cpu, cuda[:N], opencl[:N], ilgpu-cpu).</summary>
    public Cluster.Compute.DeviceSpec Device(string name, Cluster.Compute.DeviceSpec fallback)
    {
        if (Optional(name) is not { } text) return fallback;
        try { return Cluster.Compute.DeviceSpec.Parse(text); }
        catch (FormatException e) { throw new ArgumentException($"--{name}: {e.Message}"); }
    }

    /// <summary>Throws for options no reader asked for (typos would otherwise be silently ignored).</summary>
    public void RejectUnknown()
    {
        var unknown = _values.Keys.Where(k => !_read.Contains(k)).ToList();
        if (unknown.Count > 0) throw new ArgumentException($"unknown option(s): {string.Join(", ", unknown.Select(k => "--" + k))}");
    }
}
