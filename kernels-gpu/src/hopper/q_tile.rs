//! A consumer warpgroup's 64 rows of Q in shared memory (INT8, K-major with the wgmma swizzle of
//! `smem::kmajor_offset`) and the per-token scales of the two rows each thread's fragments hold.
//!
//! Two sources, chosen per launch by `AttnParams::q_raw`:
//! * the prepared INT8 Q and its scales (written by the preparation's Q job), copied with
//!   `cp.async`;
//! * the caller's f16/bf16 Q, quantized here with the preparation's arithmetic (docs/design.md,
//!   "Quantization" 2, per token, through `quant_arith`), so the bits are the same and the CPU
//!   emulation holds unchanged. Two shortcuts keep the prologue short, both exact: the row
//!   maximum is taken on the 16-bit inputs (`max.u16x2`) and scaled once, and the rounding is a
//!   magic-number add instead of a conversion (`quant_arith::pack_s8x8_bounded`). The call then
//!   has no Q job: it saves reading Q and writing its INT8 copy in the preparation, and the
//!   kernel reads 2 bytes per value instead of 1 (issue 11: the preparation was a third of a
//!   call at N = 1K; docs/perf-notes.md, v9, for what it gained and what it costs).
//!
//! Both are split in two so that the first K/V tile copies are issued in between: [`QTile::begin`]
//! starts the loads, [`QTile::finish`] lands the tile and returns the scales. Then the caller
//! makes the tile visible to wgmma (proxy fence) and synchronises the warpgroup.

use super::smem::kmajor_offset;
use crate::config::{padded_len, Q_BLOCK};
use crate::params::AttnParams;
use crate::ptx;
use crate::quant_arith::{bounded_pack_exact, inv_scale, pack_s8x8, pack_s8x8_bounded, scaled8};
use crate::unroll::unroll;

/// Upper bound of one thread's 16-byte loads of raw Q: `HD/16` (two threads per row).
const MAX_RAW_LOADS: usize = 16;

/// The row of the warpgroup's 64 (lanes 2r and 2r + 1 of warp w hold row 16w + r) and the half
/// of each 16-channel chunk (`0` or `1`: channels `16j + 8·half ..`) thread `wtid` takes of raw Q.
#[inline(always)]
fn raw_row(wtid: u32) -> (u32, u32) {
    (16 * (wtid >> 5) + ((wtid & 31) >> 1), wtid & 1)
}

/// Q's loads in flight for one thread (see the module docs).
pub(super) struct QTile {
    /// Raw Q: this thread's `HD/16` 16-byte chunks, zero where the row or the channels lie past
    /// the caller's Q.
    raw: [[u32; 4]; MAX_RAW_LOADS],
    /// Prepared Q: the scales of this thread's two fragment rows.
    scale: [f32; 2],
}

impl QTile {
    /// Starts loading the 64 rows of Q from query row `row0` of (`batch`, `head`) into the
    /// warpgroup's tile at shared address `dst` (every thread of the warpgroup calls it; `wtid`
    /// is its index there). Rows past `qo_len` become zeros with scale 0, as the preparation's
    /// padding rows. The prepared source holds whole 128-row blocks, so a warpgroup whose rows
    /// all lie past it (the third of a 192-row CTA) reads the first block instead and stores
    /// nothing.
    ///
    /// # Safety
    /// `p` is validated for this launch; `dst` is the warpgroup's tile of 64 rows of
    /// `config::sm90_kmajor_row_bytes(HD)` bytes.
    #[inline(always)]
    pub(super) unsafe fn begin<const HD: usize>(
        p: &AttnParams,
        batch: u32,
        head: u32,
        row0: u32,
        dst: u32,
        wtid: u32,
    ) -> Self {
        let q_head = (batch * p.q_heads + head) as u64;
        let mut tile = QTile {
            raw: [[0; 4]; MAX_RAW_LOADS],
            scale: [0.0; 2],
        };
        if p.q_raw != 0 {
            // Two threads per row (lanes 2r and 2r + 1 of a warp hold row 16·warp + r), each
            // 8 channels of every 16-channel chunk: a warp's load reads 32 whole bytes per row.
            let (r, half) = raw_row(wtid);
            let row = row0 + r;
            let row_ptr = p.q_raw as i64
                + 2 * (batch as i64 * p.q_stride[0]
                    + head as i64 * p.q_stride[1]
                    + row as i64 * p.q_stride[2]);
            unroll::<MAX_RAW_LOADS>(
                #[inline(always)]
                |j| {
                    let col = 16 * j as u32 + 8 * half;
                    if j < HD / 16 && row < p.qo_len && col < p.head_dim {
                        // SAFETY: row < qo_len and col + 8 <= head_dim: inside the validated Q.
                        tile.raw[j] =
                            unsafe { ptx::ld_global_nc_v4((row_ptr + 2 * col as i64) as u64) };
                    }
                },
            );
        } else {
            let padded_q = padded_len(p.qo_len as usize, Q_BLOCK) as u64;
            let mut first = row0 as u64;
            if first >= padded_q {
                first = 0;
            }
            let src = p.q + (q_head * padded_q + first) * HD as u64;
            let cpr = (HD / 16) as u32;
            unroll::<{ 64 * 16 / 128 }>(
                #[inline(always)]
                |j| {
                    // HD/16 chunks per row: 64 rows × HD/16 chunks over 128 threads = HD/32 each.
                    if (j as u32) < (HD / 32) as u32 {
                        let i = wtid + 128 * j as u32;
                        let (r, c) = (i / cpr, i % cpr);
                        // SAFETY: inside the padded Q.
                        unsafe {
                            ptx::cp_async_16(
                                dst + kmajor_offset::<HD>(r, c),
                                src + (r * HD as u32 + 16 * c) as u64,
                            )
                        };
                    }
                },
            );
            ptx::cp_async_commit();
            let lane = wtid & 31;
            let scale_row =
                q_head * padded_q + first + 16 * (wtid >> 5) as u64 + (lane >> 2) as u64;
            // SAFETY: scale_row + 8 < (q_head + 1) * padded_q: inside the [b][h][padded_q] scales.
            tile.scale = unsafe {
                [
                    ptx::ld_global_nc_f32(p.q_scale + 4 * scale_row),
                    ptx::ld_global_nc_f32(p.q_scale + 4 * (scale_row + 8)),
                ]
            };
        }
        tile
    }

