//! How the 8-bit P·V kernel's product is formed: the byte format P is packed to, the mma that
//! multiplies it with the prepared Vᵀ, and how one key tile's product is folded into the f32
//! output. One mainloop serves every format; the formats differ only here.
//!
//! - [`Int8`] (the sm_80 module, `PvPrecision::Int8`): u8 P × s8 Vᵀ, s32 accumulator (exact).
//! - [`Fp8F32`] / [`Fp8F16`] (the sm_89 module, `PvPrecision::Fp8`): e4m3 P × e4m3 Vᵀ with an f32
//!   or an f16 accumulator; the f16 one runs at twice the f32 rate on GeForce Ada, and
//!   `config::V_FP8_MAX` keeps one tile's sum inside f16.

use crate::p8::pack_probs_u8;
use crate::ptx;

/// A P·V format (see the module docs).
pub(crate) trait PvFormat {
    /// The accumulator of one 8-channel n-tile of the product.
    type Acc: Copy;
    /// A fresh accumulator.
    const ZERO: Self::Acc;
    /// What the normalized output `O / l` is multiplied by in the epilogue: `1 /` the largest P
    /// after its per-tile scaling when the row sums `l` are of P in [0, 1] (u8), 1 when they are
    /// in P's unit already (e4m3, see [`Self::P_SCALE_LOG2`]).
    const INV_P_MAX: f32;
    /// The softmax's `p_scale_log2`: probabilities come out as `2^(s - max + P_SCALE_LOG2)`, in
    /// the format's unit (e4m3: `log2 448`, no multiply per probability), or in [0, 1] (u8, whose
    /// packing multiplies by 255 inside the fused multiply-add that rounds).
    const P_SCALE_LOG2: f32;
    /// Probabilities (accumulator layout, in [0, 1] times `2^P_SCALE_LOG2`) → the A fragments of
    /// the product.
    fn pack<const NK: usize>(p: &[[f32; 4]; NK]) -> [[u32; 4]; 4];
    /// `acc += A·B`, m16n8k32 (the whole warp calls it).
    fn mma(acc: &mut Self::Acc, a: [u32; 4], b: [u32; 2]);
    /// `o += acc · factor[row half]`, in the accumulator layout of [`crate::frag`].
    fn fold(acc: &Self::Acc, factor: [f32; 2], o: &mut [f32; 4]);
}

/// u8 P × s8 Vᵀ → s32.
pub(crate) struct Int8;

impl PvFormat for Int8 {
    type Acc = [i32; 4];
    const ZERO: [i32; 4] = [0; 4];
    const INV_P_MAX: f32 = 1.0 / crate::config::P8_MAX;
    const P_SCALE_LOG2: f32 = 0.0;

    #[inline(always)]
    fn pack<const NK: usize>(p: &[[f32; 4]; NK]) -> [[u32; 4]; 4] {
        pack_probs_u8::<NK>(p)
    }

    #[inline(always)]
    fn mma(acc: &mut [i32; 4], a: [u32; 4], b: [u32; 2]) {
        ptx::mma_u8s8_m16n8k32(acc, a, b);
    }

    #[inline(always)]
    fn fold(acc: &[i32; 4], factor: [f32; 2], o: &mut [f32; 4]) {
        crate::unroll::unroll::<4>(
            #[inline(always)]
            |e| o[e] = ptx::fma(acc[e] as f32, factor[e >> 1], o[e]),
        );
    }
}

/// e4m3 P × e4m3 Vᵀ → f32.
#[cfg(feature = "ada_fp8")]
pub(crate) struct Fp8F32;

#[cfg(feature = "ada_fp8")]
impl PvFormat for Fp8F32 {
    type Acc = [f32; 4];
    const ZERO: [f32; 4] = [0.0; 4];
    const INV_P_MAX: f32 = 1.0;
    const P_SCALE_LOG2: f32 = crate::config::LOG2_P_FP8_MAX;

    #[inline(always)]
    fn pack<const NK: usize>(p: &[[f32; 4]; NK]) -> [[u32; 4]; 4] {
        crate::p8::pack_probs_e4m3::<NK>(p)
    }

    #[inline(always)]
    fn mma(acc: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
        ptx::mma_e4m3_m16n8k32_f32(acc, a, b);
    }

    #[inline(always)]
    fn fold(acc: &[f32; 4], factor: [f32; 2], o: &mut [f32; 4]) {
        crate::unroll::unroll::<4>(
            #[inline(always)]
            |e| o[e] = ptx::fma(acc[e], factor[e >> 1], o[e]),
        );
    }
}

/// e4m3 P × e4m3 Vᵀ → f16 (two f16x2 registers: row g, row g + 8).
#[cfg(feature = "ada_fp8")]
pub(crate) struct Fp8F16;

#[cfg(feature = "ada_fp8")]
impl PvFormat for Fp8F16 {
    type Acc = [u32; 2];
    const ZERO: [u32; 2] = [0; 2];
    const INV_P_MAX: f32 = 1.0;
    const P_SCALE_LOG2: f32 = crate::config::LOG2_P_FP8_MAX;

    #[inline(always)]
    fn pack<const NK: usize>(p: &[[f32; 4]; NK]) -> [[u32; 4]; 4] {
        crate::p8::pack_probs_e4m3::<NK>(p)
    }

    #[inline(always)]
    fn mma(acc: &mut [u32; 2], a: [u32; 4], b: [u32; 2]) {
        ptx::mma_e4m3_m16n8k32_f16(acc, a, b);
    }

    #[inline(always)]
    fn fold(acc: &[u32; 2], factor: [f32; 2], o: &mut [f32; 4]) {
        crate::unroll::unroll::<2>(
            #[inline(always)]
            |h| {
                let (x, y) = ptx::unpack_f16x2(acc[h]);
                o[2 * h] = ptx::fma(x, factor[h], o[2 * h]);
                o[2 * h + 1] = ptx::fma(y, factor[h], o[2 * h + 1]);
            },
        );
    }
}
