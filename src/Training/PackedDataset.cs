// Training data as fixed-length sequences: tokenized documents in a seeded shuffled order per epoch, packed whole
// into sequences of T tokens with document ids (attention never crosses them, positions restart) and next-token
// targets that never reach into the next document and count only where the document says its tokens are learned;
// the rest of a sequence is padding that counts for nothing.
// A cursor (epoch, position in the epoch's order) says where the next batch starts, so a run resumes exactly.
using Cluster.Compute.Cpu;

namespace Cluster.Training;

public readonly record struct DataCursor(int Epoch, int Position);

public sealed class PackedDataset
{
    private readonly TrainingDocument[] _documents;

    /// <param name="documents">Tokenized documents (BOS first if the model expects one); longer than the sequence length are cut.</param>
    public PackedDataset(IEnumerable<TrainingDocument> documents, int sequenceLength, int seed, int padToken = 0)
    {
        if (sequenceLength < 2) throw new ArgumentOutOfRangeException(nameof(sequenceLength), sequenceLength, "sequences need at least 2 tokens");
        _documents = [.. documents.Where(d => d.Tokens.Length >= 2).Select(d => d.Tokens.Length > sequenceLength
            ? new TrainingDocument(d.Tokens[..sequenceLength], d.Learned?[..sequenceLength]) : d)];
        if (_documents.Length == 0) throw new ArgumentException("the dataset has no document of 2 tokens or more", nameof(documents));
        if (_documents.Any(d => d.Learned is { } l && l.Length != d.Tokens.Length)) throw new ArgumentException("a document's learned mask must give one flag per token", nameof(documents));
        SequenceLength = sequenceLength;
        Seed = seed;
        PadToken = padToken;
    }

    public int SequenceLength { get; }
    public int Seed { get; }
    public int PadToken { get; }
    public int Documents => _documents.Length;

    /// <summary>The next <paramref name="sequences"/> packed sequences from <paramref name="cursor"/>, and the cursor after them.</summary>
    public (TrainingSequence[] Batch, DataCursor Next) Take(int sequences, DataCursor cursor)
    {
        var batch = new TrainingSequence[sequences];
        for (int i = 0; i < sequences; i++) (batch[i], cursor) = Pack(cursor);
        return (batch, cursor);
    }

    private (TrainingSequence, DataCursor) Pack(DataCursor cursor)
    {
        int T = SequenceLength;
        var tokens = new int[T];
        var targets = new int[T];
        var documents = new int[T];
        int filled = 0, document = 0;
        while (true)
        {
            if (cursor.Position == _documents.Length) cursor = new DataCursor(cursor.Epoch + 1, 0);
            var (next, learned) = _documents[Order(cursor.Epoch)[cursor.Position]];
            if (filled + next.Length > T && filled > 0) break;   // whole documents only: it starts the next sequence
            for (int i = 0; i < next.Length; i++)
            {
                tokens[filled + i] = next[i];
                targets[filled + i] = i + 1 < next.Length && (learned?[i + 1] ?? true) ? next[i + 1] : CrossEntropy.Ignore;
                documents[filled + i] = document;
            }
            filled += next.Length;
            document++;
            cursor = cursor with { Position = cursor.Position + 1 };
            if (filled == T) break;
        }
        for (int t = filled; t < T; t++)
        {
            tokens[t] = PadToken;
            targets[t] = CrossEntropy.Ignore;
            documents[t] = document;   // padding is a document of its own: nothing attends to it
        }
        return (new TrainingSequence(tokens, targets, documents), cursor);
    }

    private int[] _order = [];
    private int _orderEpoch = -1;

    /// <summary>Epoch <paramref name="epoch"/>'s document order: a Fisher-Yates shuffle seeded by (seed, epoch).</summary>
    private int[] Order(int epoch)
    {
        if (_orderEpoch == epoch) return _order;
        var order = Enumerable.Range(0, _documents.Length).ToArray();
        var rng = new Random(unchecked(Seed * 1_000_003 + epoch) & int.MaxValue);   // seeded System.Random is stable across runs
        for (int i = order.Length - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        _orderEpoch = epoch;
        return _order = order;
    }
}
