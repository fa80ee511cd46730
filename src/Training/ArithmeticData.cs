// A dataset the project makes itself: additions written as text ("23+19=42"), for the training demo and tests.
namespace Cluster.Training;

public static class ArithmeticData
{
    /// <summary><paramref name="count"/> seeded problems "a+b=c" with operands below <paramref name="limit"/>.</summary>
    public static string[] Additions(int count, int seed, int limit = 100)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ =>
        {
            int a = rng.Next(limit), b = rng.Next(limit);
            return $"{a}+{b}={a + b}";
        })];
    }
}
