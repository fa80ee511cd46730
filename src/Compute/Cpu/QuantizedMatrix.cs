// Weight matrices kept in ggml's block formats and multiplied as they are, as llama.cpp's CPU backend does: Q8_0 (32
// int8 values and one scale per block, 1.125 bytes a weight here) and Q4_0 (32 4-bit values and one scale, 0.625 bytes)
// where the packed float32 GEMM reads 4 bytes a weight. Each input row is quantized to Q8_0 blocks first, every pair of
// blocks is multiplied in integers and the sum scaled by the two blocks' scales:
//   y[m, n] = Σ_b dW[n, b] · dX[m, b] · Σ_{j<32} qW[n, 32b + j] · qX[m, 32b + j]
// so the result equals the float product of the dequantized weights and the dequantized inputs (float rounding aside).
// Kernel: the 32 products of a block pair in one 256-bit step, vpdpbusd with AVX-VNNI, else vpmaddubsw + vpmaddwd
// (AVX2), on |w| and x carrying w's sign; four input rows share each weight block's load; scalar where there is no AVX2.
//   dotnet test: QuantizedMatrixTests; speed: cluster-bench model --weights q8_0
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Cluster.Compute.Cpu;

/// <summary>A weight matrix W (Rows, Cols) in Q8_0 or Q4_0 blocks along each row, in 64-byte-aligned native memory.</summary>
public sealed unsafe class QuantizedMatrix : DeviceMatrix
{
    public QuantizedMatrix(ReadOnlySpan<float> weights, int rows, int cols, WeightFormat format) : base(rows, cols)
    {
        if (format is not (WeightFormat.Q8_0 or WeightFormat.Q4_0)) throw new ArgumentOutOfRangeException(nameof(format), format, "not a block format");
        if (cols % BlockQuantizer.Block != 0) throw new ArgumentException($"{format} keeps rows in whole blocks of {BlockQuantizer.Block}; these have {cols} columns");
        if (weights.Length != (long)rows * cols) throw new ArgumentException($"weights hold {weights.Length} floats, a ({rows}, {cols}) matrix needs {(long)rows * cols}");
        Format = format;
        BlocksPerRow = cols / BlockQuantizer.Block;
        long blocks = (long)rows * BlocksPerRow;
        long quantBytes = format == WeightFormat.Q8_0 ? (long)rows * cols : (long)rows * cols / 2;
        _bytes = quantBytes + blocks * sizeof(float);
        Quants = (byte*)NativeMemory.AlignedAlloc((nuint)quantBytes, 64);
        Scales = (float*)NativeMemory.AlignedAlloc((nuint)(blocks * sizeof(float)), 64);
        GC.AddMemoryPressure(_bytes);
        int blockBytes = BlockBytes;
        for (long b = 0; b < blocks; b++)
        {
            var source = weights.Slice((int)(b * BlockQuantizer.Block), BlockQuantizer.Block);
            var destination = new Span<byte>(Quants + b * blockBytes, blockBytes);
            Scales[b] = format == WeightFormat.Q8_0
                ? BlockQuantizer.QuantizeQ8_0(source, MemoryMarshal.Cast<byte, sbyte>(destination))
                : BlockQuantizer.QuantizeQ4_0(source, destination);
        }
    }

    private readonly long _bytes;
    public WeightFormat Format { get; }
    public int BlocksPerRow { get; }
    /// <summary>Bytes of one block's values: 32 (Q8_0) or 16 (Q4_0).</summary>
    public int BlockBytes => Format == WeightFormat.Q8_0 ? BlockQuantizer.Block : BlockQuantizer.Block / 2;
    /// <summary>(Rows, BlocksPerRow) blocks of values, row after row.</summary>
    public byte* Quants { get; private set; }
    /// <summary>(Rows, BlocksPerRow) scales.</summary>
    public float* Scales { get; private set; }
    public override long Bytes => _bytes;

    /// <summary>The matrix as float32 (W's dequantized values), row-major.</summary>
    public float[] Dequantize()
    {
        var w = new float[(long)Rows * Cols];
        for (int r = 0; r < Rows; r++) DequantizeRow(r, w.AsSpan(r * Cols, Cols));
        return w;
    }