    /// Lands the tile in shared memory (raw Q: quantizes and stores it) and returns the scales of
    /// this thread's fragment rows `lane/4` and `lane/4 + 8` of its warp's 16. Every thread of the
    /// warpgroup calls it (the raw path shuffles).
    ///
    /// # Safety
    /// As [`QTile::begin`], with the same `dst` and `wtid`.
    #[inline(always)]
    pub(super) unsafe fn finish<const HD: usize>(
        self,
        p: &AttnParams,
        dst: u32,
        wtid: u32,
    ) -> [f32; 2] {
        if p.q_raw == 0 {
            ptx::cp_async_wait::<0>();
            return self.scale;
        }
        let bf16 = p.q_bf16 != 0;
        let (r, half) = raw_row(wtid);
        // The row's maximum of |x · mult| is the maximum |x| times |mult| (rounding is monotone
        // and symmetric), taken on the 16-bit inputs: with the sign cleared, their bits order as
        // their magnitudes, a NaN above everything (as the preparation's NaN-propagating max).
        let mut m = 0u32;
        unroll::<MAX_RAW_LOADS>(
            #[inline(always)]
            |j| {
                if j < HD / 16 {
                    unroll::<4>(
                        #[inline(always)]
                        |w| m = ptx::max_u16x2(m, self.raw[j][w] & 0x7fff_7fff),
                    );
                }
            },
        );
        let m = (m & 0xffff).max(m >> 16);
        let m = m.max(ptx::shfl_xor_u32(m, 1));
        let x_max = if bf16 {
            ptx::unpack_bf16x2(m).0
        } else {
            ptx::unpack_f16x2(m).0
        };
        let amax = ptx::mul_rn(x_max, ptx::abs(p.q_mult));
        let inv = inv_scale(amax);
        // The conversion-free rounding holds unless the maximum is NaN or infinite or `inv`
        // overflowed (a subnormal maximum); such a row takes the preparation's conversion.
        let bounded = bounded_pack_exact(amax, inv);
        unroll::<MAX_RAW_LOADS>(
            #[inline(always)]
            |j| {
                if j < HD / 16 {
                    let x = scaled8(&self.raw[j], bf16, p.q_mult);
                    let packed = if bounded {
                        pack_s8x8_bounded(&x, inv)
                    } else {
                        pack_s8x8(&x, inv)
                    };
                    let dst = dst + kmajor_offset::<HD>(r, j as u32) + 8 * half;
                    // SAFETY: r < 64 and j < HD/16: inside the warpgroup's tile; 8-byte aligned.
                    unsafe { ptx::st_shared_v2(dst, packed) };
                }
            },
        );
        // Row r of the warp is held by lanes 2r and 2r + 1; this thread's fragment rows are
        // lane/4 and lane/4 + 8.
        let scale = (amax / 127.0).to_bits();
        let lane = wtid & 31;
        [
            f32::from_bits(ptx::shfl_idx_u32(scale, 2 * (lane >> 2))),
            f32::from_bits(ptx::shfl_idx_u32(scale, 2 * (lane >> 2) + 16)),
        ]
    }
}
