// Packed, cache-blocked single-precision GEMM: y (M, N) = x (M, K) · Wᵀ with W (N, K) row-major, the
// layout of every linear layer. W is packed once at load into panels of NR = 32 output columns stored
// k-major (panel p holds W[32p .. 32p+31, k] for k = 0..K-1 contiguously), so the micro-kernel streams
// it linearly and decode (M = 1) reads each weight exactly once.
//
// Loops: threads take work items (one panel × a range of 6-row blocks; narrow matrices split rows too),
//   then kc block (KC deep, the B slice KC×32 stays in L1) → 6-row block → micro-kernel 6×32
//   (12 zmm accumulators, AVX-512 FMA).
// Without AVX-512 the same loops run a 6×16 Vector256 micro-kernel twice per panel (AVX2; on hardware
// without 256-bit SIMD the runtime lowers Vector256 to Vector128 pairs). Decode (M = 1) skips the row packing and
// the 6-row tiles: a GEMV per panel (AVX-512, or AVX2 with FMA). Batched decode (M ≤ 32) also skips them: unpacked rows
// against each panel, four at a time with AVX-512 (RowQuadPanelAvx512), two with AVX2 (RowPairPanelFma256), the GEMV
// for the rows left over.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Cluster.Compute.Cpu;

public static unsafe class Gemm
{
    public const int NR = 32;
    private const int MR = 6;
    private const int KC = 256;
    private const int SliceCacheBytes = 1 << 20;   // a KC slice of x or W this size stays in cache (L2) while it is reused
    private const int SmallBatchRows = 32;   // up to this many rows multiply unpacked against each panel (SmallBatchPanel*)

    public static readonly bool UseAvx512 = Vector512.IsHardwareAccelerated && Avx512F.IsSupported;
    private static readonly bool UseFma256 = Vector256.IsHardwareAccelerated && Fma.IsSupported;

    /// <summary>Floats a packed (n, k) matrix occupies.</summary>
    public static long PackedLength(int n, int k) => (long)((n + NR - 1) / NR) * k * NR;

    /// <summary>Packs W (n, k) row-major into 32-column panels (zero-padded past n).</summary>
    public static void Pack(ReadOnlySpan<float> w, int n, int k, float* packed)
    {
        if (w.Length < (long)n * k) throw new ArgumentException($"weights have {w.Length} floats, (n={n}, k={k}) needs {(long)n * k}");
        int panels = (n + NR - 1) / NR;
        for (int p = 0; p < panels; p++)
        {
            float* panel = packed + (long)p * k * NR;
            for (int j = 0; j < NR; j++)
            {
                int row = p * NR + j;
                if (row < n)
                {
                    var source = w.Slice(row * k, k);
                    for (int kk = 0; kk < k; kk++) panel[(long)kk * NR + j] = source[kk];
                }
                else
                    for (int kk = 0; kk < k; kk++) panel[(long)kk * NR + j] = 0f;
            }
        }
    }

    /// <summary>
    /// Packs B = aᵀ, for a (rows, cols) row-major, as <see cref="Pack"/> packs a (n = cols, k = rows) matrix: each
    /// panel row is a contiguous run of a's row, so no transposed copy of a is ever made (the backward's Wᵀ and dyᵀ).
    /// </summary>
    public static void PackTransposed(WorkerPool pool, ReadOnlySpan<float> a, int rows, int cols, float* packed)
    {
        if (a.Length < (long)rows * cols) throw new ArgumentException($"the matrix has {a.Length} floats, ({rows}, {cols}) needs {(long)rows * cols}");
        int n = cols, k = rows, panels = (n + NR - 1) / NR;
        fixed (float* source = a)
            PackTransposedPanels(pool, source, k, n, panels, packed);
    }

    private static void PackTransposedPanels(WorkerPool pool, float* a, int k, int n, int panels, float* packed) =>
        pool.For(panels, (p0, p1) =>   // the head's dyᵀ is tens of MB: every thread packs its panels
        {
            for (int p = p0; p < p1; p++)
            {
                float* panel = packed + (long)p * k * NR;
                int first = p * NR, width = Math.Min(NR, n - first);
                for (int kk = 0; kk < k; kk++)
                {
                    var row = new Span<float>(panel + (long)kk * NR, NR);
                    new ReadOnlySpan<float>(a + (long)kk * n + first, width).CopyTo(row);
                    row[width..].Clear();
                }
            }
        });

