// Cluster.Gateway: an OpenAI-compatible HTTP front end. It joins the cluster as an Orleans client and maps the
// /v1 endpoints (OpenAI-compatible inference, training jobs), the readiness probe and the Orleans dashboard (/dashboard).
using Cluster.Gateway;
using Cluster.ServiceDefaults;
using Orleans.Dashboard;

var builder = WebApplication.CreateBuilder(args);
builder.Services.AddClusterTelemetry(builder.Configuration);
builder.Services.AddClusteringConnections(builder.Configuration);
builder.UseOrleansClient(client => client.UseClusterClustering(builder.Configuration).AddActivityPropagation().AddDashboard());
var apiKeys = ApiKeys.FromConfiguration(builder.Configuration, builder.Environment);
var app = builder.Build();
app.UseApiKeys(apiKeys);
app.MapOpenAi();
app.MapJobs();
app.MapReadiness();
app.MapOrleansDashboard(routePrefix: "/dashboard");
await app.RunAsync();
