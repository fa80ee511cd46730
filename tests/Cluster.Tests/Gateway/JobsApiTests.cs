// The jobs API over real HTTP: a job is created, its events stream as SSE until it completes, its status and cancel
// answer, and bad requests get 4xx in the OpenAI error shape.
using System.Net;
using System.Text;
using System.Text.Json;
using Cluster.Tests.Grains;

namespace Cluster.Tests.Gateway;

[Collection(nameof(ClusterCollection))]
public sealed class JobsApiTests(ClusterFixture fixture)
{
    private static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");

    /// <summary>POSTs a job spec; it must be created (201). Returns the job's id.</summary>
    private static async Task<string> CreateJob(HttpClient http, string spec, CancellationToken cancel)
    {
        using var created = await http.PostAsync("v1/jobs", Json(spec), cancel);
        string body = await created.Content.ReadAsStringAsync(cancel);
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        return JsonDocument.Parse(body).RootElement.GetProperty("id").GetString()!;
    }

    [Fact]
    public async Task AJobIsCreatedStreamsItsProgressAndCompletes()
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        var cancel = TestContext.Current.CancellationToken;
        string id = await CreateJob(http, """{"preset":"tiny","steps":12,"batch_size":4,"sequence_length":32,"learning_rate":0.003,"layout":"dp=2","keep_checkpoints":2}""", cancel);

        string events = await http.GetStringAsync($"v1/jobs/{id}/events", cancel);   // SSE until the job ends

        var data = events.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e["data: ".Length..]).ToList();
        Assert.Equal("[DONE]", data[^1]);
        var last = JsonDocument.Parse(data[^2]).RootElement;
        Assert.Equal("completed", last.GetProperty("state").GetString());
        Assert.Equal(12, last.GetProperty("step").GetInt32());
        using var status = JsonDocument.Parse(await http.GetStringAsync($"v1/jobs/{id}", cancel));
        Assert.Equal("completed", status.RootElement.GetProperty("state").GetString());
        using var cancelled = await http.PostAsync($"v1/jobs/{id}/cancel", Json("{}"), cancel);
        Assert.Equal(HttpStatusCode.OK, cancelled.StatusCode);   // cancelling a finished job changes nothing
    }

    /// <summary>An MoE model trained with its experts over two trainers (ep=2) reports each step's expert loads and router losses.</summary>
    [Fact]
    public async Task AnExpertParallelJobReportsItsExpertsInItsEvents()
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        var cancel = TestContext.Current.CancellationToken;
        string id = await CreateJob(http, """{"preset":"moe-tiny","steps":3,"batch_size":4,"sequence_length":32,"learning_rate":0.003,"layout":"ep=2","keep_checkpoints":1}""", cancel);

        string events = await http.GetStringAsync($"v1/jobs/{id}/events", cancel);

        var steps = events.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e["data: ".Length..]).Where(d => d != "[DONE]")
            .Select(d => JsonDocument.Parse(d).RootElement).Where(e => e.GetProperty("expert_load").ValueKind == JsonValueKind.Array).ToList();
        Assert.Equal(3, steps.Count);
        foreach (var step in steps)
        {
            long[] load = [.. step.GetProperty("expert_load").EnumerateArray().Select(l => l.GetInt64())];
            Assert.Equal(8, load.Length);
            Assert.True(load.Sum() > 0 && load.Sum() % (2 * 4) == 0, $"each token chooses 2 experts in each of 4 layers: {load.Sum()}");
            Assert.True(step.GetProperty("router_loss").GetSingle() > 0);
            Assert.Equal(0, step.GetProperty("dropped_tokens").GetInt64());   // dropless
        }
    }

    [Theory]
    [InlineData("{", 400)]
    [InlineData("[]", 400)]
    [InlineData("""{"steps":5}""", 400)]                                       // no model
    [InlineData("""{"preset":"nope"}""", 400)]
    [InlineData("""{"preset":"tiny","steps":0}""", 400)]
    [InlineData("""{"preset":"tiny","steps":"5"}""", 400)]
    [InlineData("""{"preset":"tiny","learning_rate":2}""", 400)]
    [InlineData("""{"preset":"tiny","batch_size":2,"layout":"dp=3"}""", 400)]
    [InlineData("""{"preset":"tiny","layout":"tp=8"}""", 400)]            // more ranks than KV heads
    [InlineData("""{"preset":"tiny","layout":"ep=2"}""", 400)]            // experts of a dense model
    [InlineData("""{"preset":"moe-tiny","layout":"tp=2"}""", 400)]        // tp would cut its experts
    [InlineData("""{"preset":"tiny","layout":"pp=2","schedule":"zigzag"}""", 400)]
    [InlineData("""{"preset":"tiny","dataset":"jsonl"}""", 400)]
    [InlineData("""{"preset":"tiny","documents":[1,2]}""", 400)]
    [InlineData("""{"preset":"tiny","dataset":"stories","documents":["Once upon a time."]}""", 400)]   // generated: no documents
    [InlineData("""{"preset":"tiny","dataset":"tales"}""", 400)]
    [InlineData("""{"preset":"tiny","zero_stage":4}""", 400)]
    [InlineData("""{"preset":"tiny","precision":"fp8"}""", 400)]
    [InlineData("""{"preset":"tiny","lora":{"alpha":4}}""", 400)]                 // no rank
    [InlineData("""{"preset":"tiny","activation_checkpointing":"yes"}""", 400)]
    [InlineData("""{"preset":"tiny","keep_checkpoints":0}""", 400)]
    [InlineData("""{"preset":"tiny","keep_checkpoints":1001}""", 400)]
    public async Task BadJobRequestsAreRefused(string request, int status)
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        using var response = await http.PostAsync("v1/jobs", Json(request), TestContext.Current.CancellationToken);
        Assert.Equal(status, (int)response.StatusCode);
        using var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        Assert.True(error.RootElement.TryGetProperty("error", out _));
    }

    [Fact]
    public async Task UnknownJobsAre404()
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        foreach (var (method, path) in new[] { ("GET", "v1/jobs/job-none"), ("GET", "v1/jobs/job-none/events"), ("POST", "v1/jobs/job-none/cancel") })
        {
            using var request = new HttpRequestMessage(new HttpMethod(method), path) { Content = method == "POST" ? Json("{}") : null };
            using var response = await http.SendAsync(request, TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        }
    }
}