    /// <summary>y (m, n) = x (m, k) · Wᵀ with W packed by <see cref="Pack"/>. x rows have stride k, y rows stride n.</summary>
    public static void Multiply(WorkerPool pool, float* x, int m, int k, float* packedW, int n, float* y, float* scratch)
    {
        int panels = (n + NR - 1) / NR;
        if (m <= SmallBatchRows && (UseAvx512 || UseFma256))   // decode of one or a few sequences: no packing, no padded 6-row tiles
        {
            pool.For(panels, (p0, p1) =>
            {
                for (int p = p0; p < p1; p++)
                {
                    float* panel = packedW + (long)p * k * NR, yp = y + p * NR;
                    int nr = Math.Min(NR, n - p * NR);
                    if (UseAvx512) SmallBatchPanelAvx512(x, m, panel, k, yp, n, nr);
                    else SmallBatchPanelFma256(x, m, panel, k, yp, n, nr);
                }
            });
            return;
        }

        // Pack x into blocks of 6 rows, k-major: block b holds x[6b .. 6b+5, kk] at [b][kk][0..5].
        int mBlocks = (m + MR - 1) / MR;
        float* packedX = scratch;
        pool.For(mBlocks, (b0, b1) =>
        {
            for (int b = b0; b < b1; b++) PackRows(x, m, k, b, packedX + (long)b * k * MR);
        });
        MultiplyPackedRows(pool, m, k, packedW, n, y, packedX, accumulate: false);
    }

    /// <summary>
    /// y (m, n) += xᵀ · Wᵀ, the left operand given as its transpose xT (k, m) row-major, W packed by <see cref="Pack"/>
    /// or <see cref="PackTransposed"/>: the backward's dW (N, K) += dyᵀ · x reads dy (M, N) where it is (the LM head's dy
    /// is tens of MB) and adds into dW without a product buffer. <paramref name="scratch"/>: <see cref="ScratchLength"/>(m, k).
    /// </summary>
    public static void MultiplyTransposedAccumulate(WorkerPool pool, float* xT, int m, int k, float* packedW, int n, float* y, float* scratch)
    {
        int mBlocks = (m + MR - 1) / MR;
        float* packedX = scratch;
        pool.For(mBlocks, (b0, b1) =>
        {
            for (int b = b0; b < b1; b++) PackColumns(xT, m, k, b, packedX + (long)b * k * MR);
        });
        MultiplyPackedRows(pool, m, k, packedW, n, y, packedX, accumulate: true);
    }

    private static void MultiplyPackedRows(WorkerPool pool, int m, int k, float* packedW, int n, float* y, float* packedX, bool accumulate)
    {
        int panels = (n + NR - 1) / NR, mBlocks = (m + MR - 1) / MR;
        if ((long)mBlocks * MR * KC * sizeof(float) > SliceCacheBytes && (long)panels * NR * KC * sizeof(float) <= SliceCacheBytes / 2)
        {
            // Tall and narrow (the LM head's dW: 32000 × 288): x's KC slice would not stay in cache from one panel to the
            // next, W's would across all panels, so threads take row blocks and each block goes through every panel
            // while it is in L1.
            pool.For(mBlocks, (mb0, mb1) =>
            {
                float* edge = stackalloc float[MR * NR];
                MultiplyRowBlocks(m, k, packedW, n, y, packedX, panels, mb0, mb1, edge, accumulate);
            });
            return;
        }
        // Work items are (panel range × row-block range): wide matrices split over panels only, narrow ones
        // (few panels, e.g. N = 288) also over rows so every thread gets a share.
        int rowGroups = Math.Clamp(4 * pool.Threads / panels, 1, mBlocks);
        int rowGroupBlocks = (mBlocks + rowGroups - 1) / rowGroups;
        pool.For(panels * rowGroups, (item0, item1) =>
        {
            float* edge = stackalloc float[MR * NR];
            for (int item = item0; item < item1; item++)
            {
                int p = item % panels, group = item / panels;
                MultiplyPanel(m, k, packedW, n, y, packedX, p, group * rowGroupBlocks, Math.Min(mBlocks, (group + 1) * rowGroupBlocks), edge, accumulate);
            }
        });
    }

