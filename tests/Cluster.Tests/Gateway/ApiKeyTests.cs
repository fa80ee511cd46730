// API keys: with keys configured, /v1 answers 401 in the OpenAI error shape without a key or with a wrong one, and
// serves a request that carries a right one; the probes stay open.
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Tests.Grains;

namespace Cluster.Tests.Gateway;

[Collection(nameof(ClusterCollection))]
public sealed class ApiKeyTests(ClusterFixture fixture)
{
    [Fact]
    public async Task OnlyRequestsWithAnAcceptedKeyReachTheModel()
    {
        await fixture.Cluster.Client.GetGrain<IInferenceSchedulerGrain>("tiny").Serve(new ModelServing(TestClusters.Tiny));
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client, "key-one", "key-two");
        using var http = gateway.Http();
        async Task<HttpResponseMessage> Complete(string? key)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions")
            {
                Content = new StringContent("""{"model":"tiny","prompt":"a","max_tokens":2}""", Encoding.UTF8, "application/json"),
            };
            if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
            return await http.SendAsync(request, TestContext.Current.CancellationToken);
        }

        foreach (string? wrong in new[] { null, "", "key-on", "key-one-", "KEY-ONE" })
        {
            using var rejected = await Complete(wrong);
            Assert.Equal(HttpStatusCode.Unauthorized, rejected.StatusCode);
            using var error = JsonDocument.Parse(await rejected.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
            Assert.Equal("invalid_api_key", error.RootElement.GetProperty("error").GetProperty("code").GetString());
        }
        using var accepted = await Complete("key-two");
        Assert.Equal(HttpStatusCode.OK, accepted.StatusCode);
        using var health = await http.GetAsync("health", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        using var ready = await http.GetAsync("ready", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
    }
}
