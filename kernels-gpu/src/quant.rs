//! Smoothing and per-block INT8 quantization, bit-exact with `host/quant_ref.rs` (the contract is
//! docs/design.md, "Quantization"): f32 arithmetic in a fixed order, `max.NaN` for the block
//! maximum, `cvt.rni.sat` for rounding. Also the bf16 → f16 copy of V and the LSE bias. These are
//! jobs of the fused preparation kernel (`prepare.rs`), one CTA at a time; `sage_copy_columns`
//! (after the attention kernel) is the only entry here.

use crate::config::{
    k_head_group_smem_bytes, padded_len, CONVERT_CHUNKS_PER_THREAD, K_CHUNKS_PER_THREAD,
    K_HEAD_SUM_AHEAD, K_MEAN_AHEAD, MEAN_SEGMENT_ROWS, MEAN_SEQ_LANES, QUANT_MAX_SLOTS_BYTES,
};
use crate::params::{ConvertParams, LseBiasParams, MeanParams, QuantParams};
use crate::ptx;
use crate::quant_arith::{
    abs_max8, bounded_pack_exact, inv_scale, pack_s8x8, pack_s8x8_bounded, scaled8, unpack8,
};
use crate::unroll::unroll;

/// The threads that run one job together and how they sync: the whole CTA (`Group::cta`, every
/// job of `sage_prepare`), or one of the groups of a `sage_prepare_k_head` CTA (`Group::part`):
/// `threads` consecutive threads of the block, a thread index from 0 within the group, their own
/// named barrier and their own shared memory. A job run by a group computes exactly what it
/// computes as a whole CTA of `threads` threads: the same thread ↔ data map (from the group-local
/// index), the same arithmetic, the same shared-memory layout (from the group's base).
#[derive(Clone, Copy)]
pub(crate) struct Group {
    /// Thread index within the group.
    tid: u32,
    /// Threads of the group.
    threads: u32,
    /// Named barrier of the group; 0: the group is the CTA (`bar.sync 0`).
    barrier: u32,
    /// Shared address of the group's dynamic shared memory.
    smem: u32,
}

impl Group {
    /// The whole CTA.
    #[inline(always)]
    pub(crate) fn cta() -> Self {
        Group {
            tid: ptx::thread_idx_x(),
            threads: ptx::block_dim_x(),
            barrier: 0,
            smem: ptx::smem_base(),
        }
    }

    /// Group `index` of `threads` threads (a multiple of 32), barrier `1 + index`, shared memory
    /// at `smem`.
    #[inline(always)]
    pub(crate) fn part(index: u32, threads: u32, smem: u32) -> Self {
        Group {
            tid: ptx::thread_idx_x() - index * threads,
            threads,
            barrier: 1 + index,
            smem,
        }
    }

    /// Waits for every thread of the group (every thread of it must call it).
    #[inline(always)]
    pub(crate) fn sync(&self) {
        if self.barrier == 0 {
            ptx::sync_threads();
        } else {
            ptx::named_barrier_sync(self.barrier, self.threads);
        }
    }
}

/// Where a segment's sums go: K's segment-sum buffer (`MeanParams::partials`, read by a later
/// launch), or `[segment][head_dim]` f32 in shared memory at this address (`sage_prepare_k_head`).
#[derive(Clone, Copy)]
pub(crate) enum SumsOut {
    Global,
    Shared(u32),
}

/// Where a smoothing K quantization gets K's mean.
#[derive(Clone, Copy)]
pub(crate) enum MeanFrom<'a> {
    /// Staged by the CTA (`stage_k_mean`): folded from the segment sums when the flag is set,
    /// else read from the mean buffer.
    Stage(&'a MeanParams, bool),
    /// Already in shared memory at this address (`head_dim` f32), visible to every thread.
    Shared(u32),
}

/// Loads 8 consecutive f16 or bf16 values (16 bytes) as f32.
///
/// # Safety
/// `ptr` is a 16-byte aligned global address of 16 readable bytes.
#[inline(always)]
pub(crate) unsafe fn load8(ptr: u64, bf16: bool) -> [f32; 8] {
    unpack8(&unsafe { ptx::ld_global_nc_v4(ptr) }, bf16)
}

