// Self-signed cluster certificates for TLS tests, made in memory (what infra/README.md's openssl command makes).
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Cluster.Tests;

public static class TestCertificates
{
    /// <summary>A self-signed RSA certificate for <paramref name="name"/>, usable for TLS server and client authentication.</summary>
    public static X509Certificate2 Cluster(string name)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName(name);
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], critical: false));   // server and client authentication
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        return X509CertificateLoader.LoadPkcs12(certificate.Export(X509ContentType.Pkcs12), null);   // with its private key usable by SslStream
    }

    /// <summary>The certificate as a password-protected PKCS#12 file's bytes.</summary>
    public static byte[] ClusterPfx(string name, string password)
    {
        using var certificate = Cluster(name);
        return certificate.Export(X509ContentType.Pkcs12, password);
    }
}
