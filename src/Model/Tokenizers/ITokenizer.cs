namespace Cluster.Model.Tokenizers;

/// <summary>Text ↔ token ids for one model's vocabulary.</summary>
public interface ITokenizer
{
    int VocabSize { get; }
    int BosId { get; }
    int EosId { get; }
    /// <summary>Token ids of <paramref name="text"/>, with BOS first when <paramref name="addBos"/>.</summary>
    int[] Encode(string text, bool addBos);
    /// <summary>The bytes token <paramref name="token"/> stands for, as it follows <paramref name="previous"/> (llama2.c strips the space after BOS).</summary>
    byte[] DecodeBytes(int previous, int token);
}
