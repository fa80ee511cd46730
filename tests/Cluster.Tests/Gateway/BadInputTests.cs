// Hostile and malformed requests (seeded): every one is answered 4xx with the OpenAI error JSON, never a 500, and a
// valid request still succeeds afterwards.
using System.Net;
using System.Text;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Tests.Grains;

namespace Cluster.Tests.Gateway;

[Collection(nameof(ClusterCollection))]
public sealed class BadInputTests(ClusterFixture fixture)
{
    private static readonly string[] Bodies =
    [
        "", "{", "[]", "null", "42", "\"x\"", "{\"model\":\"tiny\",\"prompt\":\"a\"", "{'model':'tiny'}",
        """{"prompt":"a"}""", """{"model":"tiny"}""", """{"model":7,"prompt":"a"}""", """{"model":"","prompt":"a"}""",
        """{"model":"nope","prompt":"a"}""", """{"model":"tiny","prompt":5}""", """{"model":"tiny","prompt":["a",1]}""",
        """{"model":"tiny","prompt":"a","max_tokens":0}""", """{"model":"tiny","prompt":"a","max_tokens":4097}""",
        """{"model":"tiny","prompt":"a","max_tokens":1e30}""", """{"model":"tiny","prompt":"a","max_tokens":"8"}""",
        """{"model":"tiny","prompt":"a","max_tokens":2.5}""", """{"model":"tiny","prompt":"a","temperature":-0.1}""",
        """{"model":"tiny","prompt":"a","temperature":2.01}""", """{"model":"tiny","prompt":"a","temperature":"hot"}""",
        """{"model":"tiny","prompt":"a","top_p":1.5}""", """{"model":"tiny","prompt":"a","top_k":-1}""",
        """{"model":"tiny","prompt":"a","n":2}""", """{"model":"tiny","prompt":"a","stream":"yes"}""",
        """{"model":"tiny","prompt":"a","seed":"s"}""", """{"model":"tiny","prompt":"a","seed":1e300}""",
    ];

    private static readonly string[] ChatBodies =
    [
        """{"model":"tiny"}""", """{"model":"tiny","messages":[]}""", """{"model":"tiny","messages":"hi"}""",
        """{"model":"tiny","messages":[1]}""", """{"model":"tiny","messages":[{"content":"hi"}]}""",
        """{"model":"tiny","messages":[{"role":"wizard","content":"hi"}]}""", """{"model":"tiny","messages":[{"role":"user","content":7}]}""",
        """{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url"}]}]}""",
        """{"model":"nope","messages":[{"role":"user","content":"hi"}]}""", """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":-3}""",
    ];

    [Fact]
    public async Task HostileRequestsAreAnswered4xxWithOpenAiErrors()
    {
        await fixture.Cluster.Client.GetGrain<IInferenceSchedulerGrain>("tiny").Serve(new ModelServing(TestClusters.Tiny));
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        var random = new Random(1234);
        var requests = new List<(string Path, string Body)>();
        requests.AddRange(Bodies.Select(b => ("/v1/completions", b)));
        requests.AddRange(ChatBodies.Select(b => ("/v1/chat/completions", b)));
        for (int i = 0; i < 300; i++)   // seeded mutations: truncations, byte flips, type swaps
        {
            var (path, body) = requests[random.Next(requests.Count)];
            var bytes = Encoding.UTF8.GetBytes(body);
            if (bytes.Length > 0 && random.Next(2) == 0) bytes = bytes[..random.Next(bytes.Length)];
            else if (bytes.Length > 0) bytes[random.Next(bytes.Length)] = (byte)"{}[]\",:0x-\\\0\u00ff"[random.Next(13)];
            requests.Add((path, Encoding.UTF8.GetString(bytes)));
        }
        requests.Add(("/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"" + new string('a', 1 << 20) + "\"}"));
        requests.Add(("/v1/completions", "{\"model\":\"tiny\",\"prompt\":\"" + string.Concat(Enumerable.Repeat("word ", 2000)) + "\",\"max_tokens\":1}"));

        foreach (var (path, body) in requests)
        {
            using var response = await http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);
            if (response.StatusCode == HttpStatusCode.OK) continue;   // a mutation can still be a valid request
            Assert.True((int)response.StatusCode is >= 400 and < 500, $"{(int)response.StatusCode} for {path} {body[..Math.Min(body.Length, 200)]}");
            using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
            var error = json.RootElement.GetProperty("error");
            Assert.Equal(JsonValueKind.String, error.GetProperty("message").ValueKind);
            Assert.Equal(JsonValueKind.String, error.GetProperty("type").ValueKind);
        }

        using var ok = await http.PostAsync("/v1/chat/completions",
            new StringContent("""{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4}""", Encoding.UTF8, "application/json"),
            TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }
}
