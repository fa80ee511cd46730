// The gateway's security rules over real HTTP: roles per route, the dashboard behind admin, JSON-only bodies, allowed
// hosts, Unicode checks, JSON 404/405, 503 with Retry-After when the cluster is unreachable, job paths confined to
// the model roots (traversal spellings and symlinks refused with 403, no file bytes in any answer), model ids that a
// job may not take, and jobs refused for layouts or memory that cannot fit.
using System.Net;
using System.Net.Http.Headers;
using System.Reflection;
using System.Text;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Gateway;
using Cluster.Grains;
using Cluster.Tests.Grains;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Cluster.Tests.Gateway;

[Collection(nameof(ClusterCollection))]
public sealed class SecurityTests(ClusterFixture fixture)
{
    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    private static readonly ApiKeys RoleKeys = new([
        new ApiKey("infer-key", ApiRoles.Inference), new ApiKey("train-key", ApiRoles.Train),
        new ApiKey("both-key", ApiRoles.Inference | ApiRoles.Train), new ApiKey("admin-key", ApiRoles.All)]);

    private string TrainingRoot => fixture.Cluster.GetSiloServiceProvider(fixture.Cluster.Silos[0].SiloAddress)
        .GetRequiredService<IOptions<TrainingOptions>>().Value.Root;

