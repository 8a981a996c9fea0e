//! Epilogue of the portable 8-bit P·V kernel: normalize by the row sum, undo the 8-bit scalings
//! (O is in units of `P8_MAX` and of each channel's V scale; the V mean smoothing took away is
//! added back, except on rows that see no key, which stay 0), convert, store; write the LSE.
//! The same arithmetic as the sm_90a kernel's 8-bit epilogue.

use super::format::PvFormat;
use super::Geometry;
use crate::frag::{acc_col, acc_row};
use crate::params::AttnParams;
use crate::ptx;
use crate::softmax16::OnlineSoftmax;
use crate::store::{pack_out, store_lse, unsmooth_v8_scaled};
use crate::unroll::unroll;

/// Writes this warp's 16 rows of O (and the LSE when requested): the first `p.head_dim` of the
/// `HD` columns (the rest belong to the zero padding of a smaller head_dim, as in the f16 P·V
/// kernel's epilogue).
///
/// # Safety
/// `p.o` (and `p.lse` when non-zero) are valid for `[batch][q_heads][qo_len][p.head_dim]` with
/// the given strides, `p.head_dim <= HD` a multiple of 8; `p.v_scale` / `p.v_mean` hold
/// `[batch][kv_heads][2][HD]` / `[batch][kv_heads][HD]` f32.
#[inline(always)]
pub(crate) unsafe fn store<F: PvFormat, const HD: usize, const NT: usize>(
    p: &AttnParams,
    geo: &Geometry,
    softmax: &OnlineSoftmax,
    out: &[[f32; 4]; NT],
) {
    let lane = ptx::lane_id();
    // d = 256: recomputed here (opaque), not kept from the main loop's copy, whose one register
    // across the loop spilled. d ≤ 128 keep their schedule.
    let warp = if HD > 128 {
        ptx::opaque_u32(ptx::warp_id())
    } else {
        ptx::warp_id()
    };
    let warp_row0 = geo.q_row0 + 16 * warp;
    let head_base =
        p.o as i64 + 2 * (geo.batch as i64 * p.o_stride[0] + geo.head as i64 * p.o_stride[1]);
    let kv_head = (geo.batch * p.kv_heads + geo.kv_head) as u64;
    let v_scale = p.v_scale + 4 * kv_head * 2 * HD as u64;
    let v_mean = p.v_mean + 4 * kv_head * HD as u64;
    unroll::<2>(
        #[inline(always)]
        |h| {
            // Shuffles first: every lane must take part, whether or not its row exists.
            let l = softmax.row_sum(h);
            let inv = if l == 0.0 { 0.0 } else { ptx::rcp(l) };
            let row = warp_row0 + acc_row(lane, 2 * h);
            if row < p.qo_len {
                let row_ptr = head_base + 2 * row as i64 * p.o_stride[2];
                unroll::<NT>(
                    #[inline(always)]
                    |nt| {
                        if nt as u32 * 8 >= p.head_dim {
                            return;
                        }
                        let c = out[nt];
                        let col = 8 * nt as u32 + acc_col(lane, 0);
                        let (mut a, mut b) = (c[2 * h] * inv, c[2 * h + 1] * inv);
                        if l != 0.0 {
                            // SAFETY: col + 1 < HD: inside this kv head's scales and mean.
                            (a, b) = unsafe {
                                unsmooth_v8_scaled(v_scale, v_mean, col, a, b, F::INV_P_MAX)
                            };
                        }
                        let packed = pack_out(p, a, b);
                        // SAFETY: row < qo_len and col + 1 < p.head_dim: inside the validated
                        // output.
                        unsafe { ptx::st_global_u32((row_ptr + 2 * col as i64) as u64, packed) };
                    },
                );
                if p.lse != 0 && lane & 3 == 0 {
                    // SAFETY: row < qo_len; the LSE buffers were validated for these shapes.
                    unsafe {
                        store_lse(
                            p,
                            geo.batch,
                            geo.head,
                            row,
                            l,
                            softmax.max[h],
                            F::P_SCALE_LOG2,
                        )
                    };
                }
            }
        },
    );
}
