// Cluster.Gateway: an OpenAI-compatible HTTP front end. It joins the cluster as an Orleans client and maps the
// /v1 endpoints (OpenAI-compatible inference, training jobs), the readiness probe and the Orleans dashboard (/dashboard),
// behind the pipeline in GatewayPipeline (API keys and roles, allowed hosts, JSON bodies, errors without internals).
using Cluster.Gateway;
using Cluster.ServiceDefaults;
using Orleans.Dashboard;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
var certificate = ClusterTransportSecurity.Require(builder.Configuration);
builder.UseOrleansClient(client =>
{
    client.UseClusterClustering(builder.Configuration).AddActivityPropagation().AddDashboard();
    if (certificate is not null) client.UseTls(certificate, o => ClusterTransportSecurity.Configure(o, certificate));
});
// Kestrel listens while the Orleans client is still connecting (it retries until a silo answers): /health answers
// and /ready says 503 "cluster unavailable" instead of the port refusing connections until the cluster is up.
builder.Services.Configure<HostOptions>(o => o.ServicesStartConcurrently = true);
builder.Services.AddGateway(builder.Configuration, ApiKeys.FromConfiguration(builder.Configuration, builder.Environment));
var app = builder.Build();
app.UseGateway();
app.MapOrleansDashboard(routePrefix: "/dashboard");
await app.RunAsync();
