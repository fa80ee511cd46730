// Tiled GEMM y (M, N) = x (M, K) · Wᵀ with W (N, K) row-major: each group of 256 threads computes a 64×64
// tile of y, staging 64×16 slabs of x and W in shared memory (stored k-major, padded against bank
// conflicts); thread (tx, ty) of the 16×16 grid owns the 4×4 outputs at rows ty + 16i, columns tx + 16j.
using ILGPU;

namespace Cluster.Compute.Ilgpu;

internal static class GemmKernel
{
    public const int TileSize = 64;
    private const int Depth = 16;
    private const int Stride = TileSize + 1;
    private const int Side = 16;   // threads per tile side: Side² = GroupReduce.GroupSize

    /// <summary>Group g computes the tile at rows (g / tilesN)·64, columns (g % tilesN)·64.</summary>
    public static void Kernel(ArrayView<float> x, ArrayView<float> w, ArrayView<float> y, int m, int n, int k)
    {
        var xs = SharedMemory.Allocate<float>(Depth * Stride);
        var ws = SharedMemory.Allocate<float>(Depth * Stride);
        int tilesN = (n + TileSize - 1) / TileSize;
        int row0 = Grid.IdxX / tilesN * TileSize, col0 = Grid.IdxX % tilesN * TileSize;
        int tid = Group.IdxX, tx = tid % Side, ty = tid / Side;
        int loadK = tid % Depth, loadRow = tid / Depth;   // each thread stages 4 elements of each slab

        Vec4 c0 = default, c1 = default, c2 = default, c3 = default;
        for (int k0 = 0; k0 < k; k0 += Depth)
        {
            int kk = k0 + loadK;
            for (int l = 0; l < TileSize; l += Side)
            {
                int r = loadRow + l, xr = row0 + r, wr = col0 + r;
                xs[loadK * Stride + r] = xr < m && kk < k ? x[xr * k + kk] : 0f;
                ws[loadK * Stride + r] = wr < n && kk < k ? w[wr * k + kk] : 0f;
            }
            Group.Barrier();
            for (int d = 0; d < Depth; d++)
            {
                int o = d * Stride;
                var b = new Vec4(ws[o + tx], ws[o + tx + Side], ws[o + tx + 2 * Side], ws[o + tx + 3 * Side]);
                c0 = c0.MultiplyAdd(xs[o + ty], b);
                c1 = c1.MultiplyAdd(xs[o + ty + Side], b);
                c2 = c2.MultiplyAdd(xs[o + ty + 2 * Side], b);
                c3 = c3.MultiplyAdd(xs[o + ty + 3 * Side], b);
            }
            Group.Barrier();
        }
        Store(y, c0, row0 + ty, col0 + tx, m, n);
        Store(y, c1, row0 + ty + Side, col0 + tx, m, n);
        Store(y, c2, row0 + ty + 2 * Side, col0 + tx, m, n);
        Store(y, c3, row0 + ty + 3 * Side, col0 + tx, m, n);
    }

    private static void Store(ArrayView<float> y, Vec4 values, int row, int col, int m, int n)
    {
        if (row >= m) return;
        int o = row * n;
        if (col < n) y[o + col] = values.X;
        if (col + Side < n) y[o + col + Side] = values.Y;
        if (col + 2 * Side < n) y[o + col + 2 * Side] = values.Z;
        if (col + 3 * Side < n) y[o + col + 3 * Side] = values.W;
    }

    /// <summary>Four accumulators held in registers.</summary>
    private readonly struct Vec4(float x, float y, float z, float w)
    {
        public readonly float X = x, Y = y, Z = z, W = w;
        public Vec4 MultiplyAdd(float a, Vec4 b) => new(X + a * b.X, Y + a * b.Y, Z + a * b.Z, W + a * b.W);
    }
}