/// Sum of K over one segment of `MEAN_SEGMENT_ROWS` rows, per (batch, head, channel): the first
/// step of the K mean (docs/design.md, "Quantization"), job `SUM_K`. A group of
/// `head_dim/8 * 16` threads: thread = (16-byte column chunk, sequence lane); `16 * head_dim * 4`
/// bytes of the group's shared memory. The sums go to `out`.
///
/// # Safety
/// Valid parameters and that geometry; every thread of the group calls it with the same
/// coordinates; with `SumsOut::Shared`, the buffer holds the head's segments.
#[inline(always)]
pub(crate) unsafe fn segment_sums<const AHEAD: usize>(
    g: &Group,
    p: &MeanParams,
    segment: u32,
    head: u32,
    batch: u32,
    out: SumsOut,
) {
    let tid = g.tid;
    let chunks = p.head_dim / 8;
    let (chunk, lane) = (tid % chunks, tid / chunks);
    let bf16 = p.in_bf16 != 0;
    let head_ptr = p.k as i64 + 2 * (batch as i64 * p.k_stride[0] + head as i64 * p.k_stride[1]);
    let start = segment * MEAN_SEGMENT_ROWS as u32;
    let end = (start + MEAN_SEGMENT_ROWS as u32).min(p.seq);
    let lanes = MEAN_SEQ_LANES as u32;
    let row_ptr = |s: u32| (head_ptr + 2 * (s as i64 * p.k_stride[2] + chunk as i64 * 8)) as u64;
    let mut sum = [0.0f32; 8];
    // Rows start + lane, start + lane + 16, … are summed in increasing order (the contract); the
    // loads of AHEAD rows are issued before their adds so each thread keeps several in flight
    // (AHEAD changes only when the loads are issued, never the order of the adds: any AHEAD gives
    // the same bits).
    let ahead = AHEAD as u32;
    let mut s = start + lane;
    while s + (ahead - 1) * lanes < end {
        let mut x = [[0.0f32; 8]; AHEAD];
        // SAFETY: every row s + j*16 < end <= seq and chunk < head_dim/8: inside K.
        unroll::<AHEAD>(
            #[inline(always)]
            |j| x[j] = unsafe { load8(row_ptr(s + j as u32 * lanes), bf16) },
        );
        unroll::<AHEAD>(
            #[inline(always)]
            |j| {
                unroll::<8>(
                    #[inline(always)]
                    |i| sum[i] += x[j][i],
                )
            },
        );
        s += ahead * lanes;
    }
    while s < end {
        // SAFETY: s < seq and chunk < head_dim/8: inside K.
        let x = unsafe { load8(row_ptr(s), bf16) };
        unroll::<8>(
            #[inline(always)]
            |i| sum[i] += x[i],
        );
        s += lanes;
    }
    // partial[lane][channel] in shared memory, then the fixed tree over lanes (8, 4, 2, 1).
    let base = g.smem;
    let slot = |lane: u32, i: usize| base + 4 * (lane * p.head_dim + chunk * 8 + i as u32);
    // SAFETY: lane < 16 and channel < head_dim: inside the 16*head_dim*4-byte buffer.
    unroll::<8>(
        #[inline(always)]
        |i| unsafe { ptx::st_shared_f32(slot(lane, i), sum[i]) },
    );
    let mut stride = lanes / 2;
    while stride > 0 {
        g.sync();
        if lane < stride {
            unroll::<8>(
                #[inline(always)]
                |i| unsafe {
                    let v = ptx::ld_shared_f32(slot(lane, i))
                        + ptx::ld_shared_f32(slot(lane + stride, i));
                    ptx::st_shared_f32(slot(lane, i), v);
                },
            );
        }
        stride /= 2;
    }
    g.sync();
    if lane == 0 {
        if let SumsOut::Shared(sums) = out {
            let at = sums + 4 * (segment * p.head_dim + chunk * 8);
            unroll::<8>(
                #[inline(always)]
                |i| {
                    // SAFETY: inside the [segments][head_dim] shared buffer.
                    unsafe {
                        ptx::st_shared_f32(at + 4 * i as u32, ptx::ld_shared_f32(slot(0, i)))
                    };
                },
            );
            return;
        }
        let segments = p.seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
        let row = ((batch * p.heads + head) as u64 * segments + segment as u64) * p.head_dim as u64;
        let out = p.partials + 4 * (row + chunk as u64 * 8);
        unroll::<8>(
            #[inline(always)]
            |i| {
                // SAFETY: inside the [batch][heads][segments][head_dim] partials buffer.
                unsafe { ptx::st_global_f32(out + 4 * i as u64, ptx::ld_shared_f32(slot(0, i))) };
            },
        );
    }
}

/// K's mean of channel `d` of head `bh` (`batch * heads + head`) from the segment sums in the
/// partials buffer ([`mean_of_segment_sums`]): the `K_MEAN` job and every CTA that folds the mean
/// in (`stage_k_mean`) call it.
///
/// # Safety
/// `d < head_dim`, `bh < batch * heads`; the segment sums were written by an earlier launch.
#[inline(always)]
unsafe fn k_mean_channel<const AHEAD: usize>(p: &MeanParams, bh: u64, d: u64) -> f32 {
    let segments = p.seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
    let at = p.partials + 4 * (bh * segments * p.head_dim as u64 + d);
    let step = 4 * p.head_dim as u64;
    // SAFETY: segment s < segments of this head: inside the partials buffer.
    mean_of_segment_sums::<AHEAD>(p.seq, |s| unsafe { ptx::ld_global_nc_f32(at + s * step) })
}

/// K's mean of one channel from its segment sums (`sum(s)` for segment `s`):
/// `((0 + s₀) + s₁) + …` in segment order, divided by the length (docs/design.md,
/// "Quantization"). The one implementation of that order, whether the sums are in global memory
/// (`k_mean_channel`) or in shared memory (`k_head`), so the mean has the same bits wherever it is
/// computed. `AHEAD` (≥ 2) sums are loaded before their adds: it changes when the loads are
/// issued, never the adds' order.
#[inline(always)]
fn mean_of_segment_sums<const AHEAD: usize>(seq: u32, sum: impl Fn(u64) -> f32) -> f32 {
    let segments = seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
    let ahead = AHEAD as u64;
    let mut total = 0.0f32;
    let mut seg = 0;
    while seg + ahead <= segments {
        let mut x = [0.0f32; AHEAD];
        unroll::<AHEAD>(
            #[inline(always)]
            |j| x[j] = sum(seg + j as u64),
        );
        unroll::<AHEAD>(
            #[inline(always)]
            |j| total += x[j],
        );
        seg += ahead;
    }
    // The rest in pairs, then one (for AHEAD = 2 only the one: no loop, which k_head's
    // 64-register budget and the folds' need).
    if AHEAD > 2 {
        while seg + 2 <= segments {
            let (x0, x1) = (sum(seg), sum(seg + 1));
            total += x0;
            total += x1;
            seg += 2;
        }
    }
    if seg < segments {
        total += sum(seg);
    }
    total / seq as f32
}

