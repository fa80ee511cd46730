// StopSequences alone: a stop string split over pieces is held back and cut, the earliest of several wins, a held
// prefix that does not complete a stop string is sent later, a stop string that overlaps itself is found, and the held
// text never outgrows the longest stop string.
using Cluster.Gateway;

namespace Cluster.Tests.Gateway;

public sealed class StopSequencesTests
{
    [Fact]
    public void AStopStringSplitOverPiecesIsNeverSent()
    {
        var stops = new StopSequences(["END", "\n\n"]);
        Assert.Equal("Once up", stops.Add("Once up"));
        Assert.Equal("on a time ", stops.Add("on a time E"));   // "E" may start "END": held
        Assert.Equal("", stops.Add("N"));
        Assert.Equal("", stops.Add("D and more"));
        Assert.True(stops.Stopped);
        Assert.Equal("", stops.Add("after the stop"));
    }

    [Fact]
    public void TheEarliestStopStringWinsAndAHeldPrefixThatFailsIsSent()
    {
        var earliest = new StopSequences(["sat", "cat sat"]);
        Assert.Equal("a ", earliest.Add("a cat sat down"));   // "cat sat" begins before "sat"
        Assert.True(earliest.Stopped);

        var stops = new StopSequences(["cat", "at the"]);
        Assert.Equal("look ", stops.Add("look a"));           // "a" may begin "at the": held
        Assert.Equal("ax", stops.Add("x"));                   // "ax" begins neither: sent
        Assert.False(stops.Stopped);
    }

    [Fact]
    public void WithoutAStopStringEverythingIsSentAndTheHeldTailFlushed()
    {
        var stops = new StopSequences(["xyz"]);
        Assert.Equal("abc", stops.Add("abcxy"));
        Assert.Equal("xy", stops.Flush());
        Assert.False(stops.Stopped);
        var none = new StopSequences([]);
        Assert.Equal("anything", none.Add("anything"));
    }

    [Fact]
    public void AStopStringThatOverlapsItselfIsFound()
    {
        var stops = new StopSequences(["abab c"]);
        Assert.Equal("xab", stops.Add("xababa"));   // the text ends with "aba", which may still begin "abab c"
        Assert.Equal("", stops.Add("b c!"));        // "xababab c": the stop string begins at its fourth character
        Assert.True(stops.Stopped);
    }

    [Fact]
    public void TheHeldTextNeverOutgrowsTheLongestStopString()
    {
        var stops = new StopSequences(["aaaaab"]);
        int sent = 0;
        for (int i = 0; i < 1000; i++) sent += stops.Add("a").Length;
        Assert.Equal(1000 - 5, sent);   // 5 a's held: they could still begin "aaaaab"
        Assert.Equal("aaaaa", stops.Flush());
    }
}
