// Converts Q/K projection rows between the two RoPE pair layouts. Within each head's first rotaryDim rows,
// interleaved pair i is rows (2i, 2i+1); half-split pair i is rows (i, i + rotaryDim/2). This is the permutation
// HF's convert_llama_weights_to_hf.py applies (and llama.cpp's converter undoes); rows past rotaryDim stay put.
namespace Cluster.Model.Formats;

public static class RopePermutation
{
    /// <summary>Rows of w (heads·headDim, cols) reordered from <paramref name="from"/> to <paramref name="to"/> layout.</summary>
    public static float[] Convert(float[] w, int heads, int headDim, int rotaryDim, int cols, Compute.RopeLayout from, Compute.RopeLayout to)
    {
        if (from == to) return w;
        var result = (float[])w.Clone();
        int half = rotaryDim / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                {
                    int interleaved = h * headDim + 2 * i + j, halfSplit = h * headDim + j * half + i;
                    var (src, dst) = to == Compute.RopeLayout.HalfSplit ? (interleaved, halfSplit) : (halfSplit, interleaved);
                    Array.Copy(w, (long)src * cols, result, (long)dst * cols, cols);
                }
        return result;
    }
}