/// Job `K_MEAN`: K's mean of head `bh`, one thread per channel (any block size), into the mean
/// buffer. Runs only when the consumers do not fold the mean in (`PrepareParams::fold`).
///
/// # Safety
/// Valid parameters, `bh < batch * heads`, after the launch that wrote the segment sums.
#[inline(always)]
pub(crate) unsafe fn k_mean(p: &MeanParams, bh: u32) {
    let bh = bh as u64;
    let mut d = ptx::thread_idx_x();
    while d < p.head_dim {
        // SAFETY: d < head_dim: inside the partials and the [batch][heads][head_dim] mean buffer.
        unsafe {
            let m = k_mean_channel::<K_MEAN_AHEAD>(p, bh, d as u64);
            ptx::st_global_f32(p.mean + 4 * (bh * p.head_dim as u64 + d as u64), m);
        }
        d += ptx::block_dim_x();
    }
}

/// Puts K's mean of head `bh` (`head_dim` f32) into shared memory at `smem`: reduced from the
/// segment sums when `fold` (and also stored to the mean buffer when `publish`, for the readers
/// after this launch), else read from the mean buffer the `K_MEAN` job of an earlier launch wrote.
/// Every thread of the CTA calls it; the caller syncs before reading `smem`.
///
/// # Safety
/// Valid parameters, `bh < batch * heads`, `head_dim * 4` bytes of shared memory at `smem`; the
/// segment sums (fold) or the mean (no fold) come from an earlier launch; when `publish`, no other
/// CTA of this launch reads the mean buffer.
#[inline(always)]
unsafe fn stage_k_mean(p: &MeanParams, fold: bool, publish: bool, bh: u64, smem: u32) {
    let mut d = ptx::thread_idx_x();
    while d < p.head_dim {
        let at = p.mean + 4 * (bh * p.head_dim as u64 + d as u64);
        // SAFETY: d < head_dim: inside the partials, the mean buffer and `smem`.
        unsafe {
            let m = if fold {
                let m = k_mean_channel::<2>(p, bh, d as u64);
                if publish {
                    ptx::st_global_f32(at, m);
                }
                m
            } else {
                ptx::ld_global_nc_f32(at)
            };
            ptx::st_shared_f32(smem + 4 * d, m);
        }
        d += ptx::block_dim_x();
    }
}

