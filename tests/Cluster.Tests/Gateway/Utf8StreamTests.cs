// Byte-fallback tokens that spell a multi-byte character are held until the character is whole: a tiny model trained
// (through a real job) on "é" repeated emits it as the byte tokens <0xC3><0xA9>, and its completions, streamed and
// not, read "é" with no U+FFFD; a generation cut between the two bytes drops the half character instead of showing it.
using System.Text;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Tests.Grains;

namespace Cluster.Tests.Gateway;

[Collection(nameof(ClusterCollection))]
public sealed class Utf8StreamTests(ClusterFixture fixture)
{
    [Fact]
    public async Task MultiByteCharactersFromByteTokensAreNeverSplit()
    {
        var cancel = TestContext.Current.CancellationToken;
        var job = fixture.Cluster.Client.GetGrain<ITrainingJobGrain>("job-utf8");
        await job.Submit(new TrainingJobSpec
        {
            Source = ModelSource.Random("tiny", seed: 7), Dataset = "text", Documents = [.. Enumerable.Repeat(new string('é', 40), 8)],
            Steps = 60, BatchSize = 4, SequenceLength = 32, LearningRate = 1e-2f, WarmupSteps = 2, ServeAs = "accents",
        });
        var status = await job.WaitForAsync(s => s.IsEnded(), cancel);
        Assert.True(status.State == TrainingJobState.Completed, status.Error);

        var scheduler = fixture.Cluster.Client.GetGrain<IInferenceSchedulerGrain>("accents");
        var raw = await scheduler.GenerateAsync(new GenerationRequest { Prompt = "éé", MaxTokens = 8, Temperature = 0, StopAtEos = false }, cancel);
        Assert.Equal([0xC3 + 3, 0xA9 + 3], raw.Take(2).Select(c => c.TokenId));   // byte pieces <0xC3><0xA9> (ids 3 + byte)
        Assert.Equal("", raw[0].Text);                                             // the first byte alone is held back

        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        async Task<string> Complete(int maxTokens, bool stream)
        {
            using var response = await http.PostAsync("v1/completions", new StringContent(
                $$"""{"model":"accents","prompt":"éé","max_tokens":{{maxTokens}},"temperature":0,"stream":{{(stream ? "true" : "false")}}}""",
                Encoding.UTF8, "application/json"), cancel);
            string body = await response.Content.ReadAsStringAsync(cancel);
            Assert.True(response.IsSuccessStatusCode, body);
            if (!stream) return JsonDocument.Parse(body).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
            var text = new StringBuilder();
            foreach (string line in body.Split('\n').Where(l => l.StartsWith("data: {", StringComparison.Ordinal)))
            {
                string piece = JsonDocument.Parse(line["data: ".Length..]).RootElement.GetProperty("choices")[0].GetProperty("text").GetString() ?? "";
                Assert.DoesNotContain('\uFFFD', piece);
                text.Append(piece);
            }
            return text.ToString();
        }
        foreach (bool stream in new[] { false, true })
        {
            Assert.Equal("éééé", await Complete(8, stream));
            Assert.Equal("ééé", await Complete(7, stream));   // cut after the first byte of the fourth: that half is dropped
        }
    }
}
