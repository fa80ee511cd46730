// Weight matrices kept in Q8_0 / Q4_0 blocks (QuantizedMatrix) and multiplied as they are: the integer kernel against
// the float64 product of what it multiplies (the dequantized weights and the inputs' Q8_0 values), the blocks against
// ggml's layout as the GGUF codec writes it, and a whole model served in each format.
using Cluster.Compute;
using Cluster.Compute.Cpu;
using Cluster.Model;
using Cluster.Model.Formats;
using Cluster.Tests.Formats;

namespace Cluster.Tests;

public sealed class QuantizedMatrixTests
{
    /// <summary>y = x · Wᵀ in float64 from W's dequantized blocks and x quantized to Q8_0 block by block, as the kernel sees them.</summary>
    private static float[] ExpectedProduct(float[] x, float[] dequantizedW, int m, int n, int k)
    {
        var xq = new float[x.Length];
        var q = new sbyte[BlockQuantizer.Block];
        for (int b = 0; b < x.Length / BlockQuantizer.Block; b++)
        {
            float d = BlockQuantizer.QuantizeQ8_0(x.AsSpan(b * BlockQuantizer.Block, BlockQuantizer.Block), q);
            for (int j = 0; j < BlockQuantizer.Block; j++) xq[b * BlockQuantizer.Block + j] = q[j] * d;
        }
        var y = new float[m * n];
        for (int r = 0; r < m; r++)
            for (int c = 0; c < n; c++)
            {
                double sum = 0;
                for (int i = 0; i < k; i++) sum += (double)xq[r * k + i] * dequantizedW[c * k + i];
                y[r * n + c] = (float)sum;
            }
        return y;
    }

    [Theory]
    [InlineData(WeightFormat.Q8_0, 1, 40, 96, 1)]
    [InlineData(WeightFormat.Q8_0, 7, 33, 288, 2)]    // four rows at once, then three one by one
    [InlineData(WeightFormat.Q8_0, 33, 70, 64, 3)]
    [InlineData(WeightFormat.Q4_0, 1, 40, 96, 1)]
    [InlineData(WeightFormat.Q4_0, 8, 17, 768, 2)]
    [InlineData(WeightFormat.Q4_0, 13, 50, 32, 2)]
    public void TheBlockKernelEqualsTheProductOfWhatItMultiplies(WeightFormat format, int m, int n, int k, int threads)
    {
        using var device = new CpuDevice(threads);
        float[] x = Reference.Random(m * k, seed: m + k), w = Reference.Random(n * k, seed: n * 7 + k);
        x[5] = 0;   // a zero and a block of zeros (scale 0) among the inputs
        Array.Clear(x, 0, Math.Min(x.Length, BlockQuantizer.Block));
        using var xb = device.Upload(x);
        using var matrix = (QuantizedMatrix)device.UploadMatrix(w, n, k, format);
        using var yb = device.Allocate(m * n);
        device.MatMul(xb, matrix, yb, m);
        var y = new float[m * n];
        device.Download(yb, y);

        Assert.True(Reference.MaxRelativeError(y, ExpectedProduct(x, matrix.Dequantize(), m, n, k)) < 1e-5 * Math.Max(1, Math.Sqrt(k) / 4));
        // Against the float product: the error of 8-bit (4-bit) blocks on both sides, small beside the product's scale.
        float[] exact = Reference.MatMul(x, w, m, n, k);
        double worst = y.Zip(exact).Max(p => Math.Abs(p.First - p.Second)) / exact.Max(Math.Abs);
        Assert.True(worst < (format == WeightFormat.Q8_0 ? 0.02 : 0.15), $"{worst:G3} of the product's largest value");
        Assert.Equal(format == WeightFormat.Q8_0 ? n * k + n * k / 32 * 4 : n * k / 2 + n * k / 32 * 4, matrix.Bytes);
    }