/// Jobs `QUANT_Q` and `QUANT_K`: symmetric INT8 quantization of one block of rows of Q (scaled by
/// `mult`; one scale per row, `PER_ROW`) or K (minus the mean when `smooth` is given: K's mean
/// parameters and whether to fold the mean in; one scale per block). Block dimension: see
/// `config::prep_threads_ok` (`CHUNKS` chunks per thread cover the block; every thread's chunks
/// share one column chunk); `config::prep_smem_bytes` bytes of dynamic shared memory.
///
/// One pass over global memory: each thread loads its `CHUNKS` 16-byte chunks
/// up front (all in flight at once), keeps them in registers for the maxima, and quantizes
/// from the same registers. With `smooth` the mean is staged while those loads are in flight; the
/// CTA of block 0 publishes it when it folds it.
///
/// # Safety
/// Valid parameters and that geometry; every thread of the group calls it with the same
/// coordinates.
#[inline(always)]
pub(crate) unsafe fn quantize_block<const CHUNKS: usize, const PER_ROW: bool>(
    g: &Group,
    p: &QuantParams,
    blk: u32,
    head: u32,
    batch: u32,
    smooth: Option<MeanFrom>,
) {
    if !PER_ROW && is_whole_block::<CHUNKS>(g, p, blk) {
        // SAFETY (both): forwarded; the geometry is the one `quantize_whole_block` requires.
        return unsafe { quantize_whole_block::<CHUNKS>(g, p, blk, head, batch, smooth) };
    }
    let (tid, threads) = (g.tid, g.threads);
    let chunks = p.head_dim / 8;
    // `threads` is a multiple of `chunks`: chunk i of this thread is c = tid + i * threads, at row
    // `row0 + first_row + i * rows_per_pass` of the block, column chunk `col` for every i.
    let (col, first_row, rows_per_pass) = (tid % chunks, tid / chunks, threads / chunks);
    let row0 = blk * p.block;
    let bf16 = p.in_bf16 != 0;
    let head_ptr = p.x as i64 + 2 * (batch as i64 * p.x_stride[0] + head as i64 * p.x_stride[1]);
    let block_row = |i: usize| first_row + i as u32 * rows_per_pass;
    let in_block = |i: usize| block_row(i) < p.block;
    let in_range = |i: usize| in_block(i) && row0 + block_row(i) < p.seq;

    let mut raw = [[0u32; 4]; CHUNKS];
    unroll::<CHUNKS>(
        #[inline(always)]
        |i| {
            if in_range(i) {
                let row = row0 + block_row(i);
                let ptr = head_ptr + 2 * (row as i64 * p.x_stride[2] + col as i64 * 8);
                // SAFETY: row < seq, col < head_dim/8: inside the validated input.
                raw[i] = unsafe { ptx::ld_global_nc_v4(ptr as u64) };
            }
        },
    );
    // K's mean over this thread's 8 channels, staged while the loads are in flight.
    let mut mean = [0.0f32; 8];
    if let Some(from) = smooth {
        let smem = match from {
            MeanFrom::Stage(mp, fold) => {
                let smem = g.smem + QUANT_MAX_SLOTS_BYTES as u32;
                let bh = (batch * p.heads + head) as u64;
                // SAFETY: forwarded; `head_dim * 4` bytes after the warp slots; block 0 publishes
                // (each head has one), and no CTA of this launch reads the mean buffer when it
                // folds. Only for a whole CTA (`stage_k_mean` strides over the block).
                unsafe { stage_k_mean(mp, fold, blk == 0, bh, smem) };
                g.sync();
                smem
            }
            MeanFrom::Shared(smem) => smem,
        };
        unroll::<8>(
            #[inline(always)]
            // SAFETY: col * 8 + i < head_dim: inside the staged mean.
            |i| mean[i] = unsafe { ptx::ld_shared_f32(smem + 4 * (col * 8 + i as u32)) },
        );
    }
    // The value the contract quantizes: x * mult (Q, and K without smoothing) or x - mean (K).
    let values = |raw: &[u32; 4], mean: &[f32; 8]| -> [f32; 8] {
        if smooth.is_some() {
            let mut x = unpack8(raw, bf16);
            unroll::<8>(
                #[inline(always)]
                |i| x[i] -= mean[i],
            );
            x
        } else {
            scaled8(raw, bf16, p.mult)
        }
    };

    let mut chunk_amax = [0.0f32; CHUNKS];
    unroll::<CHUNKS>(
        #[inline(always)]
        |i| {
            if in_range(i) {
                chunk_amax[i] = abs_max8(0.0, &values(&raw[i], &mean));
            }
        },
    );
    let base = g.smem;
    // The maximum behind the scale of chunk i's row.
    let mut amax = [0.0f32; CHUNKS];
    if PER_ROW {
        // One slot per row of the block, maxed over the row's threads (which need not share a
        // warp: d/8 of them, e.g. 12 at d = 96). The bits of a non-negative f32 order like its
        // value and a NaN with the sign cleared compares above every number, so an unsigned
        // integer max is the NaN-propagating maximum.
        // SAFETY (this block): the slots are `p.block <= Q_BLOCK` words of the job's
        // `prep_smem_bytes`.
        let mut r = tid;
        while r < p.block {
            unsafe { ptx::st_shared_u32(base + 4 * r, 0) };
            r += threads;
        }
        g.sync();
        unroll::<CHUNKS>(
            #[inline(always)]
            |i| {
                if in_block(i) {
                    let bits = chunk_amax[i].to_bits() & 0x7fff_ffff;
                    unsafe { ptx::red_shared_max_u32(base + 4 * block_row(i), bits) };
                }
            },
        );
        g.sync();
        unroll::<CHUNKS>(
            #[inline(always)]
            |i| {
                if in_block(i) {
                    amax[i] =
                        f32::from_bits(unsafe { ptx::ld_shared_u32(base + 4 * block_row(i)) });
                }
            },
        );
    } else {
        let mut m = 0.0f32;
        unroll::<CHUNKS>(
            #[inline(always)]
            |i| m = ptx::max_nan(m, chunk_amax[i]),
        );
        // Block-wide NaN-propagating max: warp butterfly, then one slot per warp. `threads` need
        // not be whole warps (`prep_threads` is an odd multiple of 16 at d = 8, 24, 40, …): the
        // butterfly names only the threads of this warp, and a lane takes its partner's value only
        // when the partner exists, so lane 0 ends with the maximum over the warp's threads (the
        // maximum does not depend on the order).
        let lane = tid & 31;
        let warp_threads = (threads - (tid & !31)).min(32);
        let members = if warp_threads == 32 {
            u32::MAX
        } else {
            (1u32 << warp_threads) - 1
        };
        let mut mask = 16;
        while mask > 0 {
            let other = ptx::shfl_xor_f32_among(m, mask, members);
            if lane ^ mask < warp_threads {
                m = ptx::max_nan(m, other);
            }
            mask /= 2;
        }
        // SAFETY: the group's shared base holds the warp slots.
        amax = [unsafe { block_max_through_slots(g, m) }; CHUNKS];
    }
    let blocks = padded_len(p.seq as usize, p.block as usize) as u64 / p.block as u64;
    let bh = (batch * p.heads + head) as u64;
    if PER_ROW {
        if col == 0 {
            unroll::<CHUNKS>(
                #[inline(always)]
                |i| {
                    if in_block(i) {
                        let idx = bh * blocks * p.block as u64 + (row0 + block_row(i)) as u64;
                        // SAFETY: inside the [batch][heads][padded rows] scale buffer.
                        unsafe { ptx::st_global_f32(p.scale + 4 * idx, amax[i] / 127.0) };
                    }
                },
            );
        }
    } else if tid == 0 {
        // SAFETY: inside the [batch][heads][blocks] scale buffer.
        unsafe { ptx::st_global_f32(p.scale + 4 * (bh * blocks + blk as u64), amax[0] / 127.0) };
    }

    // With the mean in shared memory for the whole CTA, reload it (after the barriers above, so
    // not merged with the first loads): the values are then recomputed from `raw` for the stores
    // instead of being kept (32 registers against 16 + 8), which keeps `sage_prepare_k_head`
    // within its 80-register cap. The same values either way.
    if let Some(MeanFrom::Shared(smem)) = smooth {
        unroll::<8>(
            #[inline(always)]
            // SAFETY: col * 8 + i < head_dim: inside the staged mean.
            |i| mean[i] = unsafe { ptx::ld_shared_f32(smem + 4 * (col * 8 + i as u32)) },
        );
    }
    let padded = blocks * p.block as u64;
    let out_head = p.out + (batch * p.heads + head) as u64 * padded * p.out_head_dim as u64;
    unroll::<CHUNKS>(
        #[inline(always)]
        |i| {
            if in_block(i) {
                let row = row0 + block_row(i);
                let packed = if row < p.seq {
                    pack_s8x8(&values(&raw[i], &mean), inv_scale(amax[i]))
                } else {
                    [0; 2]
                };
                // Rows past the sequence end (padding up to the block) are stored as zeros.
                let dst = out_head + row as u64 * p.out_head_dim as u64 + col as u64 * 8;
                // SAFETY: row < padded length, inside the padded INT8 buffer; 8-byte aligned.
                unsafe { ptx::st_global_v2(dst, packed) };
            }
        },
    );
    // Columns past head_dim (when a larger-head_dim kernel runs on this data) are zero: one
    // thread per row (no division by the run-time pad width).
    let mut row = row0 + tid;
    while p.out_head_dim > p.head_dim && row < row0 + p.block {
        let mut col = p.head_dim;
        while col < p.out_head_dim {
            let dst = out_head + row as u64 * p.out_head_dim as u64 + col as u64;
            // SAFETY: row < padded length and col < out_head_dim: inside the INT8 buffer.
            unsafe { ptx::st_global_v2(dst, [0, 0]) };
            col += 8;
        }
        row += threads;
    }
}

