// The SentencePiece-style BPE of llama2.c (run.c encode/decode), shared by llama2.c tokenizer.bin files
// and GGUF "llama" vocabularies: pieces ranked by score, greedy highest-score merges, a dummy space
// prefix, and byte fallback through the "<0xXX>" pieces.
using System.Text;

namespace Cluster.Model.Tokenizers;

public sealed class SentencePieceBpeTokenizer : ITokenizer
{
    private readonly byte[][] _pieces;
    private readonly float[] _scores;
    private readonly Dictionary<string, int> _ids;       // piece bytes as Latin-1 chars → id (first wins)
    private readonly int[] _byteTokens = new int[256];   // byte b → id of "<0xXX>", or -1

    public SentencePieceBpeTokenizer(byte[][] pieces, float[] scores, int bosId, int eosId, string source = "tokenizer")
    {
        if (pieces.Length == 0 || pieces.Length != scores.Length)
            throw new ModelFormatException(source, $"vocabulary has {pieces.Length} pieces and {scores.Length} scores");
        if (bosId < 0 || bosId >= pieces.Length || eosId < 0 || eosId >= pieces.Length)
            throw new ModelFormatException(source, $"BOS {bosId} / EOS {eosId} outside the vocabulary of {pieces.Length}");
        _pieces = pieces;
        _scores = scores;
        BosId = bosId;
        EosId = eosId;
        _ids = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        Array.Fill(_byteTokens, -1);
        for (int i = 0; i < pieces.Length; i++)
        {
            _ids.TryAdd(Latin1(pieces[i]), i);
            if (TryParseByteToken(pieces[i], out byte b) && _byteTokens[b] < 0) _byteTokens[b] = i;
        }
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
        var tokens = new List<int>(text.Length + 2);
        if (addBos) tokens.Add(BosId);
        if (text.Length == 0) return tokens.ToArray();
        if (_ids.TryGetValue(" ", out int space)) tokens.Add(space);   // the dummy prefix

        // One token per UTF-8 code point where the vocabulary has it, else its bytes.
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        for (int i = 0; i < utf8.Length;)
        {
            int len = 1;
            while (i + len < utf8.Length && (utf8[i + len] & 0xC0) == 0x80 && len < 4) len++;
            if (_ids.TryGetValue(Latin1(utf8.AsSpan(i, len)), out int id)) tokens.Add(id);
            else
                for (int j = 0; j < len; j++)
                {
                    int byteToken = _byteTokens[utf8[i + j]];
                    tokens.Add(byteToken >= 0 ? byteToken : 0);   // no byte piece: <unk>, as run.c's b+3 would be wrong here
                }
            i += len;
        }

        // Merge the adjacent pair with the best score until none is in the vocabulary.
        int first = addBos ? 1 : 0;
        while (true)
        {
            float bestScore = float.NegativeInfinity;
            int bestId = -1, bestIndex = -1;
            for (int i = first; i < tokens.Count - 1; i++)
            {
                string merged = Latin1(_pieces[tokens[i]]) + Latin1(_pieces[tokens[i + 1]]);
                if (_ids.TryGetValue(merged, out int id) && _scores[id] > bestScore)
                {
                    bestScore = _scores[id];
                    bestId = id;
                    bestIndex = i;
                }
            }
            if (bestIndex < 0) break;
            tokens[bestIndex] = bestId;
            tokens.RemoveAt(bestIndex + 1);
        }
        return tokens.ToArray();
    }

    public byte[] DecodeBytes(int previous, int token)
    {
        if ((uint)token >= (uint)_pieces.Length) throw new ArgumentOutOfRangeException(nameof(token), $"token {token} outside vocabulary of {_pieces.Length}");
        byte[] piece = _pieces[token];
        if (TryParseByteToken(piece, out byte b)) return [b];
        if (previous == BosId && piece.Length > 0 && piece[0] == (byte)' ') return piece[1..];
        return piece;
    }

    private static bool TryParseByteToken(ReadOnlySpan<byte> piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && piece[5] == '>'
            && byte.TryParse(Encoding.ASCII.GetString(piece.Slice(3, 2)), System.Globalization.NumberStyles.HexNumber, null, out value);
    }

    private static string Latin1(ReadOnlySpan<byte> bytes) => Encoding.Latin1.GetString(bytes);
}
