// A linear layer y (M, N) = x (M, K) · Wᵀ + b with W (N, K) row-major, forward and backward, on host spans for
// training: dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy. Every product runs on the packed AVX-512
// GEMM (Gemm.Multiply) over the worker pool. W (and the Wᵀ the backward multiplies by) is packed once and kept until
// ForgetPacked, which the owner calls whenever the weights may have changed (an optimizer step): then it is packed
// again, into the same memory, when next used.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Cluster.Compute.Cpu;

/// <param name="bfloat16">Round every product's inputs to bfloat16 (fp32 accumulation): bf16 compute numerics.</param>
public sealed unsafe class Linear(WorkerPool pool, bool bfloat16 = false) : IDisposable
{
    /// <summary>
    /// A matrix packed for Gemm.Multiply, in native memory that is kept and packed over again: fresh pages would cost a
    /// page fault each on first touch, a fifth of a training step when every weight was packed into new memory after
    /// each optimizer step (and the backward's dyᵀ, tens of MB for the head, on every call).
    /// </summary>
    private sealed class Packed(long capacity) : IDisposable
    {
        public float* Pointer { get; private set; } = (float*)NativeMemory.AlignedAlloc((nuint)(capacity * sizeof(float)), 64);
        public long Capacity => capacity;

        /// <summary>False once the matrix it was packed from may have changed (ForgetPacked): packed again on next use.</summary>
        public bool Current { get; set; }

        /// <summary>Packs B (n, k) row-major; with <paramref name="transposed"/>, b is (k, n) and B = bᵀ.</summary>
        public Packed Fill(WorkerPool pool, ReadOnlySpan<float> b, int n, int k, bool transposed, bool bfloat16)
        {
            long length = Gemm.PackedLength(n, k);
            if (length > capacity) throw new InvalidOperationException($"a packed ({n}, {k}) matrix needs {length} floats, this buffer holds {capacity}");
            if (transposed) Gemm.PackTransposed(pool, b[..(n * k)], k, n, Pointer);
            else Gemm.Pack(b[..(n * k)], n, k, Pointer);
            if (bfloat16) RoundToBFloat16(new Span<float>(Pointer, checked((int)length)));
            Current = true;
            return this;
        }

        public void Dispose()
        {
            NativeMemory.AlignedFree(Pointer);
            Pointer = null;
        }
    }

    private readonly Dictionary<(float[] Stack, int Block), Packed> _weights = new(BlockComparer.Instance);             // W
    private readonly Dictionary<(float[] Stack, int Block), Packed> _transposedWeights = new(BlockComparer.Instance);   // Wᵀ

    /// <summary>A packed weight's key: its array by reference, and which of the matrices stacked in it.</summary>
    private sealed class BlockComparer : IEqualityComparer<(float[] Stack, int Block)>
    {
        public static readonly BlockComparer Instance = new();
        public bool Equals((float[] Stack, int Block) a, (float[] Stack, int Block) b) => ReferenceEquals(a.Stack, b.Stack) && a.Block == b.Block;
        public int GetHashCode((float[] Stack, int Block) key) => HashCode.Combine(RuntimeHelpers.GetHashCode(key.Stack), key.Block);
    }
    private Packed? _packedX;            // xᵀ, the right operand of the backward's dW product, reused (grown) from call to call
    private float[] _scratch = [];
    private float[] _product = [];       // dy · W before it is added into dx
    private float[] _rounded = [];       // a product's left input rounded to bf16

    /// <summary>Marks every packed weight stale (each is packed again, into its same memory, when next used): call when the weights may have changed.</summary>
    public void ForgetPacked()
    {
        foreach (var packed in _weights.Values.Concat(_transposedWeights.Values)) packed.Current = false;
    }

    /// <summary>Drops one weight's packed copies (every block of it) and their memory (its owner is letting go of it).</summary>
    public void Forget(float[] w)
    {
        foreach (var packed in new[] { _weights, _transposedWeights })
            foreach (var key in packed.Keys.Where(key => ReferenceEquals(key.Stack, w)).ToArray())
                if (packed.Remove(key, out var p)) p.Dispose();
    }

    /// <summary>
    /// Block <paramref name="block"/> of w, W (n, k) (or Wᵀ with <paramref name="transposed"/>), packed: as it was if w
    /// has not changed since.
    /// </summary>
    private Packed PackedWeight(Dictionary<(float[], int), Packed> packed, float[] w, int block, int n, int k, bool transposed)
    {
        if (!packed.TryGetValue((w, block), out var p)) packed[(w, block)] = p = new Packed(Gemm.PackedLength(n, k));
        return p.Current ? p : p.Fill(pool, w.AsSpan(block * n * k, n * k), n, k, transposed, bfloat16);
    }

