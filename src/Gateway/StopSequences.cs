// OpenAI's `stop`: generation ends just before the first of up to 4 stop strings, which is never sent, also when it
// is split across tokens or stream chunks. Text that could still be the start of a stop string is held back until it
// either completes one or cannot; the held text is never longer than the longest stop string, so the work per token
// is bounded by the stop strings' length.
using System.Text;

namespace Cluster.Gateway;

public sealed class StopSequences(IReadOnlyList<string> stops)
{
    private readonly StringBuilder _held = new();

    /// <summary>A stop string was found: the text before it has been returned, nothing more is.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Takes the next generated <paramref name="text"/>; returns what can be sent now (possibly empty).</summary>
    public string Add(string text)
    {
        if (Stopped) return "";
        if (stops.Count == 0) return text;
        _held.Append(text);
        string held = _held.ToString();
        int cut = -1;
        foreach (string stop in stops)
            if (held.IndexOf(stop, StringComparison.Ordinal) is >= 0 and var at && (cut < 0 || at < cut)) cut = at;
        if (cut >= 0)
        {
            Stopped = true;
            _held.Clear();
            return held[..cut];
        }
        int keep = 0;   // the longest tail of the held text that begins some stop string
        foreach (string stop in stops)
            for (int n = Math.Min(stop.Length - 1, held.Length); n > keep; n--)
                if (held.AsSpan(held.Length - n).SequenceEqual(stop.AsSpan(0, n)))
                {
                    keep = n;
                    break;
                }
        _held.Remove(0, held.Length - keep);
        return held[..(held.Length - keep)];
    }

    /// <summary>The generation ended without a stop string: the text still held back.</summary>
    public string Flush()
    {
        string rest = _held.ToString();
        _held.Clear();
        return rest;
    }
}
