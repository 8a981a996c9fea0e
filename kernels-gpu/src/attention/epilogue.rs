//! Epilogue: normalize by the row sum, convert to the output dtype, store; write the LSE.

use super::softmax::OnlineSoftmax;
use super::{BlockGeometry, OutAcc};
use crate::frag::{acc_col, acc_row};
use crate::params::AttnParams;
use crate::ptx;
use crate::store::{pack_out, store_lse};
use crate::unroll::unroll;

/// Writes this warp's rows of O (and LSE when requested): the first `p.head_dim` of the `HD`
/// columns (the rest belong to the zero padding of a smaller head_dim).
///
/// # Safety
/// `p.o` (and `p.lse` when non-zero) are valid for `[batch][q_heads][qo_len][p.head_dim]` with
/// the given strides, `p.head_dim <= HD`.
#[inline(always)]
pub(crate) unsafe fn store<const HD: usize, const NT: usize, const MT: usize>(
    p: &AttnParams,
    geo: &BlockGeometry,
    softmax: &OnlineSoftmax<MT>,
    out: &OutAcc<NT, MT>,
) {
    let lane = ptx::lane_id();
    let warp_row0 = geo.q_row0 + ptx::warp_id() * 16 * MT as u32;
    let head_base =
        p.o as i64 + 2 * (geo.batch as i64 * p.o_stride[0] + geo.head as i64 * p.o_stride[1]);
    unroll::<MT>(
        #[inline(always)]
        |mt| {
            unroll::<2>(
                #[inline(always)]
                |h| {
                    // Shuffles first: every lane must take part, whether or not its row exists.
                    let l = softmax.row_sum(mt, h);
                    let inv = if l == 0.0 { 0.0 } else { ptx::rcp(l) };
                    let row = warp_row0 + mt as u32 * 16 + acc_row(lane, 2 * h);
                    if row < p.qo_len {
                        let row_ptr = head_base + 2 * row as i64 * p.o_stride[2];
                        unroll::<NT>(
                            #[inline(always)]
                            |nt| {
                                if nt as u32 * 8 >= p.head_dim {
                                    return;
                                }
                                let c = out[mt][nt];
                                let (a, b) = (c[2 * h] * inv, c[2 * h + 1] * inv);
                                let packed = pack_out(p, a, b);
                                let col = nt as u32 * 8 + acc_col(lane, 0);
                                // SAFETY: row < qo_len and col + 1 < p.head_dim: inside the
                                // validated output.
                                unsafe {
                                    ptx::st_global_u32((row_ptr + 2 * col as i64) as u64, packed)
                                };
                            },
                        );
                        if p.lse != 0 && lane & 3 == 0 {
                            // SAFETY: row < qo_len; the LSE buffers were validated for these shapes.
                            unsafe {
                                store_lse(p, geo.batch, geo.head, row, l, softmax.max[mt][h], 0.0)
                            };
                        }
                    }
                },
            );
        },
    );
    let _ = HD;
}
