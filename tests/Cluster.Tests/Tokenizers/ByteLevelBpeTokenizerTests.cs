// Byte-level BPE through Microsoft.ML.Tokenizers: a hand-made GPT-2 style vocabulary and merges; the same tokens as
// the library's own regex pre-tokenizer below the pre-token cap; and 1 MiB of English, or 64 KB with no whitespace
// (one huge pre-token, quadratic in the library without the cap), in seconds.
using System.Text;
using System.Text.RegularExpressions;
using Cluster.Model.Tokenizers;
using Microsoft.ML.Tokenizers;

namespace Cluster.Tests.Tokenizers;

public class ByteLevelBpeTokenizerTests
{
    private static ByteLevelBpeTokenizer Create()
    {
        // GPT-2's byte alphabet: printable ASCII stands for itself, space is 'Ġ' (U+0120), newline 'Ċ' (U+010A).
        var vocabulary = new Dictionary<string, int>();
        foreach (char c in "abcdefghijklmnopqrstuvwxyz!") vocabulary[c.ToString()] = vocabulary.Count;
        foreach (var piece in new[] { "Ġ", "Ċ", "he", "ll", "hell", "hello", "Ġw", "Ġwor", "Ġworld", "<|endoftext|>" }) vocabulary[piece] = vocabulary.Count;
        string[] merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor ld", "l d"];
        vocabulary["Ġwo"] = vocabulary.Count;
        vocabulary["ld"] = vocabulary.Count;
        int eos = vocabulary["<|endoftext|>"];
        return new ByteLevelBpeTokenizer(vocabulary, merges, eos, eos);
    }

    [Fact]
    public void Encodes_with_merges_and_decodes_bytes()
    {
        var tokenizer = Create();
        var ids = tokenizer.Encode("hello world!", addBos: true);
        Assert.Equal(tokenizer.BosId, ids[0]);
        var bytes = new List<byte>();
        for (int i = 1; i < ids.Length; i++) bytes.AddRange(tokenizer.DecodeBytes(ids[i - 1], ids[i]));
        Assert.Equal("hello world!", Encoding.UTF8.GetString([.. bytes]));
        Assert.Equal(4, ids.Length);   // BOS, "hello", "Ġworld", "!"
    }

    [Fact]
    public void Matches_the_library_pre_tokenizer_below_the_cap()
    {
        var (vocabulary, merges) = SyntheticVocabulary.ByteLevel();
        var library = BpeTokenizer.Create(new BpeOptions(vocabulary)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(new Regex(ByteLevelBpeTokenizer.Gpt2Pattern), null),
        });
        var tokenizer = SyntheticVocabulary.CreateByteLevel();
        var random = new Random(5);
        string english = SyntheticVocabulary.EnglishText(20000, seed: 5);
        string[] odd = ["é", "日本", "😀", "\n", "  ", "42", "!!", "'s"];
        for (int i = 0; i < 200; i++)
        {
            var text = new StringBuilder();
            int length = random.Next(1, 600);
            while (text.Length < length)
                text.Append(random.Next(4) switch
                {
                    0 => odd[random.Next(odd.Length)],
                    1 => new string("abcdefghijklmnopqrstuvwxyz"[random.Next(26)], random.Next(1, ByteLevelBpeTokenizer.MaxPreTokenChars)),
                    _ => english.Substring(random.Next(english.Length - 50), random.Next(1, 50)),
                });
            string sample = text.ToString();
            if (Regex.Matches(sample, ByteLevelBpeTokenizer.Gpt2Pattern).Any(m => m.Length > ByteLevelBpeTokenizer.MaxPreTokenChars)) continue;
            Assert.Equal(library.EncodeToIds(sample), tokenizer.Encode(sample, addBos: false));
        }
    }

    [Fact]
    public void Encodes_1_MiB_of_English_text()
    {
        var tokenizer = SyntheticVocabulary.CreateByteLevel();
        string text = SyntheticVocabulary.EnglishText(1 << 20, seed: 3);
        var ids = tokenizer.Encode(text, addBos: true);
        Assert.True(ids.Length < text.Length / 3, $"{ids.Length} tokens for {text.Length} chars: the merges did not happen");
        Assert.Equal(text, Decode(tokenizer, ids));
    }

    [Theory]
    [InlineData("one word")]
    [InlineData("random letters")]
    public void Encodes_64_KB_without_whitespace(string kind)
    {
        var tokenizer = SyntheticVocabulary.CreateByteLevel();
        var random = new Random(6);
        string text = kind == "one word"
            ? string.Concat(Enumerable.Repeat("little", (64 << 10) / 6))   // one pre-token in which most letters merge
            : new([.. Enumerable.Range(0, 64 << 10).Select(_ => (char)random.Next('a', 'z' + 1))]);
        var ids = tokenizer.Encode(text, addBos: true);
        Assert.True(ids.Length < text.Length, "some merges should apply");
        Assert.Equal(text, Decode(tokenizer, ids));
    }

    private static string Decode(ITokenizer tokenizer, int[] ids)
    {
        var bytes = new List<byte>();
        for (int i = 1; i < ids.Length; i++) bytes.AddRange(tokenizer.DecodeBytes(ids[i - 1], ids[i]));
        return Encoding.UTF8.GetString([.. bytes]);
    }
}
