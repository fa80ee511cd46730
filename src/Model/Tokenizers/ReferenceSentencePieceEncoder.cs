// The plain O(n²) SentencePiece BPE encoder of llama2.c's run.c: after every merge it rescans all adjacent pairs
// for the best-scoring one. SentencePieceBpeTokenizer.Encode gives the same tokens in O(n log n); this one is kept,
// as llm.c keeps a reference beside each fast kernel, for the tests that compare the two and the tokenizer bench.
using System.Text;

namespace Cluster.Model.Tokenizers;

public sealed class ReferenceSentencePieceEncoder
{
    private readonly SentencePieceBpeTokenizer _tokenizer;
    private readonly Dictionary<string, int> _ids = new(StringComparer.Ordinal);   // piece bytes as Latin-1 chars → id (first wins)
    private readonly int[] _byteTokens = new int[256];                             // byte b → id of "<0xXX>", or -1

    public ReferenceSentencePieceEncoder(SentencePieceBpeTokenizer tokenizer)
    {
        _tokenizer = tokenizer;
        Array.Fill(_byteTokens, -1);
        for (int i = 0; i < tokenizer.VocabSize; i++)
        {
            _ids.TryAdd(Latin1(tokenizer.Piece(i)), i);
            if (SentencePieceBpeTokenizer.TryParseByteToken(tokenizer.Piece(i), out byte b) && _byteTokens[b] < 0) _byteTokens[b] = i;
        }
    }

    public int[] Encode(string text, bool addBos)
    {
        var tokens = new List<int>(text.Length + 2);
        if (addBos) tokens.Add(_tokenizer.BosId);
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
                    tokens.Add(byteToken >= 0 ? byteToken : 0);
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
                string merged = Latin1(_tokenizer.Piece(tokens[i])) + Latin1(_tokenizer.Piece(tokens[i + 1]));
                if (_ids.TryGetValue(merged, out int id) && _tokenizer.Score(id) > bestScore)
                {
                    bestScore = _tokenizer.Score(id);
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

    private static string Latin1(ReadOnlySpan<byte> bytes) => Encoding.Latin1.GetString(bytes);
}
