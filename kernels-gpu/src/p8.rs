//! The u8 P of the 8-bit P·V, packed from the Q·Kᵀ accumulator: shared by the sm_90a wgmma kernel
//! and the portable mma.sync kernel, whose A fragments (wgmma `m64nNk32` from registers, one warp's
//! 16 rows; mma.sync `m16n8k32`) have the same per-warp layout. Each lane packs the probabilities
//! it already holds, with no shuffles; the key order this gives within each 16-key group is the
//! one the prepared Vᵀ is stored in (`config::v8_key_slot`). `cfg(test)` is for the host test
//! that compiles this file (tests/cpu_device_arith.rs); the device crate is never built with it.

use crate::config::P8_MAX;
use crate::ptx;
use crate::unroll::unroll;

/// Probabilities in [0, 1] → `round(P8_MAX · p)` as u8: `p · 255 + 1.5·2^23` rounds the product
/// to an integer in the low mantissa bits (one fused multiply-add, round-to-nearest-even).
#[inline(always)]
pub(crate) fn p_to_u8_bits(p: f32) -> u32 {
    ptx::fma(p, P8_MAX, 12_582_912.0).to_bits()
}

/// The low bytes of four words, packed (`a` lowest).
#[inline(always)]
pub(crate) fn pack_bytes(a: u32, b: u32, c: u32, d: u32) -> u32 {
    ptx::prmt(ptx::prmt(a, b, 0x0040), ptx::prmt(c, d, 0x0040), 0x5410)
}

/// f32 probabilities (accumulator layout: n-tile j of 8 keys, element e at row `g + 8(e >> 1)`,
/// key `8j + 2t + (e & 1)` for lane `4g + t`) → the u8 A fragments of the 8-bit `P·V`: k-step kk
/// covers keys `32kk..32kk+32` (n-tiles `4kk..4kk+4`); lane `4g + t` puts its keys
/// `2t, 2t+1, 8+2t, 9+2t` of a 16-key group into k slots `4t..4t+4` (a0: row g, a1: row g+8;
/// a2/a3 the second 16-key group), the order the Vᵀ rows are stored in (`config::v8_key_slot`).
/// `NK / 4` k-steps (2 for a 64-key tile, 4 for 128); the rest are zero.
#[inline(always)]
pub(crate) fn pack_probs_u8<const NK: usize>(s: &[[f32; 4]; NK]) -> [[u32; 4]; 4] {
    // Not [`pack_probs`] with a byte closure: that order of the conversions changed the
    // instruction schedule (the PTX) of the INT8 kernels, which stay as they were measured.
    let mut probs = [[0u32; 4]; 4];
    unroll::<4>(
        #[inline(always)]
        |kk| {
            if 4 * kk >= NK {
                return;
            }
            let u = |j: usize, e: usize| p_to_u8_bits(s[4 * kk + j][e]);
            probs[kk] = [
                pack_bytes(u(0, 0), u(0, 1), u(1, 0), u(1, 1)),
                pack_bytes(u(0, 2), u(0, 3), u(1, 2), u(1, 3)),
                pack_bytes(u(2, 0), u(2, 1), u(3, 0), u(3, 1)),
                pack_bytes(u(2, 2), u(2, 3), u(3, 2), u(3, 3)),
            ];
        },
    );
    probs
}

/// [`pack_probs_u8`]'s fragment layout with any byte format (the FP8 P·V's e4m3): `pack(a, b, c, d)` turns four
/// probabilities into one word, `a` in the lowest byte. The 8-bit formats share this layout (the
/// mma.sync m16n8k32 A fragment and wgmma's A from registers are the same for u8, s8 and e4m3),
/// so the prepared Vᵀ's key order serves all of them.
#[cfg(any(feature = "ada_fp8", feature = "hopper", test))]
#[inline(always)]
pub(crate) fn pack_probs<const NK: usize>(
    s: &[[f32; 4]; NK],
    pack: impl Fn(f32, f32, f32, f32) -> u32,
) -> [[u32; 4]; 4] {
    let mut probs = [[0u32; 4]; 4];
    unroll::<4>(
        #[inline(always)]
        |kk| {
            if 4 * kk >= NK {
                return;
            }
            let p = |j: usize| s[4 * kk + j];
            probs[kk] = [
                pack(p(0)[0], p(0)[1], p(1)[0], p(1)[1]),
                pack(p(0)[2], p(0)[3], p(1)[2], p(1)[3]),
                pack(p(2)[0], p(2)[1], p(3)[0], p(3)[1]),
                pack(p(2)[2], p(2)[3], p(3)[2], p(3)[3]),
            ];
        },
    );
    probs
}

/// Probabilities already in e4m3 units (the tile's row maximum at `P_FP8_MAX`: the softmax's
/// `p_scale_log2` is `LOG2_P_FP8_MAX`) → e4m3 fragments (`cvt.rn.satfinite`): the FP8 P·V of the
/// sm_89 mma.sync kernel and of the sm_90a wgmma kernel, which round P the same way (one CPU
/// emulation).
#[cfg(any(feature = "ada_fp8", feature = "hopper", test))]
#[inline(always)]
pub(crate) fn pack_probs_e4m3<const NK: usize>(p: &[[f32; 4]; NK]) -> [[u32; 4]; 4] {
    pack_probs::<NK>(p, ptx::pack_e4m3x4)
}
