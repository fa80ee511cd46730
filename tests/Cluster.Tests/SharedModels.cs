// Locates ../shared/models (the real stories260K files and reference outputs). Tests that need them
// call Require(), which skips the test with a clear message when the folder is absent.
namespace Cluster.Tests;

public static class SharedModels
{
    public static string? Directory { get; } = Find();

    private static string? Find()
    {
        var env = Environment.GetEnvironmentVariable("CLUSTER_SHARED_MODELS");
        if (!string.IsNullOrEmpty(env) && System.IO.Directory.Exists(env)) return env;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "models");
            if (File.Exists(Path.Combine(candidate, "stories260K.bin"))) return candidate;
        }
        return null;
    }

    /// <summary>The path of a file in shared/models, or a skip when the folder is absent.</summary>
    public static string Require(string relativePath)
    {
        if (Directory is null) Assert.Skip("../shared/models not found (set CLUSTER_SHARED_MODELS or check out shared/ beside the repo): real-model test skipped");
        return Path.Combine(Directory!, relativePath);
    }
}
