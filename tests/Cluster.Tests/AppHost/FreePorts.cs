// Loopback ports for tests that start processes with fixed ports: a block of consecutive ones (the app host gives silo i
// the base port + i), each checked free by binding it.
using System.Net;
using System.Net.Sockets;

namespace Cluster.Tests.AppHost;

public static class FreePorts
{
    /// <summary><paramref name="count"/> consecutive ports, free when checked.</summary>
    public static int[] Take(int count)
    {
        for (int attempt = 0; attempt < 200; attempt++)
        {
            int first = Random.Shared.Next(20_000, 60_000 - count);
            var listeners = new List<TcpListener>();
            try
            {
                for (int port = first; port < first + count; port++)
                {
                    var listener = new TcpListener(IPAddress.Loopback, port);
                    listener.Start();
                    listeners.Add(listener);
                }
                return [.. Enumerable.Range(first, count)];
            }
            catch (SocketException) { }
            finally
            {
                foreach (var listener in listeners) listener.Stop();
            }
        }
        throw new InvalidOperationException($"no {count} consecutive free loopback ports found");
    }
}