    private static HttpRequestMessage Post(string path, string body, string? key = null, string contentType = "application/json")
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8) };
        request.Content.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return request;
    }

    private static async Task<(HttpStatusCode Status, string Body)> Send(HttpClient http, HttpRequestMessage request)
    {
        using (request)
        using (var response = await http.SendAsync(request, Cancel))
            return (response.StatusCode, await response.Content.ReadAsStringAsync(Cancel));
    }

    private static string ErrorCode(string body) =>
        JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("code").GetString() ?? "";

    [Fact]
    public async Task EachRouteNeedsItsRole()
    {
        await fixture.Cluster.Client.GetGrain<IInferenceSchedulerGrain>("tiny").Serve(new ModelServing(TestClusters.Tiny));
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client, RoleKeys);
        using var http = gateway.Http();
        const string completion = """{"model":"tiny","prompt":"a","max_tokens":2}""";
        const string job = """{"preset":"tiny","steps":1,"batch_size":1,"layout":"tp=64"}""";   // refused (400) once past the role check

        Assert.Equal(HttpStatusCode.OK, (await Send(http, Post("v1/completions", completion, "infer-key"))).Status);
        var denied = await Send(http, Post("v1/completions", completion, "train-key"));
        Assert.Equal(HttpStatusCode.Forbidden, denied.Status);
        Assert.Equal("insufficient_role", ErrorCode(denied.Body));
        Assert.Equal(HttpStatusCode.Forbidden, (await Send(http, Post("v1/jobs", job, "infer-key"))).Status);
        Assert.Equal(HttpStatusCode.BadRequest, (await Send(http, Post("v1/jobs", job, "train-key"))).Status);
        Assert.Equal(HttpStatusCode.Unauthorized, (await Send(http, Post("v1/jobs", job, "nobody"))).Status);

        async Task<HttpStatusCode> Get(string path, AuthenticationHeaderValue? auth)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, path);
            request.Headers.Authorization = auth;
            using var response = await http.SendAsync(request, Cancel);
            if (response.StatusCode == HttpStatusCode.Unauthorized && path.StartsWith("dashboard"))
                Assert.StartsWith("Basic", response.Headers.WwwAuthenticate.ToString());   // browsers ask for the key
            return response.StatusCode;
        }
        Assert.Equal(HttpStatusCode.Forbidden, await Get("v1/cluster/silos", new("Bearer", "both-key")));
        Assert.Equal(HttpStatusCode.OK, await Get("v1/cluster/silos", new("Bearer", "admin-key")));
        Assert.Equal(HttpStatusCode.OK, await Get("v1/models", new("Bearer", "infer-key")));
        // The dashboard (not mapped in this test host: 404 once through) needs admin, by Bearer or Basic with the key as password.
        Assert.Equal(HttpStatusCode.Unauthorized, await Get("dashboard/Trace", null));
        Assert.Equal(HttpStatusCode.Forbidden, await Get("dashboard/GrainState", new("Bearer", "both-key")));
        Assert.Equal(HttpStatusCode.NotFound, await Get("dashboard/Trace", new("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes("admin:admin-key")))));
        Assert.Equal(HttpStatusCode.OK, await Get("health", null));
    }

    [Fact]
    public async Task CrossSiteShapedRequestsAreRefused()
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        const string completion = """{"model":"tiny","prompt":"a","max_tokens":2}""";
        foreach (string type in new[] { "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=utf-16" })
        {
            var (status, body) = await Send(http, Post("v1/completions", completion, contentType: type));
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, status);
            Assert.Equal("unsupported_media_type", ErrorCode(body));
        }
        using var noType = new HttpRequestMessage(HttpMethod.Post, "v1/jobs/job-x/cancel");
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, (await Send(http, noType)).Status);

        // DNS rebinding: a Host header that is not a loopback name is refused.
        using var rebound = Post("v1/completions", completion);
        rebound.Headers.Host = "attacker.example";
        Assert.Equal(HttpStatusCode.BadRequest, (await Send(http, rebound)).Status);
    }

    [Fact]
    public async Task ConfiguredAllowedHostsReplaceTheLoopbackDefault()
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client, new ApiKeys(), allowedHosts: "cluster.internal");
        using var http = gateway.Http();
        using var loopback = new HttpRequestMessage(HttpMethod.Get, "health");
        Assert.Equal(HttpStatusCode.BadRequest, (await Send(http, loopback)).Status);
        using var named = new HttpRequestMessage(HttpMethod.Get, "health");
        named.Headers.Host = "cluster.internal";
        Assert.Equal(HttpStatusCode.OK, (await Send(http, named)).Status);
    }

    [Fact]
    public async Task MalformedUnicodeAndJsonShapesAre400AndUnknownRoutesJson()
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        foreach (string path in new[] { "v1/completions", "v1/jobs" })
        {
            var invalidUtf8 = new HttpRequestMessage(HttpMethod.Post, path)
            {
                Content = new ByteArrayContent([.. """{"model":"tiny","prompt":"""u8, 0x22, 0xC3, 0x28, 0x22, (byte)'}']),
            };
            invalidUtf8.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            Assert.Equal(HttpStatusCode.BadRequest, (await Send(http, invalidUtf8)).Status);
        }
        foreach (var (path, body) in new[]
        {
            ("v1/completions", """{"model":"tiny","prompt":"\udc00"}"""),
            ("v1/chat/completions", """{"model":"tiny","messages":[{"role":"user","content":"\ud800x"}]}"""),
            ("v1/jobs", """{"preset":"tiny","dataset":"text","documents":["ok","\udfff"]}"""),
            ("v1/completions", """{"model":"tiny","prompt":"a","prompt":"b"}"""),
            ("v1/completions", new string('[', 100) + new string(']', 100)),
            ("v1/completions", """{"model":"tiny","prompt":"a","x":""" + new string('[', 70) + new string(']', 70) + "}"),
        })
        {
            var (status, text) = await Send(http, Post(path, body));
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.DoesNotContain("   at ", text);   // no stack trace
        }
        using var unknown = await http.GetAsync("v1/nothing-here", Cancel);
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
        Assert.Equal("not_found", ErrorCode(await unknown.Content.ReadAsStringAsync(Cancel)));
        using var wrongMethod = await http.GetAsync("v1/completions", Cancel);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, wrongMethod.StatusCode);
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(await wrongMethod.Content.ReadAsStringAsync(Cancel)).RootElement.GetProperty("error").ValueKind);
    }

    /// <summary>A grain factory standing for a cluster whose silos cannot be reached: every grain call fails as Orleans fails it.</summary>
    public class UnreachableCluster : DispatchProxy
    {
        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args) =>
            throw new SiloUnavailableException("no silo answers (test)");
    }

    [Fact]
    public async Task AnUnreachableClusterIs503WithRetryAfterAndNoDetail()
    {
        await using var gateway = await GatewayHost.StartAsync(DispatchProxy.Create<IGrainFactory, UnreachableCluster>());
        using var http = gateway.Http();
        using var status = await http.GetAsync("v1/jobs/job-1", Cancel);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, status.StatusCode);
        Assert.NotNull(status.Headers.RetryAfter);
        string body = await status.Content.ReadAsStringAsync(Cancel);
        Assert.Equal("cluster_unavailable", ErrorCode(body));
        Assert.DoesNotContain("test", body);   // the exception's own text stays in the log
        using var completion = await http.SendAsync(Post("v1/completions", """{"model":"tiny","prompt":"a"}"""), Cancel);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, completion.StatusCode);
        using var ready = await http.GetAsync("ready", Cancel);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
        Assert.Equal("""{"status":"cluster unavailable"}""", await ready.Content.ReadAsStringAsync(Cancel));
    }

    [Fact]
    public async Task JobPathsOutsideTheModelRootsAre403AndShowNoBytes()
    {
        string secret = Path.Combine(Path.GetTempPath(), "cluster-secret-" + Guid.NewGuid().ToString("N"));
        File.WriteAllText(secret, "TOP-SECRET-MARKER " + new string('x', 64));
        string models = Path.Combine(TrainingRoot, "jobs", "uploaded-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(models);
        File.CreateSymbolicLink(Path.Combine(models, "link.bin"), secret);
        Directory.CreateSymbolicLink(Path.Combine(models, "outside"), Path.GetTempPath());
        File.WriteAllText(Path.Combine(models, "notes.txt"), "not a model");
        try
        {
            await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
            using var http = gateway.Http();
            string relative = Path.GetRelativePath(Directory.GetCurrentDirectory(), secret);
            string[] refused =
            [
                secret, "/etc/passwd", relative, $"{models}/../../../../../../{secret}", $"{models}/link.bin", $"{models}/outside/{Path.GetFileName(secret)}",
                $"{models}/./outside/../outside/{Path.GetFileName(secret)}", $"{models}//..//..//..//..//..//etc//passwd", "/proc/self/environ", "~/.ssh/id_rsa",
            ];
            foreach (string path in refused)
                foreach (string field in new[] { "model_path", "tokenizer_path" })
                {
                    string spec = JsonSerializer.Serialize(new Dictionary<string, object>
                    {
                        ["model_path"] = field == "model_path" ? path : Path.Combine(models, "notes.txt"), ["tokenizer_path"] = path, ["steps"] = 1,
                    });
                    var (status, body) = await Send(http, Post("v1/jobs", spec));
                    Assert.True(status == HttpStatusCode.Forbidden, $"{(int)status} for {field} {path}: {body}");
                    Assert.Equal("path_not_allowed", ErrorCode(body));
                    Assert.DoesNotContain("SECRET", body);
                    Assert.DoesNotContain("root:", body);
                }
            // Inside a root, a file that is no model is a 400 in words, with none of its bytes.
            var (notModel, notModelBody) = await Send(http, Post("v1/jobs", JsonSerializer.Serialize(new { model_path = Path.Combine(models, "notes.txt"), steps = 1 })));
            Assert.Equal(HttpStatusCode.BadRequest, notModel);
            Assert.Contains("not a model this cluster reads", notModelBody);
            Assert.DoesNotContain("not a model\"", notModelBody.Replace("not a model this", ""));
        }
        finally
        {
            Directory.Delete(models, recursive: true);
            File.Delete(secret);
        }
    }

    [Fact]
    public async Task JobsCannotTakeAServedModelIdWithoutAdminReplace()
    {
        await fixture.Cluster.Client.GetGrain<IInferenceSchedulerGrain>("tiny").Serve(new ModelServing(TestClusters.Tiny));
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client, RoleKeys);
        using var http = gateway.Http();
        const string takeTiny = """{"preset":"tiny","steps":1,"batch_size":1,"serve_as":"tiny"}""";
        var (taken, body) = await Send(http, Post("v1/jobs", takeTiny, "train-key"));
        Assert.Equal(HttpStatusCode.Conflict, taken);
        Assert.Equal("model_id_taken", ErrorCode(body));
        const string replaceTiny = """{"preset":"tiny","steps":1,"batch_size":1,"serve_as":"tiny","replace":true}""";
        Assert.Equal(HttpStatusCode.Forbidden, (await Send(http, Post("v1/jobs", replaceTiny, "both-key"))).Status);
    }

    [Fact]
    public async Task JobsThatCannotFitAreRefusedWithTheEstimate()
    {
        await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
        using var http = gateway.Http();
        var (huge, body) = await Send(http, Post("v1/jobs", """{"preset":"stories110M","steps":1,"batch_size":4096,"sequence_length":65536}"""));
        Assert.Equal(HttpStatusCode.BadRequest, huge);
        Assert.Contains("needs about", body);
        Assert.Contains("GiB", body);
        var (layout, layoutBody) = await Send(http, Post("v1/jobs", """{"preset":"tiny","steps":1,"batch_size":1024,"layout":"tp=1024,pp=1024"}"""));
        Assert.Equal(HttpStatusCode.BadRequest, layout);
        Assert.Contains("does not fit", layoutBody);
    }
}
