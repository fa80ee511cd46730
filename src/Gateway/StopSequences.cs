// OpenAI's `stop`: generation ends just before the first of up to 4 stop strings, which is never sent, also when it
// is split across tokens or stream chunks. Each stop string keeps how many of its first characters the text now ends
// with (Knuth-Morris-Pratt: its failure function moves that count for each new character in amortized constant
// time), so the work per character is bounded by the number of stop strings whatever their length; text that could
// still be the start of a stop string (the longest such count) is held back until it completes one or cannot.
using System.Text;

namespace Cluster.Gateway;

public sealed class StopSequences
{
    private readonly string[] _stops;
    private readonly int[][] _fallback;   // per stop string: KMP's failure function
    private readonly int[] _matched;      // per stop string: how many of its first characters the text ends with
    private readonly StringBuilder _held = new();   // the text not sent yet: as long as the longest match

    public StopSequences(IReadOnlyList<string> stops)
    {
        _stops = [.. stops];
        if (_stops.Any(s => s.Length == 0)) throw new ArgumentException("a stop string is empty", nameof(stops));
        _fallback = [.. _stops.Select(Failure)];
        _matched = new int[_stops.Length];
    }

    /// <summary>A stop string was found: the text before it has been returned, nothing more is.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Takes the next generated <paramref name="text"/>; returns what can be sent now (possibly empty).</summary>
    public string Add(string text)
    {
        if (Stopped) return "";
        if (_stops.Length == 0) return text;
        var sendable = new StringBuilder();
        foreach (char c in text)
        {
            _held.Append(c);
            int completed = 0;   // the longest stop string that ends at this character: it starts first
            for (int s = 0; s < _stops.Length; s++)
            {
                string stop = _stops[s];
                int m = _matched[s];
                while (m > 0 && stop[m] != c) m = _fallback[s][m - 1];
                if (stop[m] == c) m++;
                if (m == stop.Length)
                {
                    completed = Math.Max(completed, m);
                    m = _fallback[s][m - 1];
                }
                _matched[s] = m;
            }
            if (completed > 0)
            {
                Stopped = true;
                sendable.Append(_held, 0, _held.Length - completed);
                _held.Clear();
                return sendable.ToString();
            }
            int keep = _matched.Max();
            if (_held.Length > keep)
            {
                sendable.Append(_held, 0, _held.Length - keep);
                _held.Remove(0, _held.Length - keep);
            }
        }
        return sendable.ToString();
    }

    /// <summary>The generation ended without a stop string: the text still held back.</summary>
    public string Flush()
    {
        string rest = _held.ToString();
        _held.Clear();
        return rest;
    }

    /// <summary>KMP's failure function: for each prefix, the length of its longest proper prefix that is also its suffix.</summary>
    private static int[] Failure(string stop)
    {
        var failure = new int[stop.Length];
        for (int i = 1, k = 0; i < stop.Length; i++)
        {
            while (k > 0 && stop[i] != stop[k]) k = failure[k - 1];
            if (stop[i] == stop[k]) k++;
            failure[i] = k;
        }
        return failure;
    }
}
