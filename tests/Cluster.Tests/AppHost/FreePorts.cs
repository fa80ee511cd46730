// Loopback ports for tests that start processes with fixed ports: a block of consecutive ones (the app host gives silo i
// the base port + i), each checked free by binding it, and chosen outside the kernel's ephemeral range: a port in that
// range can be taken, between the check and the process binding it, as the local end of any outgoing connection.
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
            int first = Random.Shared.Next(Outside.From, Outside.To - count);
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

    /// <summary>
    /// Ports clear of the range the kernel hands out for outgoing connections (Linux's 32768-60999 when it cannot be
    /// read): the wider of the gaps below it (from 10000) and above it.
    /// </summary>
    private static (int From, int To) Outside { get; } = EphemeralRange() is var (start, end) && start - 10_000 >= 65_536 - (end + 1)
        ? (10_000, start) : (end + 1, 65_536);

    private static (int Start, int End) EphemeralRange()
    {
        const string path = "/proc/sys/net/ipv4/ip_local_port_range";
        string[] bounds = File.Exists(path) ? File.ReadAllText(path).Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries) : [];
        return bounds.Length == 2 && int.TryParse(bounds[0], out int start) && int.TryParse(bounds[1], out int end) ? (start, end) : (32_768, 60_999);
    }
}
