// An error answered in the OpenAI error shape: {"error":{"message","type","param","code"}}. Errors that say "come back
// later" (429, 503) carry a Retry-After in seconds.
namespace Cluster.Gateway;

public sealed class ApiError(int status, string message, string? param = null, string? code = null,
    string type = "invalid_request_error", int? retryAfterSeconds = null) : Exception(message)
{
    public int Status => status;

    public object Body => new { error = new { message = Message, type, param, code } };

    public static ApiError Unavailable(string message, string code = "cluster_unavailable", int retryAfterSeconds = 5) =>
        new(StatusCodes.Status503ServiceUnavailable, message, code: code, type: "server_error", retryAfterSeconds: retryAfterSeconds);

    public Task WriteAsync(HttpResponse response)
    {
        response.StatusCode = status;
        if (retryAfterSeconds is { } seconds) response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return response.WriteAsJsonAsync(Body);
    }
}
