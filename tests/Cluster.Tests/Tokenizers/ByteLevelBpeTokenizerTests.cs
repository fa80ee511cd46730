// Byte-level BPE through Microsoft.ML.Tokenizers: a hand-made GPT-2 style vocabulary and merges.
using System.Text;
using Cluster.Model.Tokenizers;

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
}