    [Theory]
    [InlineData(WeightFormat.Q8_0, TensorType.Q8_0)]
    [InlineData(WeightFormat.Q4_0, TensorType.Q4_0)]
    public void BlocksHoldWhatGgmlsQuantizerWrites(WeightFormat format, TensorType type)
    {
        float[] w = Reference.Random(6 * 64, seed: 3);
        using var matrix = new QuantizedMatrix(w, 6, 64, format);
        var decoded = new float[w.Length];
        TensorCodec.Decode(TensorCodec.Encode(w, type), type, decoded);
        Assert.Equal(decoded, matrix.Dequantize());
        // Blocks read from a file and quantized again are the same blocks (ggml's scale is the block's extreme over 127,
        // or over −8): serving a Q8_0 / Q4_0 GGUF in its own format multiplies exactly the file's values.
        using var again = new QuantizedMatrix(decoded, 6, 64, format);
        Assert.Equal(decoded, again.Dequantize());
    }

    [Fact]
    public void RowsOfPartBlocksAreRefusedOrKeptInFloat()
    {
        Assert.Throws<ArgumentException>(() => new QuantizedMatrix(new float[4 * 172], 4, 172, WeightFormat.Q8_0));
        Assert.Equal(WeightFormat.F32, WeightFormats.For(WeightFormat.Q4_0, 172));
        Assert.Equal(WeightFormat.Q4_0, WeightFormats.For(WeightFormat.Q4_0, 288));
        Assert.Throws<ArgumentException>(() => WeightFormats.Parse("q4_k"));
        Assert.Equal(WeightFormat.Q8_0, WeightFormats.Parse("Q8_0"));
    }

    /// <summary>
    /// A GGUF written with Q8_0 (Q4_0) layers is served in that format by default and multiplies the file's own values:
    /// its logits equal a float32 model of the same dequantized weights up to the inputs' 8-bit rounding, and its layer
    /// matrices take 1.125 (0.625) bytes a weight instead of 4.
    /// </summary>
    [Theory]
    [InlineData(TensorType.Q8_0, WeightFormat.Q8_0, 0.05)]
    [InlineData(TensorType.Q4_0, WeightFormat.Q4_0, 0.05)]
    public void AQuantizedGgufIsServedInItsOwnFormat(TensorType type, WeightFormat expected, double tolerance)
    {
        var model = RandomModel.Create("stories15M", seed: 2) is var big ? big with { Config = big.Config with { Layers = 2 },
            Weights = new ModelWeights { TokenEmbedding = big.Weights.TokenEmbedding, Layers = big.Weights.Layers[..2], FinalNorm = big.Weights.FinalNorm, Output = big.Weights.Output } } : null!;
        using var dir = new TempDirectory();
        string path = dir.File("q.gguf");
        GgufWriter.Write(model, path, type);
        var loaded = ModelLoader.Load(path);
        Assert.Equal(expected, loaded.StoredFormat);
        Assert.Equal(WeightFormat.F32, loaded.ServingFormat("f32"));

        using var device = new CpuDevice(2);
        using var quantized = new TransformerModel(device, loaded.Config, loaded.Weights, loaded.StoredFormat);
        using var float32 = new TransformerModel(device, loaded.Config, loaded.Weights);
        int[] prompt = [1, 200, 3000, 45, 7, 901];
        float[] Logits(TransformerModel m)
        {
            using var cache = m.CreateCache(1, 16, 16);
            return m.Forward([new SequenceChunk(cache.CreateSequence(), prompt)], cache);
        }
        float[] q = Logits(quantized), f = Logits(float32);
        double scale = f.Max(Math.Abs);
        Assert.True(f.Zip(q).Max(p => Math.Abs(p.First - p.Second)) < tolerance * scale, "quantized logits stray from the float32 model's");
        Assert.Equal(Sampler.ArgMax(f), Sampler.ArgMax(q));
        // Every layer matrix (rows of 288 or 768: whole blocks) takes 1 + 4/32 bytes a weight in Q8_0, 1/2 + 4/32 in Q4_0;
        // the embedding table (and the head) 1 + 4/32 in either.
        long layerWeights = loaded.Weights.Layers.Sum(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.W1, l.W2, l.W3! }.Sum(t => (long)t.Length));
        long tableWeights = loaded.Weights.TokenEmbedding.Length + (loaded.Weights.Output?.Length ?? 0);
        double bytesPerWeight = expected == WeightFormat.Q8_0 ? 1.125 : 0.625;
        Assert.Equal(float32.WeightBytes - layerWeights * (4 - bytesPerWeight) - tableWeights * (4 - 1.125), quantized.WeightBytes);
    }
}