    /// <summary>Row <paramref name="row"/>'s dequantized values (an embedding lookup in a quantized table).</summary>
    public void DequantizeRow(int row, Span<float> destination)
    {
        sbyte* q = stackalloc sbyte[BlockQuantizer.Block];
        for (int b = 0; b < BlocksPerRow; b++)
        {
            long block = (long)row * BlocksPerRow + b;
            ExpandBlock(Quants + block * BlockBytes, Format, q);
            for (int j = 0; j < BlockQuantizer.Block; j++) destination[b * BlockQuantizer.Block + j] = q[j] * Scales[block];
        }
    }

    /// <summary>A block's 32 signed values: Q8_0's as stored, Q4_0's nibbles minus 8.</summary>
    internal static void ExpandBlock(byte* block, WeightFormat format, sbyte* values)
    {
        if (format == WeightFormat.Q8_0)
        {
            Unsafe.CopyBlock(values, block, BlockQuantizer.Block);
            return;
        }
        for (int j = 0; j < BlockQuantizer.Block / 2; j++)
        {
            values[j] = (sbyte)((block[j] & 0x0F) - 8);
            values[j + 16] = (sbyte)((block[j] >> 4) - 8);
        }
    }

    public override void Dispose()
    {
        if (Quants == null) return;
        NativeMemory.AlignedFree(Quants);
        NativeMemory.AlignedFree(Scales);
        Quants = null;
        Scales = null;
        GC.RemoveMemoryPressure(_bytes);
        GC.SuppressFinalize(this);
    }

    ~QuantizedMatrix() => Dispose();
}

/// <summary>y (M, N) = x (M, K) · Wᵀ for a <see cref="QuantizedMatrix"/> W (N, K), x quantized to Q8_0 on the way in.</summary>
public static unsafe class QuantizedGemm
{
    private static readonly bool UseAvx2 = Avx2.IsSupported && Fma.IsSupported;
    private static readonly bool UseVnni = UseAvx2 && AvxVnni.IsSupported;
    private const int RowsPerTask = 16;   // output columns a worker takes at a time (each a row of W)

    /// <summary>The instruction set the kernel uses on this CPU, for reports.</summary>
    public static string Kernel => UseVnni ? "AVX-VNNI" : UseAvx2 ? "AVX2" : "scalar";

    /// <summary>Bytes of scratch <see cref="Multiply"/> needs for m rows of k: the rows' Q8_0 values and scales.</summary>
    public static long ScratchBytes(int m, int k) => (long)m * k + (long)m * (k / BlockQuantizer.Block) * sizeof(float);

