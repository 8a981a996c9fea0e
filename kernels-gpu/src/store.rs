//! What every attention kernel's epilogue does the same way once a row's values are final: the
//! output pair in the output dtype, the 8-bit P·V's undoing of its V scalings, and the LSE. Shared
//! by the portable f16 and 8-bit kernels and the sm_90a kernel.

use crate::params::AttnParams;
use crate::ptx;

const LN_2: f32 = core::f32::consts::LN_2;

/// Two adjacent output values packed in the output dtype (bf16 or f16).
#[inline(always)]
pub(crate) fn pack_out(p: &AttnParams, a: f32, b: f32) -> u32 {
    if p.out_bf16 != 0 {
        ptx::pack_bf16x2(a, b)
    } else {
        ptx::pack_f16x2(a, b)
    }
}

/// Columns `col`, `col + 1` of an 8-bit P·V row (`O / l`, in units of `1 / inv_p_max` — `P8_MAX`
/// for u8 P, whose row sums `l` are of P in [0, 1]; 1 for e4m3, whose row sums are in P's unit —
/// and of each channel's V scale) back in V's units, with the V mean that smoothing took away
/// added back.
///
/// # Safety
/// `v_scale` / `v_mean` point at this kv head's scales and mean, `col + 1` inside them.
#[inline(always)]
pub(crate) unsafe fn unsmooth_v8_scaled(
    v_scale: u64,
    v_mean: u64,
    col: u32,
    a: f32,
    b: f32,
    inv_p_max: f32,
) -> (f32, f32) {
    let at = 4 * col as u64;
    // SAFETY: the caller's contract.
    let (sa, sb, ma, mb) = unsafe {
        (
            ptx::ld_global_nc_f32(v_scale + at),
            ptx::ld_global_nc_f32(v_scale + at + 4),
            ptx::ld_global_nc_f32(v_mean + at),
            ptx::ld_global_nc_f32(v_mean + at + 4),
        )
    };
    (
        ptx::fma(a, sa * inv_p_max, ma),
        ptx::fma(b, sb * inv_p_max, mb),
    )
}

/// Writes the LSE (natural log) of query `row` of (batch, head): `-inf` for a row that saw no key
/// (`sum == 0`), else `(max + log2 sum − sum_unit_log2)·ln 2` plus the smoothing shift of
/// `p.lse_bias` if any. `sum_unit_log2`: the row sum's unit (0 for sums of P in [0, 1]; the FP8
/// P·V's sums are in its e4m3 P's unit, `LOG2_P_FP8_MAX`).
///
/// # Safety
/// `p.lse` (and `p.lse_bias` when non-zero) hold `batch * q_heads * qo_len` f32, `row < qo_len`.
#[inline(always)]
pub(crate) unsafe fn store_lse(
    p: &AttnParams,
    batch: u32,
    head: u32,
    row: u32,
    sum: f32,
    max: f32,
    sum_unit_log2: f32,
) {
    let max = max - sum_unit_log2;
    let idx = (batch as u64 * p.q_heads as u64 + head as u64) * p.qo_len as u64 + row as u64;
    let lse = if sum == 0.0 {
        f32::NEG_INFINITY
    } else {
        let smoothing_shift = if p.lse_bias != 0 {
            // SAFETY: idx < batch * q_heads * qo_len, the bias buffer's length.
            unsafe { ptx::ld_global_nc_f32(p.lse_bias + 4 * idx) }
        } else {
            0.0
        };
        (max + ptx::lg2(sum)) * LN_2 + smoothing_shift
    };
    // SAFETY: idx < batch * q_heads * qo_len, the LSE buffer's length.
    unsafe { ptx::st_global_f32(p.lse + 4 * idx, lse) };
}
