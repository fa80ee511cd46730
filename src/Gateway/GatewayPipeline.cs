// The gateway's HTTP pipeline, one place for the host and the tests: error answers, host filtering, API keys and
// roles, JSON-only bodies, then the endpoints. In order:
//   - every failure becomes an OpenAI-style JSON error: the cluster unreachable or timing out is 503 with Retry-After,
//     anything unexpected a 500 that names a request id and nothing else (the detail goes to the log);
//   - Host headers must be one of AllowedHosts (default: the loopback names), so a DNS-rebinding page cannot read answers;
//   - /v1 needs an API key (Bearer) with the route's role: jobs need "train", /v1/cluster "admin", the rest "inference";
//     the Orleans dashboard (/dashboard) needs "admin" whenever keys are configured (Basic auth, the key as password);
//   - a POST body must be declared application/json (415 otherwise), so a web page cannot send one without a CORS preflight;
//   - unknown routes and wrong methods answer 404/405 in the same JSON shape.
using Cluster.Contracts;
using Microsoft.AspNetCore.HostFiltering;

namespace Cluster.Gateway;

public static class GatewayPipeline
{
    private const string RolesItem = "cluster.roles";

    /// <summary>The loopback names a local gateway answers to when AllowedHosts is not configured.</summary>
    public static readonly string[] LoopbackHosts = ["localhost", "127.0.0.1", "[::1]"];