    public static void Multiply(WorkerPool pool, float* x, int m, QuantizedMatrix w, float* y, byte* scratch)
    {
        int k = w.Cols, n = w.Rows, blocks = w.BlocksPerRow;
        sbyte* xq = (sbyte*)scratch;                    // (M, K) the inputs' Q8_0 values
        float* xd = (float*)(scratch + (long)m * k);    // (M, K / 32) their scales
        pool.For(m, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
                for (int b = 0; b < blocks; b++)
                {
                    long at = (long)r * k + b * BlockQuantizer.Block;
                    xd[(long)r * blocks + b] = BlockQuantizer.QuantizeQ8_0(new ReadOnlySpan<float>(x + at, BlockQuantizer.Block), new Span<sbyte>(xq + at, BlockQuantizer.Block));
                }
        });
        int tasks = (n + RowsPerTask - 1) / RowsPerTask;
        pool.For(tasks, (t0, t1) =>
        {
            for (int row = t0 * RowsPerTask; row < Math.Min(n, t1 * RowsPerTask); row++)
            {
                int r = 0;
                if (UseAvx2)
                    for (; r + 4 <= m; r += 4) RowTimesFourInputs(w, row, xq, xd, r, k, y, n);
                for (; r < m; r++) y[(long)r * n + row] = Dot(w, row, xq + (long)r * k, xd + (long)r * blocks);
            }
        });
    }

    /// <summary>W's row <paramref name="row"/> against the Q8_0 input row (values q, scales d).</summary>
    private static float Dot(QuantizedMatrix w, int row, sbyte* q, float* d)
    {
        int blocks = w.BlocksPerRow, blockBytes = w.BlockBytes;
        byte* wq = w.Quants + (long)row * blocks * blockBytes;
        float* wd = w.Scales + (long)row * blocks;
        if (UseAvx2)
        {
            var acc = Vector256<float>.Zero;
            for (int b = 0; b < blocks; b++)
            {
                var values = WeightBlock(wq + b * blockBytes, w.Format);
                var sums = BlockDot(Avx2.Abs(values), Avx2.Sign(Avx.LoadVector256(q + b * BlockQuantizer.Block), values));
                acc = Fma.MultiplyAdd(Vector256.Create(wd[b] * d[b]), Avx.ConvertToVector256Single(sums), acc);
            }
            return Vector256.Sum(acc);
        }
        float total = 0;
        sbyte* values8 = stackalloc sbyte[BlockQuantizer.Block];
        for (int b = 0; b < blocks; b++)
        {
            QuantizedMatrix.ExpandBlock(wq + b * blockBytes, w.Format, values8);
            int sum = 0;
            for (int j = 0; j < BlockQuantizer.Block; j++) sum += values8[j] * q[b * BlockQuantizer.Block + j];
            total += wd[b] * d[b] * sum;
        }
        return total;
    }

    /// <summary>W's row against input rows r..r+3: each weight block is loaded and made unsigned once for the four.</summary>
    private static void RowTimesFourInputs(QuantizedMatrix w, int row, sbyte* xq, float* xd, int r, int k, float* y, int n)
    {
        int blocks = w.BlocksPerRow, blockBytes = w.BlockBytes;
        byte* wq = w.Quants + (long)row * blocks * blockBytes;
        float* wd = w.Scales + (long)row * blocks;
        sbyte* q0 = xq + (long)r * k, q1 = q0 + k, q2 = q1 + k, q3 = q2 + k;
        float* d0 = xd + (long)r * blocks, d1 = d0 + blocks, d2 = d1 + blocks, d3 = d2 + blocks;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int b = 0; b < blocks; b++)
        {
            var values = WeightBlock(wq + b * blockBytes, w.Format);
            var unsigned = Avx2.Abs(values);
            int at = b * BlockQuantizer.Block;
            float s = wd[b];
            a0 = Fma.MultiplyAdd(Vector256.Create(s * d0[b]), Avx.ConvertToVector256Single(BlockDot(unsigned, Avx2.Sign(Avx.LoadVector256(q0 + at), values))), a0);
            a1 = Fma.MultiplyAdd(Vector256.Create(s * d1[b]), Avx.ConvertToVector256Single(BlockDot(unsigned, Avx2.Sign(Avx.LoadVector256(q1 + at), values))), a1);
            a2 = Fma.MultiplyAdd(Vector256.Create(s * d2[b]), Avx.ConvertToVector256Single(BlockDot(unsigned, Avx2.Sign(Avx.LoadVector256(q2 + at), values))), a2);
            a3 = Fma.MultiplyAdd(Vector256.Create(s * d3[b]), Avx.ConvertToVector256Single(BlockDot(unsigned, Avx2.Sign(Avx.LoadVector256(q3 + at), values))), a3);
        }
        y[(long)r * n + row] = Vector256.Sum(a0);
        y[(long)(r + 1) * n + row] = Vector256.Sum(a1);
        y[(long)(r + 2) * n + row] = Vector256.Sum(a2);
        y[(long)(r + 3) * n + row] = Vector256.Sum(a3);
    }

    /// <summary>A weight block's 32 signed values in one vector (Q4_0: low nibbles are elements 0..15, high 16..31, minus 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> WeightBlock(byte* block, WeightFormat format)
    {
        if (format == WeightFormat.Q8_0) return Avx.LoadVector256((sbyte*)block);
        var packed = Sse2.LoadVector128(block);
        var low = packed & Vector128.Create((byte)0x0F);
        var high = Vector128.ShiftRightLogical(packed, 4) & Vector128.Create((byte)0x0F);
        return Avx2.Subtract(Vector256.Create(low, high).AsSByte(), Vector256.Create((sbyte)8));
    }

    /// <summary>Eight int32 partial sums of the 32 products |w|·(x with w's sign) = w·x (|w| ≤ 127, so no pair saturates 16 bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> BlockDot(Vector256<byte> unsignedWeights, Vector256<sbyte> signedInputs) =>
        UseVnni
            ? AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, unsignedWeights, signedInputs)
            : Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(unsignedWeights, signedInputs), Vector256.Create((short)1));
}
