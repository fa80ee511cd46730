// How the app host's default English model is made: `cluster train` on the generated children's stories (the
// "storyteller" preset and "stories" dataset, src/Model/StoryCorpus.cs), in one process using every core, written
// as GGUF (tokenizer inside) to the data directory. A few minutes on two cores, once per machine.
namespace Cluster.AppHost;

public static class StoryModel
{
    // 400 steps of 8 stories (256 tokens): final loss ~0.45, ~3 minutes on 2 cores; the same flags give the same model.
    public static readonly string[] TrainingArguments = ["--preset", "storyteller", "--data", "stories", "--steps", "400", "--batch", "8", "--lr", "5e-3"];
}
