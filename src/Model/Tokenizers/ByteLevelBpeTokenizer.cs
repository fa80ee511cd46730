// GPT-2 style byte-level BPE (GGUF "gpt2" vocabularies, byte-level tokenizer.json files): an adapter over
// Microsoft.ML.Tokenizers' BpeTokenizer with ByteLevel on and the GPT-2 pre-tokenizer regex. Encoding is the
// library's, except that pre-tokens longer than MaxPreTokenChars are cut into pieces (see CappedRegexPreTokenizer:
// the library's merging is quadratic in a pre-token's length); decoding maps each piece's characters back through
// GPT-2's bytes↔unicode table ourselves, so a token yields exact bytes even when it ends inside a UTF-8 sequence.
// Special tokens typed into the text are not recognized (they encode as ordinary text).
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Cluster.Model.Tokenizers;

public sealed class ByteLevelBpeTokenizer : ITokenizer
{
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    /// <summary>The longest pre-token encoded whole; longer ones are cut (a word never is: only blobs and long runs).</summary>
    public const int MaxPreTokenChars = 256;
    /// <summary>GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest for U+0100 onwards.</summary>
    internal static readonly char[] ByteToUnicode = BuildByteToUnicode();
    private static readonly Dictionary<char, byte> UnicodeToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToUnicode[b], b => (byte)b);

    private readonly BpeTokenizer _bpe;
    private readonly string[] _pieces;   // id → piece in GPT-2's unicode alphabet

    /// <param name="vocabulary">piece → id, ids dense from 0.</param>
    /// <param name="merges">"left right" pairs, highest priority first.</param>
    public ByteLevelBpeTokenizer(IReadOnlyDictionary<string, int> vocabulary, IEnumerable<string> merges, int bosId, int eosId, string source = "tokenizer")
    {
        if (vocabulary.Count == 0) throw new ModelFormatException(source, "empty vocabulary");
        _pieces = new string[vocabulary.Count];
        foreach (var (piece, id) in vocabulary)
        {
            if ((uint)id >= (uint)_pieces.Length || _pieces[id] is not null)
                throw new ModelFormatException(source, $"vocabulary ids are not dense: id {id} for '{piece}'");
            _pieces[id] = piece;
        }
        if ((uint)bosId >= (uint)_pieces.Length || (uint)eosId >= (uint)_pieces.Length)
            throw new ModelFormatException(source, $"BOS {bosId} / EOS {eosId} outside the vocabulary of {_pieces.Length}");
        BosId = bosId;
        EosId = eosId;
        try
        {
            _bpe = BpeTokenizer.Create(new BpeOptions(vocabulary)
            {
                Merges = merges.ToList(),
                ByteLevel = true,
                PreTokenizer = new CappedRegexPreTokenizer(new Regex(Gpt2Pattern, RegexOptions.Compiled), MaxPreTokenChars),
            });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new ModelFormatException(source, "invalid byte-level BPE vocabulary: " + e.Message, inner: e);
        }
    }

    public int VocabSize => _pieces.Length;
    public int BosId { get; }
    public int EosId { get; }

    public int[] Encode(string text, bool addBos)
    {
        var ids = _bpe.EncodeToIds(text);
        return addBos ? [BosId, .. ids] : [.. ids];
    }

    public byte[] DecodeBytes(int previous, int token)
    {
        if ((uint)token >= (uint)_pieces.Length) throw new ArgumentOutOfRangeException(nameof(token), $"token {token} outside vocabulary of {_pieces.Length}");
        string piece = _pieces[token];
        var bytes = new List<byte>(piece.Length);
        foreach (char c in piece)
        {
            if (UnicodeToByte.TryGetValue(c, out byte b)) bytes.Add(b);
            else bytes.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
        }
        return [.. bytes];
    }

    /// <summary>
    /// The regex's pre-tokens, each cut into pieces of at most <paramref name="maxChars"/> chars (never inside a
    /// surrogate pair). Why: Microsoft.ML.Tokenizers 2.0 merges one pre-token in time quadratic in its length (it
    /// compacts the symbol list with one shifting removal per merged symbol): with no space in the text, 64 K chars
    /// took ~0.5 s, 256 K ~10 s, 1 M ~45 s. The cap bounds that to O(maxChars) per character. The tradeoff: a pre-token longer than
    /// the cap is encoded piece by piece, with no merge across a cut, so its tokens can differ from what the
    /// model's own tokenizer gives (they still decode to the same text); shorter pre-tokens are encoded exactly.
    /// </summary>
    private sealed class CappedRegexPreTokenizer(Regex regex, int maxChars) : PreTokenizer
    {
        public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) => Split(text.AsSpan());

        public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => Split(text);

        private List<(int Offset, int Length)> Split(ReadOnlySpan<char> text)
        {
            var pieces = new List<(int Offset, int Length)>();
            foreach (var match in regex.EnumerateMatches(text))
                for (int offset = match.Index, end = match.Index + match.Length; offset < end;)
                {
                    int length = Math.Min(maxChars, end - offset);
                    if (offset + length < end && char.IsHighSurrogate(text[offset + length - 1])) length--;
                    pieces.Add((offset, length));
                    offset += length;
                }
            return pieces;
        }
    }

    private static char[] BuildByteToUnicode()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }
}