    /// <summary>Row blocks [mb0, mb1) of y across every panel, in KC-deep slices (added to y's values with <paramref name="accumulateIntoY"/>).</summary>
    private static void MultiplyRowBlocks(int m, int k, float* packedW, int n, float* y, float* packedX, int panels, int mb0, int mb1, float* edge, bool accumulateIntoY)
    {
        for (int kc0 = 0; kc0 < k; kc0 += KC)
        {
            int kc = Math.Min(KC, k - kc0);
            bool accumulate = accumulateIntoY || kc0 > 0;
            for (int mb = mb0; mb < mb1; mb++)
            {
                float* a = packedX + (long)mb * k * MR + (long)kc0 * MR;
                int mr = Math.Min(MR, m - mb * MR);
                for (int p = 0; p < panels; p++)
                    MultiplyTile(a, packedW + (long)p * k * NR + (long)kc0 * NR, kc, y + (long)mb * MR * n + p * NR, n, mr, Math.Min(NR, n - p * NR), edge, accumulate);
            }
        }
    }

    /// <summary>One panel of y for row blocks [mb0, mb1), in KC-deep slices (added to y's values with <paramref name="accumulateIntoY"/>).</summary>
    private static void MultiplyPanel(int m, int k, float* packedW, int n, float* y, float* packedX, int p, int mb0, int mb1, float* edge, bool accumulateIntoY)
    {
        float* panel = packedW + (long)p * k * NR;
        int nr = Math.Min(NR, n - p * NR);
        for (int kc0 = 0; kc0 < k; kc0 += KC)
        {
            int kc = Math.Min(KC, k - kc0);
            bool accumulate = accumulateIntoY || kc0 > 0;
            float* b = panel + (long)kc0 * NR;
            for (int mb = mb0; mb < mb1; mb++)
                MultiplyTile(packedX + (long)mb * k * MR + (long)kc0 * MR, b, kc, y + (long)mb * MR * n + p * NR, n, Math.Min(MR, m - mb * MR), nr, edge, accumulate);
        }
    }

    /// <summary>c (mr, nr) (+)= one 6-row block a times one panel slice b, kc deep; a partial tile goes through <paramref name="edge"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MultiplyTile(float* a, float* b, int kc, float* c, int ldc, int mr, int nr, float* edge, bool accumulate)
    {
        if (mr == MR && nr == NR)
        {
            Tile(a, b, kc, c, ldc, accumulate);
            return;
        }
        Tile(a, b, kc, edge, NR, accumulate: false);
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                c[(long)i * ldc + j] = accumulate ? c[(long)i * ldc + j] + edge[i * NR + j] : edge[i * NR + j];
    }

    /// <summary>Scratch floats <see cref="Multiply"/> needs for an m-row x.</summary>
    public static long ScratchLength(int m, int k) => (long)((m + MR - 1) / MR) * MR * k;

    /// <summary>As <see cref="PackRows"/> for the rows of x given as xT (k, m): each k step's six values are contiguous in xT.</summary>
    private static void PackColumns(float* xT, int m, int k, int block, float* destination)
    {
        int first = block * MR, rows = Math.Min(MR, m - first);
        for (int kk = 0; kk < k; kk++)
        {
            float* source = xT + (long)kk * m + first, target = destination + (long)kk * MR;
            int i = 0;
            for (; i < rows; i++) target[i] = source[i];
            for (; i < MR; i++) target[i] = 0f;
        }
    }

