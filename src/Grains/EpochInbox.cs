// A collective member's mailboxes by epoch: a peer may start an epoch (and send) before this grain has, so messages
// for a later epoch wait in its mailbox; messages for an ended epoch are dropped, since nobody waits for them.
using Cluster.Compute.Collectives;

namespace Cluster.Grains;

public sealed class EpochInbox
{
    private readonly Dictionary<long, CollectiveMailbox> _mailboxes = [];
    private long _current = long.MinValue;

    /// <summary>Starts <paramref name="epoch"/>: earlier epochs' mailboxes fail and go; returns this epoch's (with what already arrived).</summary>
    public CollectiveMailbox Begin(long epoch, Exception endOfEarlier)
    {
        foreach (long old in _mailboxes.Keys.Where(e => e < epoch).ToList())
        {
            _mailboxes[old].Fail(endOfEarlier);
            _mailboxes.Remove(old);
        }
        _current = epoch;
        return Mailbox(epoch);
    }

    public void Deliver(long epoch, int fromRank, long tag, byte[] data)
    {
        if (epoch < _current) return;
        Mailbox(epoch).Deliver(fromRank, tag, data);
    }

    private CollectiveMailbox Mailbox(long epoch)
    {
        if (!_mailboxes.TryGetValue(epoch, out var mailbox)) _mailboxes[epoch] = mailbox = new CollectiveMailbox();
        return mailbox;
    }
}
