// Cluster.Gateway: an OpenAI-compatible HTTP front end. It joins the cluster as an Orleans client and maps the
// /v1 endpoints and the readiness probe.
using Cluster.Gateway;

var builder = WebApplication.CreateBuilder(args);
builder.UseOrleansClient(client => client.UseClusterClustering(builder.Configuration));
var app = builder.Build();
app.MapOpenAi();
app.MapReadiness();
await app.RunAsync();