/// The NaN-propagating maximum over the group of each warp's `m` (lane 0's, after the warp's
/// butterfly): one slot per warp in the group's shared memory (at most `PREP_MAX_THREADS / 32`,
/// inside the 16-byte aligned `QUANT_MAX_SLOTS_BYTES` buffer at `g.smem`), read back four at a
/// time. The quads are read whole, up to 3 slots past the last warp's (inside the buffer), and
/// those values discarded. An unrolled, guarded read: a loop over the warps is unrolled by LLVM
/// with its remainder's counters hoisted out of `k_head`'s block loop, which spilled at the
/// 64-register cap. The caller syncs the group before the slots are written again.
///
/// # Safety
/// `g.smem` holds `QUANT_MAX_SLOTS_BYTES` bytes; every thread of the group calls it.
#[inline(always)]
unsafe fn block_max_through_slots(g: &Group, mut m: f32) -> f32 {
    const SLOT_QUADS: usize = QUANT_MAX_SLOTS_BYTES / 16;
    let warps = g.threads.div_ceil(32);
    // SAFETY: slot `tid / 32 < warps` and the quads are inside the buffer (the caller's contract).
    unsafe {
        if g.tid & 31 == 0 {
            ptx::st_shared_f32(g.smem + 4 * (g.tid >> 5), m);
        }
        g.sync();
        unroll::<SLOT_QUADS>(
            #[inline(always)]
            |q| {
                let first = 4 * q as u32;
                if first < warps {
                    let quad = ptx::ld_shared_v4(g.smem + 4 * first);
                    unroll::<4>(
                        #[inline(always)]
                        |j| {
                            if first + (j as u32) < warps {
                                m = ptx::max_nan(m, f32::from_bits(quad[j]));
                            }
                        },
                    );
                }
            },
        );
    }
    m
}

/// Whether block `blk` takes [`quantize_whole_block`]: one scale per block, every row of it inside
/// the sequence, the group's chunks covering it exactly (`CHUNKS` passes of `threads / chunks`
/// rows), whole warps, and no zero columns to write past `head_dim`. Every block of K but a
/// sequence's last partial one, at `prep_threads` threads and even `head_dim / 8`.
#[inline(always)]
fn is_whole_block<const CHUNKS: usize>(g: &Group, p: &QuantParams, blk: u32) -> bool {
    let chunks = p.head_dim / 8;
    (blk + 1) * p.block <= p.seq
        && g.threads / chunks * CHUNKS as u32 == p.block
        && g.threads.is_multiple_of(32)
        // Through an opaque move: hoisted out of `k_head`'s block loop, this test's predicate took
        // a register there across the loop and spilled at the 64-register cap (sm_80/86/89).
        && ptx::opaque_u32(p.out_head_dim) == p.head_dim
}

