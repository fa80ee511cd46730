// TLS between silos, and between the gateway (an Orleans client) and the silos: mutual TLS with one cluster
// certificate that every silo and client holds (Cluster:Tls:CertificatePath, a PKCS#12 file with
// Cluster:Tls:CertificatePassword, or a PEM certificate with Cluster:Tls:KeyPath). Each side presents it and accepts
// only a peer presenting the very same certificate (pinned, so a self-signed one needs no CA and a certificate from
// anyone else, even a publicly trusted one, is refused). Without TLS anything that reaches the ports could call any
// grain, so a process whose clustering is not localhost refuses to start without a certificate unless
// Cluster:AllowInsecureCluster is true. infra/README.md says how to make one.
using System.Net;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Configuration;
using Orleans.Connections.Security;

namespace Cluster.ServiceDefaults;

public static class ClusterTransportSecurity
{
    /// <summary>The cluster certificate from configuration, or null when none is configured.</summary>
    public static X509Certificate2? Certificate(IConfiguration config)
    {
        if (config["Cluster:Tls:CertificatePath"] is not { Length: > 0 } path) return null;
        try
        {
            return config["Cluster:Tls:KeyPath"] is { Length: > 0 } keyPath
                ? X509Certificate2.CreateFromPemFile(path, keyPath)
                : X509CertificateLoader.LoadPkcs12FromFile(path, config["Cluster:Tls:CertificatePassword"]);
        }
        catch (Exception e) when (e is System.Security.Cryptography.CryptographicException or IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"Cluster:Tls:CertificatePath '{path}' cannot be loaded: {e.Message}", e);
        }
    }

    /// <summary>
    /// The certificate to use, or null for plain TCP, which is allowed only for clustering confined to this machine
    /// (<see cref="IsLoopbackOnly"/>) or with Cluster:AllowInsecureCluster=true; otherwise start-up stops with a message saying so.
    /// </summary>
    public static X509Certificate2? Require(IConfiguration config)
    {
        var certificate = Certificate(config);
        if (certificate is null && !IsLoopbackOnly(config) && !config.GetValue("Cluster:AllowInsecureCluster", false))
            throw new InvalidOperationException(
                "clustering is not localhost but no cluster certificate is configured: set Cluster__Tls__CertificatePath (see infra/README.md), " +
                "or Cluster__AllowInsecureCluster=true to run without TLS on a network you trust");
        return certificate;
    }

    /// <summary>
    /// True when every address the process clusters over is loopback: localhost clustering (no provider configured), or
    /// Aspire's "Development" provider with a loopback advertised address (silos) and loopback gateways (clients), as the
    /// app host configures it. Anything else (Redis, ADO.NET, a routable address) can be reached from the network.
    /// </summary>
    public static bool IsLoopbackOnly(IConfiguration config)
    {
        string? provider = config["Orleans:Clustering:ProviderType"];
        if (string.IsNullOrEmpty(provider)) return true;
        if (!string.Equals(provider, "Development", StringComparison.OrdinalIgnoreCase)) return false;
        string?[] addresses = [config["Orleans:Endpoints:AdvertisedIPAddress"], config["Orleans:Clustering:PrimarySiloEndPoint"],
            .. config.GetSection("Orleans:Clustering:Gateways").GetChildren().Select(g => g.Value)];
        var named = addresses.Where(a => !string.IsNullOrEmpty(a)).ToArray();
        // IPEndPoint.TryParse takes an address with or without a port.
        return named.Length > 0 && named.All(a => IPEndPoint.TryParse(a!, out var endpoint) && IPAddress.IsLoopback(endpoint.Address));
    }

    /// <summary>Mutual TLS pinned to the cluster certificate.</summary>
    public static void Configure(TlsOptions options, X509Certificate2 certificate)
    {
        options.LocalCertificate = certificate;
        options.RemoteCertificateMode = RemoteCertificateMode.RequireCertificate;
        options.ClientCertificateMode = RemoteCertificateMode.RequireCertificate;
        options.RemoteCertificateValidation = (remote, _, _) => remote.RawData.AsSpan().SequenceEqual(certificate.RawData);
        string host = certificate.GetNameInfo(X509NameType.SimpleName, forIssuer: false);
        options.OnAuthenticateAsClient = (_, ssl) => ssl.TargetHost = host;
    }
}
