// A hostile client against a running gateway: over 500 requests of path traversal spellings and symlinks out of
// the model roots, wrong content types and encodings, oversized and deep bodies, numeric extremes, duplicate names and
// ids of every length. None may answer 500, none may carry a byte of a file outside the model roots, and afterwards a
// normal completion still works and every KV block of the model is free.
using System.Net;
using System.Text;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Grains;
using Cluster.Tests.Grains;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Cluster.Tests.Gateway;

[Collection(nameof(ClusterCollection))]
public sealed class HostileInputTests(ClusterFixture fixture)
{
    private const string Marker = "HOSTILE-SECRET-7f3a";

    [Fact]
    public async Task HundredsOfHostileRequestsGetNo500AndLeakNothing()
    {
        var cancel = TestContext.Current.CancellationToken;
        await fixture.Cluster.Client.GetGrain<IInferenceSchedulerGrain>("hostile").Serve(new ModelServing(TestClusters.Tiny));
        string root = Path.Combine(fixture.Cluster.GetSiloServiceProvider(fixture.Cluster.Silos[0].SiloAddress)
            .GetRequiredService<IOptions<TrainingOptions>>().Value.Root, "jobs", "hostile-" + Guid.NewGuid().ToString("N")[..8]);
        string secret = Path.Combine(Path.GetTempPath(), "cluster-hostile-" + Guid.NewGuid().ToString("N"));
        File.WriteAllText(secret, Marker + " " + Marker);
        Directory.CreateDirectory(root);
        File.CreateSymbolicLink(Path.Combine(root, "model.gguf"), secret);
        Directory.CreateSymbolicLink(Path.Combine(root, "tmp"), Path.GetTempPath());
        try
        {
            await using var gateway = await GatewayHost.StartAsync(fixture.Cluster.Client);
            using var http = gateway.Http();
            var requests = Requests(root, secret).ToList();
            Assert.True(requests.Count >= 500, $"only {requests.Count} requests");
            foreach (var (method, path, body, contentType) in requests)
            {
                using var request = new HttpRequestMessage(new HttpMethod(method), path);
                if (body is not null)
                {
                    request.Content = new ByteArrayContent(body);
                    request.Content.Headers.Remove("Content-Type");
                    if (contentType is not null) request.Content.Headers.TryAddWithoutValidation("Content-Type", contentType);
                }
                using var response = await http.SendAsync(request, cancel);
                string text = await response.Content.ReadAsStringAsync(cancel);
                string shown = $"{method} {path} {(body is null ? "" : Encoding.UTF8.GetString(body[..Math.Min(body.Length, 160)]))}";
                Assert.True((int)response.StatusCode < 500, $"{(int)response.StatusCode} for {shown}: {text[..Math.Min(text.Length, 300)]}");
                Assert.DoesNotContain(Marker, text);
                Assert.DoesNotContain("root:x:0:0", text);
            }

            using var ok = await http.PostAsync("v1/completions",
                new StringContent("""{"model":"hostile","prompt":"Once upon a time","max_tokens":8,"temperature":0}""", Encoding.UTF8, "application/json"), cancel);
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
            var shard = await TestClusters.WaitForAllBlocksFreeAsync(fixture.Cluster.Client.GetGrain<IShardGrain>(ShardKey.Create("hostile", 0, 0, 0)));
            Assert.Equal(shard.TotalKvBlocks, shard.FreeKvBlocks);
            Assert.Equal(0, shard.ActiveSequences);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
            File.Delete(secret);
        }
    }

