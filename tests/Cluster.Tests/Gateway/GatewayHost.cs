// The real gateway endpoints on Kestrel at a free 127.0.0.1 port, answering from an in-process test cluster's client.
using Cluster.Gateway;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Cluster.Tests.Gateway;

public sealed class GatewayHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    public Uri BaseAddress { get; }

    private GatewayHost(WebApplication app, Uri baseAddress) => (_app, BaseAddress) = (app, baseAddress);

    /// <param name="apiKeys">Keys with every role (none: an open gateway).</param>
    public static Task<GatewayHost> StartAsync(IGrainFactory grains, params string[] apiKeys) =>
        StartAsync(grains, new ApiKeys(apiKeys));

    public static async Task<GatewayHost> StartAsync(IGrainFactory grains, ApiKeys keys, string? allowedHosts = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        if (allowedHosts is not null) builder.Configuration["AllowedHosts"] = allowedHosts;
        builder.Services.AddSingleton(grains);
        builder.Services.AddGateway(builder.Configuration, keys);
        var app = builder.Build();
        app.UseGateway();
        await app.StartAsync();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new GatewayHost(app, new Uri(address));
    }

    public HttpClient Http() => new() { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(30) };

    public async ValueTask DisposeAsync() => await _app.DisposeAsync();
}
