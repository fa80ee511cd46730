// Training documents from text: plain text (every token learned), JSONL prompt/completion records and chat records
// (only the completion / assistant tokens are learned), generated additions ("23+19=" → "42", the demo's data) and
// generated children's stories (StoryCorpus, the storyteller's data). Each document is tokenized with the model's
// tokenizer, BOS first and EOS after a completion or a story, so a trained model stops where its answers stop.
using System.Text.Json;
using Cluster.Model;
using Cluster.Model.Tokenizers;

namespace Cluster.Training;

/// <summary>A tokenized document; <paramref name="Learned"/>[i] says whether predicting token i counts in the loss (null: every token after the first).</summary>
public sealed record TrainingDocument(int[] Tokens, bool[]? Learned = null);

public static class Datasets
{
    /// <summary><paramref name="count"/> seeded additions "a+b=" → "c" with operands below <paramref name="limit"/>.</summary>
    public static (string Prompt, string Completion)[] Additions(int count, int seed, int limit = 100)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ =>
        {
            int a = rng.Next(limit), b = rng.Next(limit);
            return ($"{a}+{b}=", $"{a + b}");
        })];
    }

    /// <summary>
    /// A generated dataset by name, as the CLI's --data and a job's "dataset" name it: "additions" (10,000 problems) or
    /// "stories" (20,000 stories); null for any other name.
    /// </summary>
    public static TrainingDocument[]? Generated(string name, int seed, ITokenizer tokenizer) => name switch
    {
        "additions" => [.. Additions(10_000, seed).Select(p => PromptCompletion(p.Prompt, p.Completion, tokenizer))],
        "stories" => Stories(20_000, seed, tokenizer),
        _ => null,
    };

    /// <summary><paramref name="count"/> seeded StoryCorpus stories, each a document BOS, story, EOS with every token learned.</summary>
    public static TrainingDocument[] Stories(int count, int seed, ITokenizer tokenizer) =>
        [.. StoryCorpus.Stories(count, seed).Select(story => new TrainingDocument([.. tokenizer.Encode(story, addBos: true), tokenizer.EosId]))];

    /// <summary>One document per line, every token learned.</summary>
    public static TrainingDocument[] Text(IEnumerable<string> lines, ITokenizer tokenizer) =>
        [.. lines.Where(l => l.Length > 0).Select(l => new TrainingDocument(tokenizer.Encode(l, addBos: true)))];

    /// <summary>The prompt's tokens are context, the completion's (and the EOS after it) are learned.</summary>
    public static TrainingDocument PromptCompletion(string prompt, string completion, ITokenizer tokenizer)
    {
        int[] context = tokenizer.Encode(prompt, addBos: true);
        int[] whole = [.. tokenizer.Encode(prompt + completion, addBos: true), tokenizer.EosId];
        int shared = 0;   // where the tokenizations part (a merge may straddle the boundary: it then counts as completion)
        while (shared < context.Length && shared < whole.Length - 1 && context[shared] == whole[shared]) shared++;
        return new TrainingDocument(whole, [.. whole.Select((_, i) => i >= shared)]);
    }

    /// <summary>
    /// JSONL: each line {"prompt": ..., "completion": ...} or {"messages": [{"role": ..., "content": ...}, ...]}. A chat
    /// is rendered "role: content\n" per message; the assistant messages' content and newline are learned.
    /// </summary>
    public static TrainingDocument[] Jsonl(IEnumerable<string> lines, ITokenizer tokenizer, string source = "jsonl")
    {
        var documents = new List<TrainingDocument>();
        int number = 0;
        foreach (string line in lines)
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                using var json = JsonDocument.Parse(line);
                var root = json.RootElement;
                if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("messages", out var messages))
                    documents.Add(Chat(messages, tokenizer));
                else if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("prompt", out var prompt) && root.TryGetProperty("completion", out var completion))
                    documents.Add(PromptCompletion(prompt.GetString() ?? "", completion.GetString() ?? "", tokenizer));
                else throw new FormatException("a record needs \"prompt\" and \"completion\", or \"messages\"");
            }
            catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException)
            {
                throw new FormatException($"{source} line {number}: {e.Message}", e);
            }
        }
        return documents.Count > 0 ? [.. documents] : throw new FormatException($"{source} holds no records");
    }

    private static TrainingDocument Chat(JsonElement messages, ITokenizer tokenizer)
    {
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0) throw new FormatException("\"messages\" must be a non-empty array");
        var tokens = new List<int> { tokenizer.BosId };
        var learned = new List<bool> { false };
        string text = "";
        foreach (var message in messages.EnumerateArray())
        {
            string role = message.GetProperty("role").GetString() ?? throw new FormatException("a message needs a role");
            string content = message.GetProperty("content").GetString() ?? "";
            if (role is not ("system" or "user" or "assistant")) throw new FormatException($"unknown role '{role}' (system, user or assistant)");
            // Tokenize the text so far and after this message; the new tokens are this message's (learned when the assistant's).
            string header = text + role + ": ", after = header + content + "\n";
            int[] before = tokenizer.Encode(header, addBos: true), all = tokenizer.Encode(after, addBos: true);
            int shared = 0;
            while (shared < before.Length && shared < all.Length && before[shared] == all[shared]) shared++;
            int kept = Math.Min(shared, tokens.Count);
            tokens.RemoveRange(kept, tokens.Count - kept);
            learned.RemoveRange(kept, learned.Count - kept);
            for (int i = kept; i < all.Length; i++)
            {
                tokens.Add(all[i]);
                learned.Add(role == "assistant" && i >= shared);
            }
            text = after;
        }
        tokens.Add(tokenizer.EosId);
        learned.Add(learned[^1]);   // the EOS ends the conversation: learned when the assistant spoke last
        return new TrainingDocument([.. tokens], [.. learned]);
    }
}