    private static void PackRows(float* x, int m, int k, int block, float* destination)
    {
        for (int i = 0; i < MR; i++)
        {
            int row = block * MR + i;
            if (row < m)
            {
                float* source = x + (long)row * k;
                for (int kk = 0; kk < k; kk++) destination[(long)kk * MR + i] = source[kk];
            }
            else
                for (int kk = 0; kk < k; kk++) destination[(long)kk * MR + i] = 0f;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile(float* a, float* b, int kc, float* c, int ldc, bool accumulate)
    {
        if (UseAvx512) Kernel6x32Avx512(a, b, kc, c, ldc, accumulate);
        else
        {
            Kernel6x16(a, b, kc, c, ldc, accumulate);
            Kernel6x16(a, b + 16, kc, c + 16, ldc, accumulate);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x32Avx512(float* a, float* b, int kc, float* c, int ldc, bool accumulate)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int kk = 0; kk < kc; kk++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var a0 = Vector512.Create(a[0]);
            c00 = Avx512F.FusedMultiplyAdd(a0, b0, c00);
            c01 = Avx512F.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector512.Create(a[1]);
            c10 = Avx512F.FusedMultiplyAdd(a1, b0, c10);
            c11 = Avx512F.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector512.Create(a[2]);
            c20 = Avx512F.FusedMultiplyAdd(a2, b0, c20);
            c21 = Avx512F.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector512.Create(a[3]);
            c30 = Avx512F.FusedMultiplyAdd(a3, b0, c30);
            c31 = Avx512F.FusedMultiplyAdd(a3, b1, c31);
            var a4 = Vector512.Create(a[4]);
            c40 = Avx512F.FusedMultiplyAdd(a4, b0, c40);
            c41 = Avx512F.FusedMultiplyAdd(a4, b1, c41);
            var a5 = Vector512.Create(a[5]);
            c50 = Avx512F.FusedMultiplyAdd(a5, b0, c50);
            c51 = Avx512F.FusedMultiplyAdd(a5, b1, c51);
            a += MR;
            b += NR;
        }
        StoreRow(c, c00, c01, accumulate);
        StoreRow(c + ldc, c10, c11, accumulate);
        StoreRow(c + 2 * ldc, c20, c21, accumulate);
        StoreRow(c + 3 * ldc, c30, c31, accumulate);
        StoreRow(c + 4 * ldc, c40, c41, accumulate);
        StoreRow(c + 5 * ldc, c50, c51, accumulate);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow(float* c, Vector512<float> v0, Vector512<float> v1, bool accumulate)
    {
        if (accumulate)
        {
            v0 += Vector512.Load(c);
            v1 += Vector512.Load(c + 16);
        }
        v0.Store(c);
        v1.Store(c + 16);
    }

    // The portable micro-kernel: 6 rows × 16 columns of a 32-wide panel (B rows have stride NR).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16(float* a, float* b, int kc, float* c, int ldc, bool accumulate)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int kk = 0; kk < kc; kk++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            var a0 = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(a0, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(a1, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(a2, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(a3, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(a3, b1, c31);
            var a4 = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(a4, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(a4, b1, c41);
            var a5 = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(a5, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(a5, b1, c51);
            a += MR;
            b += NR;
        }
        StoreRow(c, c00, c01, accumulate);
        StoreRow(c + ldc, c10, c11, accumulate);
        StoreRow(c + 2 * ldc, c20, c21, accumulate);
        StoreRow(c + 3 * ldc, c30, c31, accumulate);
        StoreRow(c + 4 * ldc, c40, c41, accumulate);
        StoreRow(c + 5 * ldc, c50, c51, accumulate);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow(float* c, Vector256<float> v0, Vector256<float> v1, bool accumulate)
    {
        if (accumulate)
        {
            v0 += Vector256.Load(c);
            v1 += Vector256.Load(c + 8);
        }
        v0.Store(c);
        v1.Store(c + 8);
    }

    // Batched decode with AVX-512: four rows of x (stride k) at a time against one panel, then one at a time (the GEMV)
    // for the rest. The first rows stream the panel from memory; the next find it in cache.
    private static void SmallBatchPanelAvx512(float* x, int m, float* panel, int k, float* y, int ldy, int nr)
    {
        int r = 0;
        for (; r + 3 < m; r += 4)
            RowQuadPanelAvx512(x + (long)r * k, panel, k, y + (long)r * ldy, ldy, nr);
        for (; r < m; r++)
            GemvPanelAvx512(x + (long)r * k, panel, k, y + (long)r * ldy, nr);
    }

    // Batched decode with AVX2 and FMA: row pairs, then the GEMV for an odd last row.
    private static void SmallBatchPanelFma256(float* x, int m, float* panel, int k, float* y, int ldy, int nr)
    {
        int r = 0;
        for (; r + 1 < m; r += 2)
            RowPairPanelFma256(x + (long)r * k, panel, k, y + (long)r * ldy, ldy, nr);
        if (r < m) GemvPanelFma256(x + (long)r * k, panel, k, y + (long)r * ldy, nr);
    }

    // Four rows against a 32-column panel: eight zmm accumulators, each panel row loaded once for the four.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowQuadPanelAvx512(float* x, float* panel, int k, float* y, int ldy, int nr)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector512<float> c20 = default, c21 = default, c30 = default, c31 = default;
        float* x1 = x + k, x2 = x1 + k, x3 = x2 + k;
        for (int kk = 0; kk < k; kk++)
        {
            var b0 = Vector512.Load(panel);
            var b1 = Vector512.Load(panel + 16);
            var a0 = Vector512.Create(x[kk]);
            c00 = Avx512F.FusedMultiplyAdd(a0, b0, c00);
            c01 = Avx512F.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector512.Create(x1[kk]);
            c10 = Avx512F.FusedMultiplyAdd(a1, b0, c10);
            c11 = Avx512F.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector512.Create(x2[kk]);
            c20 = Avx512F.FusedMultiplyAdd(a2, b0, c20);
            c21 = Avx512F.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector512.Create(x3[kk]);
            c30 = Avx512F.FusedMultiplyAdd(a3, b0, c30);
            c31 = Avx512F.FusedMultiplyAdd(a3, b1, c31);
            panel += NR;
        }
        // Every accumulator is stored before any call (a call would make the JIT spill them inside the loop).
        float* tile = stackalloc float[4 * NR];
        bool whole = nr == NR;
        float* row0 = whole ? y : tile, row1 = whole ? y + ldy : tile + NR, row2 = whole ? y + 2 * ldy : tile + 2 * NR, row3 = whole ? y + 3 * ldy : tile + 3 * NR;
        c00.Store(row0);
        c01.Store(row0 + 16);
        c10.Store(row1);
        c11.Store(row1 + 16);
        c20.Store(row2);
        c21.Store(row2 + 16);
        c30.Store(row3);
        c31.Store(row3 + 16);
        if (whole) return;
        for (int i = 0; i < 4; i++) new ReadOnlySpan<float>(tile + i * NR, nr).CopyTo(new Span<float>(y + (long)i * ldy, nr));
    }

    // Batched decode with AVX2 and FMA: two rows of x (stride k) against one panel, whose rows are read whole and in
    // order as the GEMV reads them (the 6×16 kernel reads each half of a row in a separate pass, and pads 8 rows to 12).
    // The first row pair streams the panel from memory; the next pairs find it in cache.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowPairPanelFma256(float* x, float* panel, int k, float* y, int ldy, int nr)
    {
        Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default;
        float* x1 = x + k;
        for (int kk = 0; kk < k; kk++)
        {
            var b0 = Vector256.Load(panel);
            var b1 = Vector256.Load(panel + 8);
            var b2 = Vector256.Load(panel + 16);
            var b3 = Vector256.Load(panel + 24);
            var a0 = Vector256.Create(x[kk]);
            c00 = Fma.MultiplyAdd(a0, b0, c00);
            c01 = Fma.MultiplyAdd(a0, b1, c01);
            c02 = Fma.MultiplyAdd(a0, b2, c02);
            c03 = Fma.MultiplyAdd(a0, b3, c03);
            var a1 = Vector256.Create(x1[kk]);
            c10 = Fma.MultiplyAdd(a1, b0, c10);
            c11 = Fma.MultiplyAdd(a1, b1, c11);
            c12 = Fma.MultiplyAdd(a1, b2, c12);
            c13 = Fma.MultiplyAdd(a1, b3, c13);
            panel += NR;
        }
        // Every accumulator is stored before any call (a call would make the JIT spill them inside the loop).
        float* tile = stackalloc float[2 * NR];
        float* row0 = nr == NR ? y : tile, row1 = nr == NR ? y + ldy : tile + NR;
        c00.Store(row0);
        c01.Store(row0 + 8);
        c02.Store(row0 + 16);
        c03.Store(row0 + 24);
        c10.Store(row1);
        c11.Store(row1 + 8);
        c12.Store(row1 + 16);
        c13.Store(row1 + 24);
        if (nr == NR) return;
        new ReadOnlySpan<float>(tile, nr).CopyTo(new Span<float>(y, nr));
        new ReadOnlySpan<float>(tile + NR, nr).CopyTo(new Span<float>(y + ldy, nr));
    }

    // Decode (M = 1) with AVX2 and FMA: as GemvPanelAvx512, each 32-column panel row in four 256-bit vectors.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GemvPanelFma256(float* x, float* panel, int k, float* y, int nr)
    {
        Vector256<float> even0 = default, even1 = default, even2 = default, even3 = default;
        Vector256<float> odd0 = default, odd1 = default, odd2 = default, odd3 = default;
        int kk = 0;
        for (; kk + 1 < k; kk += 2)
        {
            var x0 = Vector256.Create(x[kk]);
            var x1 = Vector256.Create(x[kk + 1]);
            even0 = Fma.MultiplyAdd(x0, Vector256.Load(panel), even0);
            even1 = Fma.MultiplyAdd(x0, Vector256.Load(panel + 8), even1);
            even2 = Fma.MultiplyAdd(x0, Vector256.Load(panel + 16), even2);
            even3 = Fma.MultiplyAdd(x0, Vector256.Load(panel + 24), even3);
            odd0 = Fma.MultiplyAdd(x1, Vector256.Load(panel + 32), odd0);
            odd1 = Fma.MultiplyAdd(x1, Vector256.Load(panel + 40), odd1);
            odd2 = Fma.MultiplyAdd(x1, Vector256.Load(panel + 48), odd2);
            odd3 = Fma.MultiplyAdd(x1, Vector256.Load(panel + 56), odd3);
            panel += 2 * NR;
        }
        if (kk < k)
        {
            var x0 = Vector256.Create(x[kk]);
            even0 = Fma.MultiplyAdd(x0, Vector256.Load(panel), even0);
            even1 = Fma.MultiplyAdd(x0, Vector256.Load(panel + 8), even1);
            even2 = Fma.MultiplyAdd(x0, Vector256.Load(panel + 16), even2);
            even3 = Fma.MultiplyAdd(x0, Vector256.Load(panel + 24), even3);
        }
        float* tile = stackalloc float[NR];
        float* row = nr == NR ? y : tile;
        (even0 + odd0).Store(row);
        (even1 + odd1).Store(row + 8);
        (even2 + odd2).Store(row + 16);
        (even3 + odd3).Store(row + 24);
        if (nr < NR) new ReadOnlySpan<float>(row, nr).CopyTo(new Span<float>(y, nr));
    }

    // Decode (M = 1): one row of x against one panel, two k steps per iteration to hide FMA latency.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GemvPanelAvx512(float* x, float* panel, int k, float* y, int nr)
    {
        Vector512<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        int kk = 0;
        for (; kk + 1 < k; kk += 2)
        {
            var x0 = Vector512.Create(x[kk]);
            var x1 = Vector512.Create(x[kk + 1]);
            acc0 = Avx512F.FusedMultiplyAdd(x0, Vector512.Load(panel), acc0);
            acc1 = Avx512F.FusedMultiplyAdd(x0, Vector512.Load(panel + 16), acc1);
            acc2 = Avx512F.FusedMultiplyAdd(x1, Vector512.Load(panel + 32), acc2);
            acc3 = Avx512F.FusedMultiplyAdd(x1, Vector512.Load(panel + 48), acc3);
            panel += 2 * NR;
        }
        if (kk < k)
        {
            var x0 = Vector512.Create(x[kk]);
            acc0 = Avx512F.FusedMultiplyAdd(x0, Vector512.Load(panel), acc0);
            acc1 = Avx512F.FusedMultiplyAdd(x0, Vector512.Load(panel + 16), acc1);
        }
        acc0 += acc2;
        acc1 += acc3;
        if (nr == NR)
        {
            acc0.Store(y);
            acc1.Store(y + 16);
        }
        else
        {
            float* tile = stackalloc float[NR];
            acc0.Store(tile);
            acc1.Store(tile + 16);
            new ReadOnlySpan<float>(tile, nr).CopyTo(new Span<float>(y, nr));
        }
    }
}
