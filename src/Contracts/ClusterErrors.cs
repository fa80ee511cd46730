// The errors grains answer that the gateway turns into HTTP statuses: each says in words what is wrong and never
// carries file contents or internal detail (that goes to the silo's log).
namespace Cluster.Contracts;

/// <summary>The model's pipeline could not be brought back within the failover timeout (the gateway answers 503).</summary>
[GenerateSerializer]
public sealed class ModelUnavailableException(string message) : Exception(message);

/// <summary>No model of that id is served (the gateway answers 404).</summary>
[GenerateSerializer]
public sealed class ModelNotServedException(string message) : Exception(message);

/// <summary>The model's waiting queue is full (the gateway answers 429 with Retry-After).</summary>
[GenerateSerializer]
public sealed class ModelOverloadedException(string message, int retryAfterSeconds) : Exception(message)
{
    [Id(0)] public int RetryAfterSeconds { get; } = retryAfterSeconds;
}

/// <summary>A path named through the API lies outside the cluster's model roots (the gateway answers 403).</summary>
[GenerateSerializer]
public sealed class ModelAccessDeniedException(string message) : Exception(message);

/// <summary>A model id is taken and the request may not replace it (the gateway answers 409).</summary>
[GenerateSerializer]
public sealed class ModelIdTakenException(string message) : Exception(message);

