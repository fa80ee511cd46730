// A layer's K or V cache on the CPU in float16 or int8 (KvFormat), slot after slot of kvDim values. Int8 keeps one
// scale per slot and KV head, amax / 127 of that head's values (so a head's vector is quantized as one block: a token's
// keys for different heads can differ in scale by orders of magnitude). Attention reads one head of one slot at a
// time, widened to float32 (Head); the float32 cache is a plain CpuBuffer that attention reads in place.
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Cluster.Compute.Cpu;

public sealed class CpuKvBuffer : DeviceBuffer
{
    private readonly Half[]? _halves;    // (slots, kvDim) F16
    private readonly sbyte[]? _values;   // (slots, kvDim) Int8
    private readonly float[]? _scales;   // (slots, kvDim / headDim) Int8

    public CpuKvBuffer(int slots, int kvDim, int headDim, KvFormat format) : base(checked(slots * kvDim))
    {
        if (headDim <= 0 || kvDim % headDim != 0) throw new ArgumentException($"a KV row of {kvDim} values is not whole heads of {headDim}");
        (Slots, KvDim, HeadDim, Format) = (slots, kvDim, headDim, format);
        switch (format)
        {
            case KvFormat.F16: _halves = new Half[Length]; break;
            case KvFormat.Int8:
                _values = new sbyte[Length];
                _scales = new float[(long)slots * (kvDim / headDim)];
                break;
            default: throw new ArgumentOutOfRangeException(nameof(format), format, "a float32 cache is a CpuBuffer");
        }
    }

    public int Slots { get; }
    public int KvDim { get; }
    public int HeadDim { get; }
    public KvFormat Format { get; }

    /// <summary>Stores a token's K or V row (kvDim floats) in slot <paramref name="slot"/>.</summary>
    public void Write(int slot, ReadOnlySpan<float> row)
    {
        if ((uint)slot >= (uint)Slots) throw new ArgumentOutOfRangeException(nameof(slot), slot, $"cache slot outside 0..{Slots - 1}");
        if (_halves is not null)
        {
            TensorPrimitives.ConvertToHalf(row[..KvDim], _halves.AsSpan(slot * KvDim, KvDim));
            return;
        }
        int heads = KvDim / HeadDim;
        for (int h = 0; h < heads; h++)
        {
            var x = row.Slice(h * HeadDim, HeadDim);
            float scale = MathF.Abs(TensorPrimitives.MaxMagnitude(x)) / 127;   // MaxMagnitude keeps the value's sign
            float inverse = scale > 0 ? 1 / scale : 0;
            var q = _values.AsSpan(slot * KvDim + h * HeadDim, HeadDim);
            for (int i = 0; i < HeadDim; i++) q[i] = (sbyte)MathF.Round(x[i] * inverse, MidpointRounding.AwayFromZero);
            _scales![(long)slot * heads + h] = scale;
        }
    }

    /// <summary>Head <paramref name="kvHead"/> of slot <paramref name="slot"/> as float32, in <paramref name="scratch"/> (headDim floats).</summary>
    public ReadOnlySpan<float> Head(int slot, int kvHead, Span<float> scratch)
    {
        var destination = scratch[..HeadDim];
        int at = slot * KvDim + kvHead * HeadDim;
        if (_halves is not null)
        {
            TensorPrimitives.ConvertToSingle(_halves.AsSpan(at, HeadDim), destination);
            return destination;
        }
        float scale = _scales![(long)slot * (KvDim / HeadDim) + kvHead];
        var q = _values.AsSpan(at, HeadDim);
        int i = 0;
        var scales = Vector128.Create(scale);
        for (; i + 16 <= q.Length; i += 16)   // 16 int8 widened to four vectors of float
        {
            var (low, high) = Vector128.Widen(Vector128.Create<sbyte>(q[i..]));
            var (a, b) = Vector128.Widen(low);
            var (c, d) = Vector128.Widen(high);
            (Vector128.ConvertToSingle(a) * scales).CopyTo(destination[i..]);
            (Vector128.ConvertToSingle(b) * scales).CopyTo(destination[(i + 4)..]);
            (Vector128.ConvertToSingle(c) * scales).CopyTo(destination[(i + 8)..]);
            (Vector128.ConvertToSingle(d) * scales).CopyTo(destination[(i + 12)..]);
        }
        for (; i < q.Length; i++) destination[i] = q[i] * scale;
        return destination;
    }

    public override void Dispose() { }
}