/// [`quantize_block`] of a block that [`is_whole_block`] accepts, one scale per block, with the
/// same bits in fewer instructions (the general path spends about 26 per value on per-chunk range
/// tests, per-chunk address products, a sign-clearing op per maximum, the float-to-int conversions
/// and their packing):
/// - the chunks' addresses step by constant strides from one base, without range tests;
/// - the mean's 8 channels are two `ld.shared.v4`;
/// - when the block maximum and its reciprocal are finite (the branch is uniform), the values are
///   rounded by a magic-number add ([`pack_s8x8_bounded`], exact under that bound), else
///   converted as the general path does.
///
/// # Safety
/// As [`quantize_block`], and [`is_whole_block`] holds.
#[inline(always)]
unsafe fn quantize_whole_block<const CHUNKS: usize>(
    g: &Group,
    p: &QuantParams,
    blk: u32,
    head: u32,
    batch: u32,
    smooth: Option<MeanFrom>,
) {
    let (tid, threads) = (g.tid, g.threads);
    let chunks = p.head_dim / 8;
    let (col, rows_per_pass) = (tid % chunks, threads / chunks);
    let row = blk * p.block + tid / chunks;
    let bf16 = p.in_bf16 != 0;
    let src = p.x as i64
        + 2 * (batch as i64 * p.x_stride[0]
            + head as i64 * p.x_stride[1]
            + row as i64 * p.x_stride[2]
            + col as i64 * 8);
    let src_step = 2 * rows_per_pass as i64 * p.x_stride[2];
    let mut raw = [[0u32; 4]; CHUNKS];
    unroll::<CHUNKS>(
        #[inline(always)]
        // SAFETY: every row of the block is below seq and col < head_dim/8: inside the input.
        |i| raw[i] = unsafe { ptx::ld_global_nc_v4((src + i as i64 * src_step) as u64) },
    );
    // The mean is staged while the loads are in flight (as in `quantize_block`).
    let mean_smem = smooth.map(|from| match from {
        MeanFrom::Stage(mp, fold) => {
            let smem = g.smem + QUANT_MAX_SLOTS_BYTES as u32;
            let bh = (batch * p.heads + head) as u64;
            // SAFETY: as in `quantize_block`.
            unsafe { stage_k_mean(mp, fold, blk == 0, bh, smem) };
            g.sync();
            smem
        }
        MeanFrom::Shared(smem) => smem,
    });
    // This thread's 8 channels of the mean (two `ld.shared.v4`), read once for each pass over
    // the values: computed once for the maximum and again for the packing, the same bits both
    // times. Holding all 32 values across the block maximum spills at `sage_prepare_k_head`'s
    // 64-register cap; reading the mean again after the barrier keeps LLVM from merging the two
    // passes back into one held set.
    let mean = || {
        let mut mean = [0.0f32; 8];
        if let Some(smem) = mean_smem {
            // SAFETY: the 8 channels of chunk `col`, 32-byte aligned (the staged mean is 16-byte
            // aligned: the shared base and the slots before it are).
            let (lo, hi) = unsafe {
                (
                    ptx::ld_shared_v4(smem + 32 * col),
                    ptx::ld_shared_v4(smem + 32 * col + 16),
                )
            };
            unroll::<4>(
                #[inline(always)]
                |i| {
                    mean[i] = f32::from_bits(lo[i]);
                    mean[4 + i] = f32::from_bits(hi[i]);
                },
            );
        }
        mean
    };
    // The values of a chunk: `x − mean` or `x · mult`.
    let values = |raw: &[u32; 4], mean: &[f32; 8]| -> [f32; 8] {
        if smooth.is_some() {
            let mut x = unpack8(raw, bf16);
            unroll::<8>(
                #[inline(always)]
                |e| x[e] -= mean[e],
            );
            x
        } else {
            scaled8(raw, bf16, p.mult)
        }
    };
    let mut m = 0.0f32;
    {
        let mean = mean();
        unroll::<CHUNKS>(
            #[inline(always)]
            |i| m = ptx::max_nan(m, abs_max8(0.0, &values(&raw[i], &mean))),
        );
    }
    let mut mask = 16;
    while mask > 0 {
        m = ptx::max_nan(m, ptx::shfl_xor_f32(m, mask));
        mask /= 2;
    }
    // SAFETY: the group's shared base holds the warp slots.
    let m = unsafe { block_max_through_slots(g, m) };
    let bh = (batch * p.heads + head) as u64;
    let blocks = p.seq.div_ceil(p.block) as u64;
    if tid == 0 {
        // SAFETY: inside the [batch][heads][blocks] scale buffer.
        unsafe { ptx::st_global_f32(p.scale + 4 * (bh * blocks + blk as u64), m / 127.0) };
    }
    let inv = inv_scale(m);
    let out_row = (bh * blocks * p.block as u64 + row as u64) * p.out_head_dim as u64;
    let dst = p.out + out_row + col as u64 * 8;
    let dst_step = rows_per_pass as u64 * p.out_head_dim as u64;
    let bounded = bounded_pack_exact(m, inv);
    let mean = mean();
    unroll::<CHUNKS>(
        #[inline(always)]
        |i| {
            let x = values(&raw[i], &mean);
            let packed = if bounded {
                pack_s8x8_bounded(&x, inv)
            } else {
                pack_s8x8(&x, inv)
            };
            // SAFETY: a row of the block, inside the padded INT8 buffer; 8-byte aligned.
            unsafe { ptx::st_global_v2(dst + i as u64 * dst_step, packed) };
        },
    );
}