    /// <summary>y (M, N) = x (M, K) · Wᵀ (+ b when not empty), W block <paramref name="block"/> of the (N, K) matrices stacked in w.</summary>
    public void Forward(ReadOnlySpan<float> x, float[] w, int block, ReadOnlySpan<float> b, Span<float> y, int m, int n, int k)
    {
        Multiply(x, PackedWeight(_weights, w, block, n, k, transposed: false).Pointer, y, m, n, k);
        if (b.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(y.Slice(row * n, n), b, y.Slice(row * n, n));
    }

    /// <summary>
    /// dx (M, K) += dy · W, dW (N, K) += dyᵀ · x, db (N,) += Σ_m dy (db may be empty; dw empty skips both); W is block
    /// <paramref name="block"/> of w, dw that block's gradient.
    /// </summary>
    public void Backward(ReadOnlySpan<float> x, float[] w, int block, ReadOnlySpan<float> dy,
        Span<float> dx, Span<float> dw, Span<float> db, int m, int n, int k)
    {
        Grow(ref _product, m * k);
        // dx (M, K) = dy (M, N) · (Wᵀ)ᵀ: Wᵀ (K, N) packed straight from W's rows, once per weight version.
        Multiply(dy, PackedWeight(_transposedWeights, w, block, k, n, transposed: true).Pointer, _product.AsSpan(0, m * k), m, k, n);
        TensorPrimitives.Add(dx[..(m * k)], _product.AsSpan(0, m * k), dx[..(m * k)]);
        if (dw.IsEmpty) return;                                                                // a frozen weight (LoRA's base): no dW, no db
        // dW (N, K) += dyᵀ (N, M) · (xᵀ)ᵀ: xᵀ (K, M) packed straight from x's rows, dy read where it is as the transposed
        // left operand (the head's dy is tens of MB: never transposed in memory), the product added into dW as it is made.
        long packedLength = Gemm.PackedLength(k, m);
        if (_packedX is null || _packedX.Capacity < packedLength)
        {
            _packedX?.Dispose();
            _packedX = new Packed(packedLength);
        }
        _packedX.Fill(pool, x, k, m, transposed: true, bfloat16);
        var left = RoundedForBFloat16(dy[..(m * n)]);
        fixed (float* pdy = left, pw = dw, ps = Scratch(Gemm.ScratchLength(n, m)))
            Gemm.MultiplyTransposedAccumulate(pool, pdy, n, m, _packedX.Pointer, k, pw, ps);
        if (db.IsEmpty) return;
        for (int row = 0; row < m; row++) TensorPrimitives.Add(db, dy.Slice(row * n, n), db);
    }

    /// <summary>y (m, n) = a (m, k) · Bᵀ with B (n, k) packed (a rounded to bfloat16 first in bf16 mode).</summary>
    private void Multiply(ReadOnlySpan<float> a, float* packedB, Span<float> y, int m, int n, int k)
    {
        a = RoundedForBFloat16(a[..(m * k)]);
        fixed (float* pa = a, py = y, ps = Scratch(Gemm.ScratchLength(m, k)))
            Gemm.Multiply(pool, pa, m, k, packedB, n, py, ps);
    }

    /// <summary>A product's left input as it is, or in bf16 mode a copy rounded to bfloat16.</summary>
    private ReadOnlySpan<float> RoundedForBFloat16(ReadOnlySpan<float> a)
    {
        if (!bfloat16) return a;
        Grow(ref _rounded, a.Length);
        a.CopyTo(_rounded);
        RoundToBFloat16(_rounded.AsSpan(0, a.Length));
        return _rounded.AsSpan(0, a.Length);
    }

    /// <summary>The GEMM's packing scratch, pinned (it is used through a pointer), grown to at least <paramref name="length"/> floats.</summary>
    private float[] Scratch(long length)
    {
        if (_scratch.Length < length) _scratch = GC.AllocateUninitializedArray<float>(checked((int)length), pinned: true);
        return _scratch;
    }

    /// <summary>Rounds each value to the nearest bfloat16 (ties to even): the top 16 bits of its fp32 pattern survive.</summary>
    public static void RoundToBFloat16(Span<float> values)
    {
        var bits = MemoryMarshal.Cast<float, uint>(values);
        for (int i = 0; i < bits.Length; i++)
        {
            uint v = bits[i];
            if ((v & 0x7F800000) == 0x7F800000) continue;   // inf and NaN stay as they are
            bits[i] = (v + 0x7FFF + ((v >> 16) & 1)) & 0xFFFF0000;
        }
    }

    private static void Grow(ref float[] buffer, int length)
    {
        if (buffer.Length < length) buffer = GC.AllocateUninitializedArray<float>(length);
    }

    public void Dispose()
    {
        foreach (var packed in _weights.Values.Concat(_transposedWeights.Values)) packed.Dispose();
        _weights.Clear();
        _transposedWeights.Clear();
        _packedX?.Dispose();
        _packedX = null;
    }
}