    private static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);

    private static byte[] Json(object value) => JsonSerializer.SerializeToUtf8Bytes(value);

    private static IEnumerable<(string Method, string Path, byte[]? Body, string? ContentType)> Requests(string root, string secret)
    {
        const string json = "application/json";
        string name = Path.GetFileName(secret);
        string[] paths =
        [
            secret, "/etc/passwd", "/etc/shadow", "/proc/self/environ", "/proc/self/cmdline", "/dev/zero", "/dev/urandom", "/", ".", "..", "",
            "../../../../etc/passwd", "..\\..\\..\\etc\\passwd", "%2e%2e/%2e%2e/etc/passwd", "....//....//etc/passwd", "/etc/passwd\0.gguf",
            $"{root}/../../../../../../etc/passwd", $"{root}/model.gguf", $"{root}/tmp/{name}", $"{root}/tmp/../tmp/{name}", $"{root}/./tmp/./{name}",
            $"{root}//tmp//{name}", $"{root}/tmp/", $"{root}/nothing.gguf", root, "~/.ssh/id_rsa", "file:///etc/passwd", "\\\\server\\share\\model",
            new string('a', 5000), new string('/', 300), "/" + string.Join("/", Enumerable.Repeat("..", 200)) + "/etc/passwd", "\u202e/etc/passwd", "C:\\Windows\\win.ini",
        ];
        foreach (string p in paths)
        {
            yield return ("POST", "v1/jobs", Json(new { model_path = p, steps = 1 }), json);
            yield return ("POST", "v1/jobs", Json(new { model_path = $"{root}/model.gguf", tokenizer_path = p, steps = 1 }), json);
            yield return ("POST", "v1/jobs", Json(new { preset = "tiny", tokenizer_path = p, model_path = p }), json);
        }
        byte[] completion = Utf8("""{"model":"hostile","prompt":"a","max_tokens":2}""");
        foreach (string? type in new[] { null, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b", "application/xml",
                     "application/json; charset=latin1", "application/json; charset=utf-16", "text/json", "*/*", "application/jsonx", "application/json;;" })
        {
            yield return ("POST", "v1/completions", completion, type);
            yield return ("POST", "v1/jobs", Utf8("""{"preset":"tiny","steps":1}"""), type);
        }
        byte[][] encodings =
        [
            [0xFF, 0xFE, (byte)'{', 0, (byte)'}', 0], [0xEF, 0xBB, 0xBF, .. completion], [.. "{\"model\":\"hostile\",\"prompt\":\""u8, 0xC0, 0xAF, .. "\"}"u8],
            [.. "{\"model\":\"hostile\",\"prompt\":\""u8, 0xED, 0xA0, 0x80, .. "\"}"u8], [.. "{\"model\":\"hostile\",\"prompt\":\""u8, 0xF8, 0x88, 0x80, 0x80, 0x80, .. "\"}"u8],
            Utf8("""{"model":"hostile","prompt":"\ud800"}"""), Utf8("""{"model":"hostile","prompt":"\udc00\ud800"}"""), Utf8("{\"model\":\"hostile\",\"prompt\":\"a\u0000b\"}"),
            Utf8("""{"model":"hostile","prompt":"\u0000"}"""), [0, 0, 0, 0], Utf8("\u0000{}"),
        ];
        foreach (byte[] body in encodings) yield return ("POST", "v1/completions", body, json);
        foreach (int size in new[] { 0, 1, 1 << 10, 1 << 16, (1 << 20) - 64, (1 << 20) + 1 })
            yield return ("POST", "v1/completions", Utf8("{\"model\":\"hostile\",\"prompt\":\"" + new string('x', Math.Max(0, size - 40)) + "\"}"), json);
        foreach (int depth in new[] { 10, 63, 64, 65, 1000, 100_000 })
        {
            yield return ("POST", "v1/completions", Utf8(new string('[', depth) + new string(']', depth)), json);
            yield return ("POST", "v1/jobs", Utf8("{\"preset\":\"tiny\",\"documents\":" + new string('[', depth) + new string(']', depth) + "}"), json);
        }
        string[] numbers = ["0", "-0", "-1", "1e308", "-1e308", "1e-320", "2147483648", "-2147483649", "9223372036854775808", "1.5", "NaN", "Infinity",
            "\"1\"", "true", "null", "[]", "{}", "0x10", "1e400", "00"];
        foreach (string field in new[] { "max_tokens", "temperature", "top_p", "top_k", "seed", "n" })
            foreach (string number in numbers)
                yield return ("POST", "v1/completions", Utf8($"{{\"model\":\"hostile\",\"prompt\":\"a\",\"{field}\":{number}}}"), json);
        foreach (string field in new[] { "steps", "batch_size", "sequence_length", "learning_rate", "micro_batches", "zero_stage", "checkpoint_every" })
            foreach (string number in numbers.Take(12))
                yield return ("POST", "v1/jobs", Utf8($"{{\"preset\":\"tiny\",\"{field}\":{number}}}"), json);
        yield return ("POST", "v1/completions", Utf8("""{"model":"hostile","model":"other","prompt":"a"}"""), json);
        yield return ("POST", "v1/jobs", Utf8("""{"preset":"tiny","preset":"stories110M"}"""), json);
        yield return ("POST", "v1/jobs", Utf8("""{"preset":"tiny","layout":"tp=1024,pp=1024,dp=1024"}"""), json);
        yield return ("POST", "v1/jobs", Utf8("""{"preset":"tiny","layout":"dp=1024","batch_size":4096}"""), json);
        yield return ("POST", "v1/jobs", Utf8("""{"preset":"tiny","serve_as":"hostile"}"""), json);
        yield return ("POST", "v1/jobs", Utf8("""{"preset":"tiny","serve_as":"../../x"}"""), json);
        foreach (int length in new[] { 0, 1, 2, 7, 36, 64, 128, 129, 255, 256, 1000, 4000 })
            foreach (char c in "a%./\\")
            {
                string id = new string(c, length);
                yield return ("GET", $"v1/jobs/{Uri.EscapeDataString(id)}", null, null);
                yield return ("GET", $"v1/jobs/{Uri.EscapeDataString(id)}/events", null, null);
                yield return ("POST", "v1/completions", Json(new { model = id, prompt = "a", max_tokens = 1 }), json);
            }
    }
}