/// The whole smoothed-K preparation of one (batch, kv head) by one CTA (`sage_prepare_k_head`,
/// short K: `config::K_HEAD_MAX_KV_LEN`): the CTA is `k_head_groups` groups of the usual
/// `prep_threads` geometry, each with its own named barrier and shared memory
/// (`config::k_head_smem_bytes` bytes in all: mean, segment sums, group regions).
///
/// 1. Segment sums: group `i` sums segments `i, i + groups, …` with `segment_sums` itself (the
///    same code as the `SUM_K` job, group-local thread index and barrier), into shared memory.
/// 2. The mean, one thread per channel, with `mean_of_segment_sums` (the segment-order adds).
/// 3. INT8 K: group `i` quantizes the blocks `n-1-i, n-1-i-groups, …` (K's end first: the
///    segments read last, most likely still in L2) with `quantize_block::<K_CHUNKS_PER_THREAD,
///    false>`, the `QUANT_K` job's code, the mean taken from shared memory.
///
/// Why the bits are those of the two-launch path (and so of `host/reference/quant_ref.rs`):
/// - a segment's sums: `segment_sums` with a group of `head_dim/8 × 16` threads maps thread
///   `tid` (group-local) to (chunk, lane) = (`tid % chunks`, `tid / chunks`) as a `SUM_K` CTA
///   does, sums the same rows in the same order per thread and runs the same lane tree; the
///   result is stored to shared memory instead of global memory (an f32 copy: no rounding);
/// - the mean: step 2 and `k_mean_channel` both call `mean_of_segment_sums` on the same values;
/// - the quantization: `quantize_block` with a group of `prep_threads` threads is the `QUANT_K`
///   CTA's code with the same thread count (the group is whole warps, so the warp butterfly and
///   the per-warp slots see the same lanes) and the same mean values.
///
/// The mean is also stored to the mean buffer (the LSE bias of a later launch reads it).
///
/// # Safety
/// Valid parameters; `head_dim / 8` even, `seq <= K_HEAD_MAX_KV_LEN`; block size
/// `k_head_threads(head_dim)`, `k_head_smem_bytes(head_dim, seq)` bytes of dynamic shared memory;
/// every thread of the CTA calls it with the same coordinates.
#[inline(always)]
pub(crate) unsafe fn k_head(mp: &MeanParams, kp: &QuantParams, head: u32, batch: u32) {
    let hd = mp.head_dim;
    let group_threads = hd / 8 * MEAN_SEQ_LANES as u32;
    let groups = ptx::block_dim_x() / group_threads;
    let index = ptx::thread_idx_x() / group_threads;
    let segments = mp.seq.div_ceil(MEAN_SEGMENT_ROWS as u32);
    let mean_smem = ptx::smem_base();
    let sums = mean_smem + 4 * hd;
    let group_bytes = k_head_group_smem_bytes(hd as usize) as u32;
    // Group `index`'s tree region and warp slots, past the `segments` segment sums.
    let group_at = |index: u32, segments: u32| {
        Group::part(
            index,
            group_threads,
            sums + 4 * segments * hd + index * group_bytes,
        )
    };
    let g = group_at(index, segments);
    let mut segment = index;
    while segment < segments {
        // SAFETY: forwarded; the group's tree region and the sums buffer are inside
        // `k_head_smem_bytes`.
        unsafe {
            segment_sums::<K_HEAD_SUM_AHEAD>(&g, mp, segment, head, batch, SumsOut::Shared(sums))
        };
        segment += groups;
    }
    ptx::sync_threads();
    let bh = (batch * mp.heads + head) as u64;
    let mut d = ptx::thread_idx_x();
    while d < hd {
        // SAFETY: s < segments, d < head_dim: inside the sums buffer. (The length through an
        // opaque move: the fold's trip count, derived from it before phase 1 and kept, spilled
        // at 1024 threads on sm_90.)
        let m = mean_of_segment_sums::<2>(ptx::opaque_u32(mp.seq), |s| unsafe {
            ptx::ld_shared_f32(sums + 4 * (s as u32 * hd + d))
        });
        // SAFETY: d < head_dim: inside the staged mean and the [batch][heads][head_dim] buffer.
        unsafe {
            ptx::st_shared_f32(mean_smem + 4 * d, m);
            ptx::st_global_f32(mp.mean + 4 * (bh * hd as u64 + d as u64), m);
        }
        d += ptx::block_dim_x();
    }
    ptx::sync_threads();
    let blocks = kp.seq.div_ceil(kp.block);
    let mut i = index;
    while i < blocks {
        // The group rebuilt from an opaque index in every round: kept across the loop, its
        // fields spilled at 1024 threads (64 registers, sm_90).
        let g = group_at(ptx::opaque_u32(index), ptx::opaque_u32(segments));
        // SAFETY: forwarded; blk < blocks; the group's region holds the warp slots.
        unsafe {
            quantize_block::<K_CHUNKS_PER_THREAD, false>(
                &g,
                kp,
                blocks - 1 - i,
                ptx::opaque_u32(head),
                ptx::opaque_u32(batch),
                Some(MeanFrom::Shared(mean_smem)),
            )
        };
        // The next block reuses the warp slots of the block maximum.
        g.sync();
        i += groups;
    }
}

