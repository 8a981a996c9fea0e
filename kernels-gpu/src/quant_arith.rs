//! The arithmetic of the INT8 quantization contract (docs/design.md, "Quantization" 2), shared by
//! the preparation's jobs (`quant.rs`) and the sm_90a kernels that quantize Q themselves
//! (`hopper/q_tile.rs`): one definition, so the two produce the same bits and the CPU emulation
//! (`host/reference/quant_ref.rs`) covers both.

use crate::ptx;
use crate::unroll::unroll;

/// The values Q quantizes (docs/design.md, "Quantization" 2): 8 f16 or bf16 inputs times `mult`.
#[inline(always)]
pub(crate) fn scaled8(raw: &[u32; 4], bf16: bool, mult: f32) -> [f32; 8] {
    let mut x = unpack8(raw, bf16);
    unroll::<8>(
        #[inline(always)]
        |i| x[i] *= mult,
    );
    x
}

/// `max(acc, |v₀|, …, |v₇|)` with NaN propagating (the order does not matter: `max.NaN` returns
/// the canonical NaN whichever input is one).
#[cfg(not(feature = "hopper"))]
#[inline(always)]
pub(crate) fn abs_max8(acc: f32, v: &[f32; 8]) -> f32 {
    let mut m = acc;
    unroll::<8>(
        #[inline(always)]
        |e| m = ptx::max_nan_abs(m, v[e]),
    );
    m
}

/// The quantization multiplier of a block whose maximum is `amax`: `127 / amax`, 0 for an
/// all-zero block.
#[inline(always)]
pub(crate) fn inv_scale(amax: f32) -> f32 {
    if amax == 0.0 {
        0.0
    } else {
        127.0 / amax
    }
}

/// `clamp(round_ties_even(x), −127, 127)` (NaN → 0) as a byte in the low 8 bits: the INT8 of the
/// quantization contract, for Q, K and the 8-bit V alike.
///
/// The conversion saturates to −128, which a product reaches only as −∞: where `127 / amax`
/// overflowed (a block maximum below about 3.7e−37, bf16 inputs or K residuals of that size). The
/// contract's −127 there needs the integer max (tests/cpu_device_arith.rs found the −128).
#[inline(always)]
pub(crate) fn s8_byte(x: f32) -> u32 {
    ptx::cvt_rni_sat_s8(x).max(-127) as u32 & 0xff
}

/// [`s8_byte`]`(v · inv)` of 8 values, packed 4 per word, first value in the low byte.
#[inline(always)]
pub(crate) fn pack_s8x8(v: &[f32; 8], inv: f32) -> [u32; 2] {
    let mut packed = [0u32; 2];
    unroll::<8>(
        #[inline(always)]
        |e| {
            let q = s8_byte(v[e] * inv);
            packed[e / 4] |= q << (8 * (e % 4));
        },
    );
    packed
}

/// 8 f16 or bf16 values packed in 16 bytes, as f32 (exact).
#[inline(always)]
pub(crate) fn unpack8(raw: &[u32; 4], bf16: bool) -> [f32; 8] {
    let mut v = [0.0f32; 8];
    unroll::<4>(
        #[inline(always)]
        |i| {
            let (lo, hi) = if bf16 {
                ptx::unpack_bf16x2(raw[i])
            } else {
                ptx::unpack_f16x2(raw[i])
            };
            v[2 * i] = lo;
            v[2 * i + 1] = hi;
        },
    );
    v
}

/// 1.5 · 2²³: added to an f32 of magnitude below 2²², it leaves the value rounded to an integer
/// (ties to even) in the low mantissa bits, in two's complement for negative values.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// [`pack_s8x8`]`(v, inv)` without the float-to-int conversion (which issues at a fraction of the
/// FP32 rate): the rounding is an add of [`ROUNDING_MAGIC`], and the byte is the low byte of the
/// sum's bits. The same bits as the conversion whenever every `|v · inv| < 2²²`, which holds when
/// `inv` is finite and comes from a maximum at least as large as every `|v|` (then each product
/// is at most 127 · (1 + 2⁻²⁴), and no clamp is needed either); take `pack_s8x8` otherwise (a
/// NaN or infinite maximum, or an `inv` that overflowed).
#[inline(always)]
pub(crate) fn pack_s8x8_bounded(v: &[f32; 8], inv: f32) -> [u32; 2] {
    let mut bits = [0u32; 8];
    unroll::<8>(
        #[inline(always)]
        |e| {
            // Rounded on its own, as in `pack_s8x8`: no fma contraction with the add.
            let t = ptx::mul_rn(v[e], inv);
            bits[e] = ptx::add_rn(t, ROUNDING_MAGIC).to_bits();
        },
    );
    // Low bytes of four words: pairs with prmt selector 0x0040, then the pairs with 0x5410.
    let word = |b: &[u32]| {
        ptx::prmt(
            ptx::prmt(b[0], b[1], 0x0040),
            ptx::prmt(b[2], b[3], 0x0040),
            0x5410,
        )
    };
    [word(&bits[0..4]), word(&bits[4..8])]
}

/// Whether [`pack_s8x8_bounded`] gives [`pack_s8x8`]'s bits for every value whose magnitude is at
/// most `amax`, quantized with `inv = inv_scale(amax)`: neither is NaN or infinite (a subnormal
/// `amax` can make `127 / amax` overflow; an all-zero block has `inv = 0` and packs zeros either
/// way).
#[inline(always)]
pub(crate) fn bounded_pack_exact(amax: f32, inv: f32) -> bool {
    amax.is_finite() && inv.is_finite()
}
