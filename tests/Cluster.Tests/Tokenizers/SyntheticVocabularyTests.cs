// The synthetic vocabulary: llama2.c's special-id layout, determinism, and text that round-trips through encode/decode.
using System.Text;
using Cluster.Model.Tokenizers;

namespace Cluster.Tests.Tokenizers;

public class SyntheticVocabularyTests
{
    private static string Decode(ITokenizer tokenizer, int[] ids)
    {
        var bytes = new List<byte>();
        for (int i = 1; i < ids.Length; i++) bytes.AddRange(tokenizer.DecodeBytes(ids[i - 1], ids[i]));
        return Encoding.UTF8.GetString([.. bytes]);
    }

    [Theory]
    [InlineData(512)]
    [InlineData(32000)]
    public void Text_round_trips_and_merges_apply(int vocabSize)
    {
        var tokenizer = SyntheticVocabulary.Create(vocabSize, seed: 1);
        Assert.Equal(vocabSize, tokenizer.VocabSize);
        Assert.Equal("<0x41>", Encoding.ASCII.GetString(tokenizer.Piece(3 + 0x41)));
        foreach (var text in new[] { "Once upon a time, there was a little girl.", "café 日本 ☕", "  two  spaces\n", "x" })
        {
            var ids = tokenizer.Encode(text, addBos: true);
            Assert.Equal(1, ids[0]);
            Assert.Equal(text, Decode(tokenizer, ids));
        }
        var merged = tokenizer.Encode("Once upon a time", true);
        Assert.True(merged.Length <= 6, "common words should merge: " + string.Join(" ", merged));
    }

    [Fact]
    public void Same_seed_same_vocabulary()
    {
        var a = SyntheticVocabulary.Create(2000, 4);
        var b = SyntheticVocabulary.Create(2000, 4);
        for (int i = 0; i < a.VocabSize; i++) Assert.True(a.Piece(i).SequenceEqual(b.Piece(i)));
    }
}