/// Job `CONVERT_V`: the `cta`-th piece of the copy of V (f16 or bf16) to a contiguous f16 buffer
/// `[b][h][seq][out_head_dim]`, zero past `head_dim` (the P·V mma takes f16; the padding lets a
/// larger-head_dim kernel run). A CTA copies `CONVERT_CHUNKS_PER_THREAD` 16-byte output chunks per
/// thread (loads first, all in flight), any block size.
///
/// # Safety
/// Valid parameters; `cta` below `ceil(chunks / (block size * CONVERT_CHUNKS_PER_THREAD))`.
#[inline(always)]
pub(crate) unsafe fn convert_v(p: &ConvertParams, cta: u32) {
    let in_chunks = (p.head_dim / 8) as u64;
    let chunks = (p.out_head_dim / 8) as u64;
    let total = p.batch as u64 * p.heads as u64 * p.seq as u64 * chunks;
    let threads = ptx::block_dim_x() as u64;
    let first =
        cta as u64 * threads * CONVERT_CHUNKS_PER_THREAD as u64 + ptx::thread_idx_x() as u64;
    let chunk_of = |j: usize| first + j as u64 * threads;
    let mut raw = [[0u32; 4]; CONVERT_CHUNKS_PER_THREAD];
    unroll::<CONVERT_CHUNKS_PER_THREAD>(
        #[inline(always)]
        |j| {
            let c = chunk_of(j);
            let (row, chunk) = (c / chunks, c % chunks);
            if c < total && chunk < in_chunks {
                let s = row % p.seq as u64;
                let bh = row / p.seq as u64;
                let (b, h) = (bh / p.heads as u64, bh % p.heads as u64);
                let src = p.x as i64
                    + 2 * (b as i64 * p.x_stride[0]
                        + h as i64 * p.x_stride[1]
                        + s as i64 * p.x_stride[2]
                        + chunk as i64 * 8);
                // SAFETY: indices inside the validated input.
                raw[j] = unsafe { ptx::ld_global_nc_v4(src as u64) };
            }
        },
    );
    unroll::<CONVERT_CHUNKS_PER_THREAD>(
        #[inline(always)]
        |j| {
            let c = chunk_of(j);
            if c < total {
                // Zero chunks (past head_dim) stay zero: bf16 0 is f16 0.
                let out = if p.in_bf16 != 0 {
                    raw[j].map(ptx::bf16x2_to_f16x2)
                } else {
                    raw[j]
                };
                // SAFETY: c < total: inside the contiguous output.
                unsafe { ptx::st_global_v4(p.out + 16 * c, out) };
            }
        },
    );
}

/// Job `LSE_BIAS`: the LSE correction for smoothed K, `sm_scale · q·mean` (an f32 `fma` chain in
/// channel order), for one block of `block size` query rows of one (head, batch): CTA `cta` of
/// `ceil(seq / block size) * heads * batch`, one thread per row. K's mean of the row's kv head is
/// staged in shared memory (`4 * head_dim` bytes) first: folded in from the segment sums when
/// `fold`, else read from the mean buffer. Only run when the caller asks for the LSE with
/// smoothing on.
///
/// # Safety
/// Valid parameters and that geometry; the segment sums (fold) or the mean come from an earlier
/// launch.
#[inline(always)]
pub(crate) unsafe fn lse_bias(p: &LseBiasParams, mean: &MeanParams, fold: bool, cta: u32) {
    let threads = ptx::block_dim_x();
    let row_blocks = p.seq.div_ceil(threads);
    let (rb, rest) = (cta % row_blocks, cta / row_blocks);
    let (h, b) = (rest % p.heads, rest / p.heads);
    let kv_head = h / (p.heads / p.kv_heads);
    let smem = ptx::smem_base();
    // SAFETY: forwarded; `4 * head_dim` bytes of shared memory; never publishes.
    unsafe { stage_k_mean(mean, fold, false, (b * p.kv_heads + kv_head) as u64, smem) };
    ptx::sync_threads();
    let s = rb * threads + ptx::thread_idx_x();
    if s >= p.seq {
        return;
    }
    let bf16 = p.in_bf16 != 0;
    let row = p.q as i64
        + 2 * (b as i64 * p.q_stride[0] + h as i64 * p.q_stride[1] + s as i64 * p.q_stride[2]);
    let mut dot = 0.0f32;
    let mut chunk = 0;
    while chunk < p.head_dim / 8 {
        // SAFETY: inside the validated Q row and the staged mean.
        let x = unsafe { load8((row + 16 * chunk as i64) as u64, bf16) };
        unroll::<8>(
            #[inline(always)]
            |i| {
                // SAFETY: 8 * chunk + i < head_dim: inside the staged mean.
                let m = unsafe { ptx::ld_shared_f32(smem + 4 * (8 * chunk + i as u32)) };
                dot = ptx::fma(x[i], m, dot);
            },
        );
        chunk += 1;
    }
    let r = ((b * p.heads + h) as u64) * p.seq as u64 + s as u64;
    // SAFETY: r < batch * heads * seq, the bias buffer's length.
    unsafe { ptx::st_global_f32(p.bias + 4 * r, dot * p.sm_scale) };
}