    public static IServiceCollection AddGateway(this IServiceCollection services, IConfiguration config, ApiKeys keys)
    {
        services.AddSingleton(keys);
        services.Configure<HostFilteringOptions>(o =>
        {
            string[] configured = (config["AllowedHosts"] ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            o.AllowedHosts = configured.Length > 0 ? configured : LoopbackHosts;
            o.AllowEmptyHosts = false;
        });
        return services;
    }

    public static WebApplication UseGateway(this WebApplication app)
    {
        app.Use(AnswerFailures);
        app.UseHostFiltering();
        app.UseStatusCodePages(async context =>
        {
            var response = context.HttpContext.Response;
            string message = response.StatusCode switch
            {
                404 => $"No route '{context.HttpContext.Request.Path}'.",
                405 => $"Method {context.HttpContext.Request.Method} is not allowed on '{context.HttpContext.Request.Path}'.",
                _ => $"HTTP {response.StatusCode}.",
            };
            await new ApiError(response.StatusCode, message, code: response.StatusCode == 404 ? "not_found" : null).WriteAsync(response);
        });
        var keys = app.Services.GetRequiredService<ApiKeys>();
        app.Use((context, next) => Authorize(context, next, keys));
        // Until the Orleans client has connected (the host has started), every route but the probes answers 503: a grain
        // call before it would fail with the client's own error ("could not find an implementation"), not "come back later".
        var started = app.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStarted;
        app.Use((context, next) => started.IsCancellationRequested || IsProbe(context.Request.Path) ? next(context)
            : throw ApiError.Unavailable("The gateway has not reached the cluster yet."));
        app.Use(RequireJsonBodies);
        app.MapOpenAi();
        app.MapJobs();
        app.MapReadiness();
        return app;
    }

    /// <summary>The roles of the request's key (every role when keys are not required).</summary>
    public static ApiRoles Roles(this HttpContext context) => context.Items[RolesItem] as ApiRoles? ?? ApiRoles.None;

    private static bool IsProbe(PathString path) =>
        path.StartsWithSegments("/health") || path.StartsWithSegments("/ready");

    private static ApiRoles? RequiredRole(PathString path, bool keysRequired) =>
        path.StartsWithSegments("/v1/jobs") ? ApiRoles.Train
        : path.StartsWithSegments("/v1/cluster") ? ApiRoles.Admin
        : path.StartsWithSegments("/v1") ? ApiRoles.Inference
        : path.StartsWithSegments("/dashboard") && keysRequired ? ApiRoles.Admin
        : null;

    private static async Task Authorize(HttpContext context, RequestDelegate next, ApiKeys keys)
    {
        var roles = keys.RolesOf(context.Request.Headers.Authorization);
        context.Items[RolesItem] = roles ?? ApiRoles.None;
        if (RequiredRole(context.Request.Path, keys.Required) is { } required)
        {
            bool dashboard = context.Request.Path.StartsWithSegments("/dashboard");
            if (roles is null)
            {
                if (dashboard) context.Response.Headers.WWWAuthenticate = "Basic realm=\"Cluster dashboard (API key as password)\"";
                await new ApiError(StatusCodes.Status401Unauthorized, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                    code: "invalid_api_key").WriteAsync(context.Response);
                return;
            }
            if ((roles & required) != required)
            {
                await new ApiError(StatusCodes.Status403Forbidden, $"This API key lacks the '{required.ToString().ToLowerInvariant()}' role that {context.Request.Path} needs.",
                    code: "insufficient_role", type: "permission_error").WriteAsync(context.Response);
                return;
            }
        }
        await next(context);
    }

    private static async Task RequireJsonBodies(HttpContext context, RequestDelegate next)
    {
        var request = context.Request;
        if (HttpMethods.IsPost(request.Method) || HttpMethods.IsPut(request.Method) || HttpMethods.IsPatch(request.Method))
        {
            bool json = Microsoft.Net.Http.Headers.MediaTypeHeaderValue.TryParse(request.ContentType, out var type)
                && type.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)
                && (type.Charset.Length == 0 || type.Charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase));
            if (!json)
            {
                await new ApiError(StatusCodes.Status415UnsupportedMediaType,
                    "Request bodies must be sent with 'Content-Type: application/json' (UTF-8).", code: "unsupported_media_type").WriteAsync(context.Response);
                return;
            }
        }
        await next(context);
    }

    private static async Task AnswerFailures(HttpContext context, RequestDelegate next)
    {
        try
        {
            await next(context);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // the client went away: nobody to answer
        }
        catch (Exception e)
        {
            var error = AsApiError(e, context);
            if (context.Response.HasStarted)
            {
                LogFailure(context, e, error);
                context.Abort();   // a response already under way cannot change its status
                return;
            }
            if (error.Status >= 500) LogFailure(context, e, error);
            context.Response.Clear();
            await error.WriteAsync(context.Response);
        }
    }

    /// <summary>The answer for a failure: grain errors by kind; the cluster unreachable 503; anything else a bare 500.</summary>
    public static ApiError AsApiError(Exception e, HttpContext context) => e switch
    {
        ApiError api => api,
        BadHttpRequestException bad => new ApiError(bad.StatusCode, "The request could not be read: " + bad.Message),
        ArgumentException argument => new ApiError(StatusCodes.Status400BadRequest, argument.Message),   // a grain refusing the request's values
        ModelOverloadedException overloaded => new ApiError(StatusCodes.Status429TooManyRequests, overloaded.Message,
            code: "model_overloaded", type: "rate_limit_error", retryAfterSeconds: overloaded.RetryAfterSeconds),
        ModelUnavailableException unavailable => ApiError.Unavailable(unavailable.Message, "model_unavailable"),
        ModelNotServedException notServed => new ApiError(StatusCodes.Status404NotFound, notServed.Message, "model", "model_not_found"),
        ModelAccessDeniedException denied => new ApiError(StatusCodes.Status403Forbidden, denied.Message, code: "path_not_allowed", type: "permission_error"),
        ModelIdTakenException taken => new ApiError(StatusCodes.Status409Conflict, taken.Message, "serve_as", "model_id_taken"),
        TimeoutException or OperationCanceledException or SiloUnavailableException or OrleansMessageRejectionException
            or Orleans.Runtime.Messaging.ConnectionFailedException or OrleansException =>
            ApiError.Unavailable("The cluster did not answer in time or a silo is unavailable; retry shortly."),
        _ => new ApiError(StatusCodes.Status500InternalServerError, $"Internal error (request {context.TraceIdentifier}); the gateway log has the detail.",
            code: "internal_error", type: "server_error"),
    };

    private static void LogFailure(HttpContext context, Exception e, ApiError answer) =>
        context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("Cluster.Gateway")
            .LogError(e, "{Method} {Path} (request {Request}) failed; answered {Status}", context.Request.Method, context.Request.Path,
                context.TraceIdentifier, answer.Status);
}
