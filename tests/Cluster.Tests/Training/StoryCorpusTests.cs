// The generated stories and the storyteller preset: stories are deterministic by seed, ASCII, 4-7 sentences, varied,
// with pronouns that agree with the names and a/an that agree with the words; the storyteller's vocabulary makes
// story words single tokens, round-trips any text and travels inside its GGUF; the stories dataset frames every
// story with BOS and EOS within the model's context; and a short training run lowers the loss well below its start.
using System.Text;
using System.Text.RegularExpressions;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Model.Tokenizers;
using Cluster.Tests.Formats;
using Cluster.Training;

namespace Cluster.Tests.Training;

public sealed partial class StoryCorpusTests
{
    private static readonly string[] Corpus = StoryCorpus.Stories(3000, seed: 5);

    /// <summary>Each name's gender, from the openers that say it ("a little girl named Lily").</summary>
    private static readonly Dictionary<string, string> Genders = Corpus.SelectMany(s => NamedPattern().Matches(s))
        .GroupBy(m => m.Groups[2].Value).ToDictionary(g => g.Key, g => g.Select(m => m.Groups[1].Value).Distinct().Single());

    [Fact]
    public void TheSameSeedGivesTheSameStoriesAndAnotherSeedOthers()
    {
        Assert.Equal(StoryCorpus.Stories(200, seed: 5), Corpus[..200]);
        Assert.NotEqual(StoryCorpus.Stories(200, seed: 6), Corpus[..200]);
        Assert.Empty(StoryCorpus.Stories(0, seed: 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => StoryCorpus.Stories(-1, seed: 5));
    }

    [Fact]
    public void StoriesAreAsciiSentencesThatMostlyOpenOnceUponATime()
    {
        foreach (string story in Corpus)
        {
            Assert.True(story.All(c => c is >= ' ' and <= '~'), story);
            int sentences = SentenceEnd().Matches(story).Count;
            Assert.True(sentences is >= StoryCorpus.MinSentences and <= StoryCorpus.MaxSentences, $"{sentences} sentences: {story}");
            Assert.DoesNotContain("  ", story);
        }
        Assert.InRange(Corpus.Count(s => s.StartsWith("Once upon a time, ", StringComparison.Ordinal)), Corpus.Length * 6 / 10, Corpus.Length);
        Assert.Contains(Corpus, s => s.StartsWith("One day, ", StringComparison.Ordinal));
    }

    [Fact]
    public void StoriesAreVaried()
    {
        Assert.True(Corpus.Distinct().Count() >= Corpus.Length * 99 / 100, "stories repeat");
        Assert.True(Genders.Count >= 20, $"only {Genders.Count} names");
        string[] plots = ["was gone", "shared", "had no", "went to the", "can help you", "saw a"];
        Assert.All(plots, plot => Assert.True(Corpus.Count(s => s.Contains(plot)) >= Corpus.Length / 20, $"'{plot}' is rare"));
        int words = Corpus.SelectMany(s => Regex.Split(s, "[^A-Za-z]+")).Where(w => w.Length > 0).Distinct().Count();
        Assert.True(words >= 250, $"only {words} distinct words");
    }

    [Fact]
    public void PronounsAgreeWithTheNamesAndArticlesWithTheWords()
    {
        Assert.Contains("girl", Genders.Values);
        Assert.Contains("boy", Genders.Values);   // and each name has one gender: Single() above
        foreach (string story in Corpus)
        {
            var genders = Regex.Matches(story, "[A-Z][a-z]+").Select(m => Genders.GetValueOrDefault(m.Value)).OfType<string>().ToHashSet();
            Assert.NotEmpty(genders);
            if (!genders.Contains("boy")) Assert.DoesNotMatch(@"\b(?i:he|him|his)\b", story);
            if (!genders.Contains("girl")) Assert.DoesNotMatch(@"\b(?i:she|her)\b", story);
            // Where a pronoun is bound to a name in the sentence it must agree: "Tom and his dad", "Lily shared her cookies".
            foreach (Match bound in BoundPronoun().Matches(story))
                Assert.Equal(Genders[bound.Groups[1].Value] == "girl" ? "her" : "his", bound.Groups[2].Value);
            foreach (Match article in Regex.Matches(story, @"\b([Aa]n?) ([a-z]+)"))
                Assert.True(article.Groups[1].Value.Length == 2 == "aeiou".Contains(article.Groups[2].Value[0]), $"'{article.Value}' in: {story}");
        }
    }

    [Fact]
    public void TheStorytellerVocabularyMakesStoryWordsSingleTokensAndRoundTrips()
    {
        var tokenizer = RandomModel.Tokenizer("storyteller", seed: 1);
        Assert.Equal(RandomModel.Preset("storyteller").VocabSize, tokenizer.VocabSize);
        Assert.Equal((1, 2), (tokenizer.BosId, tokenizer.EosId));
        var other = RandomModel.Tokenizer("storyteller", seed: 9);   // every seed's model shares it
        Assert.All(Enumerable.Range(0, tokenizer.VocabSize), i => Assert.True(tokenizer.Piece(i).SequenceEqual(other.Piece(i))));

        const string opener = "Once upon a time, there was a little girl named Lily. She loved to play with her friend Tom.";
        string[] pieces = [" Once", " upon", " a", " time", ",", " there", " was", " a", " little", " girl", " named", " Lily", ".",
            " She", " loved", " to", " play", " with", " her", " friend", " Tom", "."];
        Assert.Equal(pieces, tokenizer.Encode(opener, addBos: false).Select(id => Encoding.ASCII.GetString(tokenizer.Piece(id))));

        foreach (string text in Corpus.Take(200).Append("café 日本 ☕ and\ttabs, \"quotes\" and  two spaces\n"))
        {
            int[] ids = tokenizer.Encode(text, addBos: true);
            Assert.Equal(text, Decode(tokenizer, ids));
        }
        double tokensPerWord = Corpus.Average(s => (double)tokenizer.Encode(s, false).Length / Regex.Matches(s, "[A-Za-z]+").Count);
        Assert.True(tokensPerWord < 1.5, $"{tokensPerWord:F2} tokens a word (punctuation included)");
    }

    [Fact]
    public void TheStorytellerGgufCarriesItsTokenizer()
    {
        using var directory = new TempDirectory();
        var model = RandomModel.Create("storyteller", seed: 2);
        GgufWriter.Write(model, directory.File("storyteller.gguf"), name: "storyteller");

        var loaded = ModelLoader.Load(directory.File("storyteller.gguf"));

        Assert.Equal(model.Config.VocabSize, loaded.Config.VocabSize);
        Assert.True(loaded.Config.TiedEmbeddings);
        var tokenizer = Assert.IsType<SentencePieceBpeTokenizer>(loaded.Tokenizer);
        Assert.All(Corpus.Take(50), story => Assert.Equal(model.Tokenizer!.Encode(story, true), tokenizer.Encode(story, true)));
    }

    [Fact]
    public void StoryDocumentsAreFramedByBosAndEosWithinTheContext()
    {
        var tokenizer = RandomModel.Tokenizer("storyteller", seed: 1);
        var documents = Datasets.Stories(500, seed: 5, tokenizer);

        Assert.Equal(500, documents.Length);
        Assert.All(documents, d =>
        {
            Assert.Equal(tokenizer.BosId, d.Tokens[0]);
            Assert.Equal(tokenizer.EosId, d.Tokens[^1]);
            Assert.Null(d.Learned);
        });
        Assert.Equal(tokenizer.Encode(Corpus[0], addBos: true), documents[0].Tokens[..^1]);
        Assert.True(documents.Max(d => d.Tokens.Length) < RandomModel.Preset("storyteller").MaxSeqLen / 2, "a story does not fit the context twice over");
    }

    [Fact]
    public void AShortRunOnStoriesLowersTheLossWellBelowItsStart()
    {
        var storyteller = RandomModel.Create("storyteller", seed: 1);
        using var model = new TrainableModel(storyteller.Config, storyteller.Weights, threads: Environment.ProcessorCount);
        var data = new PackedDataset(Datasets.Stories(400, seed: 1, storyteller.Tokenizer!), sequenceLength: 128, seed: 1);
        const int steps = 60;
        var optimizer = new Optimizer(model, new OptimizerOptions { LearningRate = 5e-3f, MinLearningRate = 5e-4f, WarmupSteps = 5, TotalSteps = steps });
        var cursor = default(DataCursor);
        var losses = new List<float>();
        for (int step = 1; step <= steps; step++)
        {
            (var batch, cursor) = data.Take(4, cursor);
            model.ZeroGradients();
            losses.Add(model.ForwardBackward(batch));
            optimizer.Apply();
        }
        float first = losses[0], last = losses.TakeLast(5).Average();
        Assert.True(first > 6f, $"an untrained model should be near ln(1024) = 6.9, not {first}");
        Assert.True(last < 0.7f * first, $"loss went from {first} to {last}");
    }

    private static string Decode(ITokenizer tokenizer, int[] ids)
    {
        var bytes = new List<byte>();
        for (int i = 1; i < ids.Length; i++) bytes.AddRange(tokenizer.DecodeBytes(ids[i - 1], ids[i]));
        return Encoding.UTF8.GetString([.. bytes]);
    }

    [GeneratedRegex(@"\b(girl|boy) named ([A-Z][a-z]+)")]
    private static partial Regex NamedPattern();

    /// <summary>The end of a sentence: ".", "!" or "?", with a closing quote, before a space and a capital or the end.</summary>
    [GeneratedRegex(@"[.!?]""?(?= [A-Z""]|$)")]
    private static partial Regex SentenceEnd();

    /// <summary>A name and the possessive that refers to it: "Tom and his", "Lily shared her", "Ben went to the park with his".</summary>
    [GeneratedRegex(@"\b([A-Z][a-z]+) (?:and|shared|loved|went to the [a-z]+ with) (his|her)\b")]
    private static partial Regex BoundPronoun();
}
