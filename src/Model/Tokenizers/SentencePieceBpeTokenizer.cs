// The SentencePiece-style BPE of llama2.c (run.c encode/decode), shared by llama2.c tokenizer.bin files
// and GGUF "llama" vocabularies: pieces ranked by score, greedy highest-score merges (in O(n log n), with a heap of
// candidate pairs; ReferenceSentencePieceEncoder keeps run.c's O(n²) loop), a dummy space prefix, and byte fallback
// through the "<0xXX>" pieces.
using System.Text;

namespace Cluster.Model.Tokenizers;

public sealed class SentencePieceBpeTokenizer : ITokenizer
{
    private readonly byte[][] _pieces;
    private readonly float[] _scores;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _idLookup;   // piece bytes as Latin-1 chars → id (first wins)
    private readonly Lazy<Dictionary<long, int>> _merges;
    private readonly int[] _byteTokens = new int[256];   // byte b → id of "<0xXX>", or -1

    public SentencePieceBpeTokenizer(byte[][] pieces, float[] scores, int bosId, int eosId, string source = "tokenizer")
    {
        if (pieces.Length == 0 || pieces.Length != scores.Length)
            throw new ModelFormatException(source, $"vocabulary has {pieces.Length} pieces and {scores.Length} scores");
        if (bosId < 0 || bosId >= pieces.Length || eosId < 0 || eosId >= pieces.Length)
            throw new ModelFormatException(source, $"BOS {bosId} / EOS {eosId} outside the vocabulary of {pieces.Length}");
        if (Array.IndexOf(pieces, null) is int missing and >= 0)
            throw new ModelFormatException(source, $"token {missing} has no piece (an id missing from the vocabulary, or given twice)");
        _pieces = pieces;
        _scores = scores;
        BosId = bosId;
        EosId = eosId;
        var ids = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        Array.Fill(_byteTokens, -1);
        for (int i = 0; i < pieces.Length; i++)
        {
            ids.TryAdd(Latin1(pieces[i]), i);
            if (TryParseByteToken(pieces[i], out byte b) && _byteTokens[b] < 0) _byteTokens[b] = i;
        }
        _idLookup = ids.GetAlternateLookup<ReadOnlySpan<char>>();
        _merges = new Lazy<Dictionary<long, int>>(BuildMerges);
    }

    public int VocabSize => _pieces.Length;
    public int BosId { get; }
    public int EosId { get; }
    public ReadOnlySpan<byte> Piece(int id) => _pieces[id];
    public float Score(int id) => _scores[id];

