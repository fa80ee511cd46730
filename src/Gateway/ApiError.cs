// An error answered in the OpenAI error shape: {"error":{"message","type","param","code"}}.
namespace Cluster.Gateway;

public sealed class ApiError(int status, string message, string? param = null, string? code = null,
    string type = "invalid_request_error") : Exception(message)
{
    public int Status => status;

    public object Body => new { error = new { message = Message, type, param, code } };

    public Task WriteAsync(HttpResponse response)
    {
        response.StatusCode = status;
        return response.WriteAsJsonAsync(Body);
    }
}