    /// <summary>Reads a llama2.c tokenizer.bin: int32 max_token_length, then per token float score, int32 length, bytes.</summary>
    public static SentencePieceBpeTokenizer LoadLlama2c(string path, int vocabSize)
    {
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ModelFormatException(path, "cannot read tokenizer: " + e.Message, inner: e); }
        if (vocabSize <= 0) throw new ModelFormatException(path, $"vocab size {vocabSize} is not positive");
        var reader = new SpanReader(data, path);
        int maxLen = reader.Int32("max_token_length");
        if (maxLen <= 0 || maxLen > 1 << 16) throw new ModelFormatException(path, $"max_token_length {maxLen} out of range");
        var pieces = new byte[vocabSize][];
        var scores = new float[vocabSize];
        for (int i = 0; i < vocabSize; i++)
        {
            scores[i] = reader.Single($"score of token {i}");
            int len = reader.Int32($"length of token {i}");
            if (len < 0 || len > maxLen) throw new ModelFormatException(path, $"token {i} has length {len}, max_token_length is {maxLen}");
            pieces[i] = reader.Bytes(len, $"bytes of token {i}").ToArray();
        }
        return new SentencePieceBpeTokenizer(pieces, scores, bosId: 1, eosId: 2, path);
    }

    /// <summary>Writes the llama2.c tokenizer.bin layout that <see cref="LoadLlama2c"/> reads.</summary>
    public void WriteLlama2c(string path)
    {
        using var output = new BinaryWriter(new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None));
        output.Write(_pieces.Max(p => p.Length));
        for (int i = 0; i < _pieces.Length; i++)
        {
            output.Write(_scores[i]);
            output.Write(_pieces[i].Length);
            output.Write(_pieces[i]);
        }
    }

    public int[] Encode(string text, bool addBos)
    {
        var symbols = new List<int>(text.Length + 1);
        if (text.Length > 0)
        {
            if (_idLookup.TryGetValue(" ", out int space)) symbols.Add(space);   // the dummy prefix
            AddCodePoints(text, symbols);
        }
        var merged = MergeBestFirst(symbols.ToArray());
        return addBos ? [BosId, .. merged] : merged;
    }

    /// <summary>One token per UTF-8 code point where the vocabulary has it, else its bytes.</summary>
    private void AddCodePoints(string text, List<int> symbols)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        Span<char> latin1 = stackalloc char[4];
        for (int i = 0; i < utf8.Length;)
        {
            int len = 1;
            while (i + len < utf8.Length && (utf8[i + len] & 0xC0) == 0x80 && len < 4) len++;
            for (int j = 0; j < len; j++) latin1[j] = (char)utf8[i + j];
            if (_idLookup.TryGetValue(latin1[..len], out int id)) symbols.Add(id);
            else
                for (int j = 0; j < len; j++)
                {
                    int byteToken = _byteTokens[utf8[i + j]];
                    symbols.Add(byteToken >= 0 ? byteToken : 0);   // no byte piece: <unk>, as run.c's b+3 would be wrong here
                }
            i += len;
        }
    }

    /// <summary>
    /// Repeatedly merges the adjacent pair whose concatenation is the best-scoring piece (the leftmost such pair on a
    /// tie) until no pair is in the vocabulary: what <see cref="ReferenceSentencePieceEncoder"/> does by rescanning,
    /// in O(n log n). The symbols form a linked list over <paramref name="ids"/> (a merge keeps the left one);
    /// a heap holds every candidate pair, and a candidate whose symbols have changed since is skipped when it surfaces.
    /// </summary>
    /// <param name="ids">symbol → token; overwritten (a merged-away symbol becomes -1).</param>
    private int[] MergeBestFirst(int[] ids)
    {
        int n = ids.Length;
        var previous = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++)
        {
            previous[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }
        var merges = _merges.Value;
        var candidates = new PriorityQueue<MergeCandidate, MergeRank>(n);
        void Offer(int left)
        {
            int right = left >= 0 ? next[left] : -1;
            // Scores of -∞ or NaN never win the reference's strict "> best so far" from -∞: those merges never happen.
            if (right >= 0 && merges.TryGetValue(PairKey(ids[left], ids[right]), out int merged) && _scores[merged] > float.NegativeInfinity)
                candidates.Enqueue(new MergeCandidate(left, ids[left], ids[right], merged), new MergeRank(_scores[merged], left));
        }
        for (int i = 0; i + 1 < n; i++) Offer(i);

        int count = n;
        while (candidates.TryDequeue(out var candidate, out _))
        {
            int left = candidate.Left, right = next[left];
            if (ids[left] != candidate.LeftId || right < 0 || ids[right] != candidate.RightId) continue;   // stale
            ids[left] = candidate.Merged;
            ids[right] = -1;
            next[left] = next[right];
            if (next[right] >= 0) previous[next[right]] = left;
            count--;
            Offer(previous[left]);
            Offer(left);
        }

        var tokens = new int[count];
        for (int i = 0, symbol = n > 0 ? 0 : -1; symbol >= 0; symbol = next[symbol]) tokens[i++] = ids[symbol];
        return tokens;
    }

    /// <param name="Left">the left symbol of the pair; its position orders equal scores, leftmost first.</param>
    private readonly record struct MergeCandidate(int Left, int LeftId, int RightId, int Merged);

    /// <summary>Heap order: higher score first, then the leftmost pair.</summary>
    private readonly record struct MergeRank(float Score, int Position) : IComparable<MergeRank>
    {
        public int CompareTo(MergeRank other)
        {
            int byScore = other.Score.CompareTo(Score);
            return byScore != 0 ? byScore : Position.CompareTo(other.Position);
        }
    }

    private static long PairKey(int left, int right) => (long)left << 32 | (uint)right;

    /// <summary>
    /// (left id, right id) → the id of the piece their concatenation spells (its first id), for every way of splitting
    /// every piece into two pieces. Tokens are always first ids (every id the encoder produces comes from a lookup by
    /// bytes), so this answers exactly what looking the concatenated bytes up would. Built on first use: large
    /// vocabularies take a moment.
    /// </summary>
    private Dictionary<long, int> BuildMerges()
    {
        var merges = new Dictionary<long, int>();
        var latin1 = new char[_pieces.Max(p => p.Length)];
        for (int id = 0; id < _pieces.Length; id++)
        {
            byte[] piece = _pieces[id];
            for (int j = 0; j < piece.Length; j++) latin1[j] = (char)piece[j];
            var whole = latin1.AsSpan(0, piece.Length);
            if (_idLookup[whole] != id) continue;   // a repeated piece: the first id stands for it
            for (int split = 0; split <= piece.Length; split++)   // splits at the ends pair with an empty piece, if any
                if (_idLookup.TryGetValue(whole[..split], out int left) && _idLookup.TryGetValue(whole[split..], out int right))
                    merges.TryAdd(PairKey(left, right), id);
        }
        return merges;
    }

    public byte[] DecodeBytes(int previous, int token)
    {
        if ((uint)token >= (uint)_pieces.Length) throw new ArgumentOutOfRangeException(nameof(token), $"token {token} outside vocabulary of {_pieces.Length}");
        byte[] piece = _pieces[token];
        if (TryParseByteToken(piece, out byte b)) return [b];
        if (previous == BosId && piece.Length > 0 && piece[0] == (byte)' ') return piece[1..];
        return piece;
    }

    internal static bool TryParseByteToken(ReadOnlySpan<byte> piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && piece[5] == '>'
            && byte.TryParse(Encoding.ASCII.GetString(piece.Slice(3, 2)), System.Globalization.NumberStyles.HexNumber, null, out value);
    }

    private static string Latin1(ReadOnlySpan<byte> bytes) => Encoding.Latin1.GetString(bytes);
}
