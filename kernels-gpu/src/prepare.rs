//! The fused preparation kernel: one entry, `sage_prepare`, runs any subset of the preparation
//! jobs (`config::prep_job`) in one launch, each on its own range of CTAs
//! (`PrepareParams::ends`). Memory-bound passes that do not depend on each other share a launch, so
//! short sequences fill the GPU and pay fewer launches (docs/perf-notes.md, "Preparation v4"):
//!
//! 1. Q quantization, K segment sums, 8-bit V statistics, V to f16 (and K quantization when K is
//!    not smoothed);
//! 2. only for longer sequences (`config::MEAN_FOLD_MAX_SEGMENTS`, `V8_FOLD_MAX_SEGMENTS`): K mean
//!    and/or 8-bit V scales;
//! 3. K quantization, 8-bit Vᵀ, LSE bias — each CTA reduces the segment statistics it needs in the
//!    finalize order when step 2 did not run.
//!
//! A launch with one job only, K's segment sums or K's quantization, runs instead through an entry
//! of its own (`sage_prepare_sum_k`, `sage_prepare_quant_k`): the same code, bounded at 64
//! registers rather than the 80 that `sage_prepare`'s other jobs need, so 4 CTAs share an SM
//! (docs/perf-notes.md, "Preparation v9" and "v10"). `sage_prepare_k_head` does K's whole
//! smoothed preparation for short K, one CTA per head.
//!
//! The jobs themselves live in `quant.rs` and `v8.rs`; this file maps CTAs to them.

use crate::config::{
    padded_len, prep_job as job, K_CHUNKS_PER_THREAD, MEAN_SEGMENT_ROWS, Q_CHUNKS_PER_THREAD,
    SUM_K_AHEAD, V8_TILE,
};
use crate::params::PrepareParams;
use crate::ptx;
use crate::{quant, v8};

// `PrepareParams::ends` has one entry per job, and the dispatch below tests them in this order.
const _: () = assert!(
    job::COUNT == 9
        && job::QUANT_Q == 0
        && job::CONVERT_V == 1
        && job::V8_STATS == 2
        && job::SUM_K == 3
        && job::K_MEAN == 4
        && job::V8_FINALIZE == 5
        && job::QUANT_K == 6
        && job::V8_QUANT == 7
        && job::LSE_BIAS == 8
);

/// `i` → (index within a head, head, batch) for `per_head` CTAs per head and `heads` heads.
#[inline(always)]
fn split(i: u32, per_head: u32, heads: u32) -> (u32, u32, u32) {
    let (x, rest) = (i % per_head, i / per_head);
    (x, rest % heads, rest / heads)
}

/// Runs job `j` of the CTAs `ends[j-1]..ends[j]` (see the module docs). Grid `(ends[8], 1, 1)`;
/// block size and dynamic shared memory as `config::prep_threads_ok` and
/// `config::prep_smem_bytes` require of every job in the launch.
///
/// # Safety
/// Launched by the host with validated parameters and that geometry, after the launches whose
/// results the jobs read.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_prepare(p: PrepareParams) {
    let bx = ptx::block_idx().0;
    let e = p.ends;
    let fold_k = p.fold_k != 0;
    // Every branch is CTA-uniform. SAFETY (all): the index is below the job's CTA count, which the
    // host sized from the same shapes; the rest is each job's own contract, which the host keeps.
    if bx < e[job::QUANT_Q] {
        let (blk, head, batch) = split(bx, p.q.seq.div_ceil(p.q.block), p.q.heads);
        let g = quant::Group::cta();
        unsafe {
            quant::quantize_block::<Q_CHUNKS_PER_THREAD, true>(&g, &p.q, blk, head, batch, None)
        }
    } else if bx < e[job::CONVERT_V] {
        unsafe { quant::convert_v(&p.convert, bx - e[job::CONVERT_V - 1]) }
    } else if bx < e[job::V8_STATS] {
        unsafe { v8_stats::<false>(&p, bx - e[job::V8_STATS - 1]) }
    } else if bx < e[job::SUM_K] {
        unsafe { sum_k(&p, bx - e[job::SUM_K - 1]) }
    } else if bx < e[job::K_MEAN] {
        unsafe { quant::k_mean(&p.mean, bx - e[job::K_MEAN - 1]) }
    } else if bx < e[job::V8_FINALIZE] {
        unsafe { v8::finalize(&p.v8, bx - e[job::V8_FINALIZE - 1]) }
    } else if bx < e[job::QUANT_K] {
        unsafe { quant_k(&p, e[job::QUANT_K] - 1 - bx) }
    } else if bx < e[job::V8_QUANT] {
        unsafe { v8_quant(&p, bx - e[job::V8_QUANT - 1]) }
    } else if bx < e[job::LSE_BIAS] {
        unsafe { quant::lse_bias(&p.lse, &p.mean, fold_k, bx - e[job::LSE_BIAS - 1]) }
    }
}

/// Job `V8_STATS`, CTA `i` of its range: one segment of one (batch, head); `AHEAD` as
/// [`v8::stats`].
///
/// # Safety
/// As [`sum_k`].
#[inline(always)]
unsafe fn v8_stats<const AHEAD: bool>(p: &PrepareParams, i: u32) {
    let segments = p.v8.seq.div_ceil(MEAN_SEGMENT_ROWS as u32);
    let (segment, head, batch) = split(i, segments, p.v8.heads);
    // SAFETY: the caller's.
    unsafe { v8::stats::<AHEAD>(&p.v8, segment, head, batch) }
}

/// Job `V8_QUANT`, CTA `i` of its range: one key tile of one (batch, head).
///
/// # Safety
/// As [`sum_k`].
#[inline(always)]
unsafe fn v8_quant(p: &PrepareParams, i: u32) {
    let tiles = (padded_len(p.v8.seq as usize, V8_TILE) / V8_TILE) as u32;
    let (tile, head, batch) = split(i, tiles, p.v8.heads);
    // SAFETY: the caller's.
    unsafe { v8::quantize(&p.v8, p.fold_v8 != 0, tile, head, batch) }
}

/// Job `SUM_K`, CTA `i` of its range: one segment of one (batch, head).
///
/// # Safety
/// `i` below the job's CTA count, which the host sized from the same shapes; the job's contract.
#[inline(always)]
unsafe fn sum_k(p: &PrepareParams, i: u32) {
    let segments = p.mean.seq.div_ceil(MEAN_SEGMENT_ROWS as u32);
    let (segment, head, batch) = split(i, segments, p.mean.heads);
    let g = quant::Group::cta();
    // SAFETY: the caller's.
    unsafe {
        quant::segment_sums::<SUM_K_AHEAD>(
            &g,
            &p.mean,
            segment,
            head,
            batch,
            quant::SumsOut::Global,
        )
    }
}

/// Job `QUANT_K`, CTA `i` of its range counted from its end: in reverse, the first CTAs take K's
/// last blocks, which the segment sums of the launch before read last (still in L2 when K is not
/// much larger than it).
///
/// # Safety
/// As [`sum_k`].
#[inline(always)]
unsafe fn quant_k(p: &PrepareParams, i: u32) {
    let (blk, head, batch) = split(i, p.k.seq.div_ceil(p.k.block), p.k.heads);
    let smooth = if p.k.mean != 0 {
        Some(quant::MeanFrom::Stage(&p.mean, p.fold_k != 0))
    } else {
        None
    };
    let g = quant::Group::cta();
    // SAFETY: the caller's.
    unsafe {
        quant::quantize_block::<K_CHUNKS_PER_THREAD, false>(&g, &p.k, blk, head, batch, smooth)
    }
}

/// The `SUM_K` job alone, for a launch whose only job it is (the first launch of the f16 P·V's
/// two-launch K preparation when the attention kernel quantizes Q), bounded at 64 registers where
/// `sage_prepare` takes 80 (build.rs): 4 CTAs of 256 threads per SM instead of 3, so more of the
/// segments run in one wave, with a third more loads in flight (docs/perf-notes.md, "Preparation
/// v9"). `sage_prepare`'s CTA mapping, `ends` and bits.
///
/// # Safety
/// As [`sage_prepare`], with `ends` covering `SUM_K` CTAs only.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_prepare_sum_k(p: PrepareParams) {
    // SAFETY: the block index is inside the job's range (the grid); the rest is the caller's.
    unsafe { sum_k(&p, ptx::block_idx().0 - p.ends[job::SUM_K - 1]) }
}

/// The `QUANT_K` job alone, for a launch whose only job it is (the last launch of the f16 P·V's
/// smoothed preparation without an LSE), bounded at 64 registers like
/// [`sage_prepare_sum_k`] (docs/perf-notes.md, "Preparation v10"). `sage_prepare`'s CTA mapping,
/// `ends` and bits.
///
/// # Safety
/// As [`sage_prepare`], with `ends` covering `QUANT_K` CTAs only.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_prepare_quant_k(p: PrepareParams) {
    // SAFETY: as `sage_prepare_sum_k`.
    unsafe { quant_k(&p, p.ends[job::QUANT_K] - 1 - ptx::block_idx().0) }
}

/// The 8-bit preparation's statistics launch alone (jobs `V8_STATS` and `SUM_K`, nothing else),
/// bounded at 64 registers where `sage_prepare` takes 80 (build.rs): 4 CTAs of 256 threads per
/// SM instead of 3, a third more loads in flight. `sage_prepare`'s CTA mapping, `ends` and bits.
///
/// # Safety
/// As [`sage_prepare`], with `ends` covering `V8_STATS` and `SUM_K` CTAs only.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_prepare_stats8(p: PrepareParams) {
    let bx = ptx::block_idx().0;
    let e = p.ends;
    // SAFETY: as `sage_prepare`'s branches for these jobs.
    unsafe {
        if bx < e[job::V8_STATS] {
            v8_stats::<true>(&p, bx - e[job::V8_STATS - 1])
        } else if bx < e[job::SUM_K] {
            sum_k(&p, bx - e[job::SUM_K - 1])
        }
    }
}

/// The 8-bit preparation's quantization launch alone (jobs `QUANT_K` and `V8_QUANT`, nothing
/// else), bounded at 64 registers like [`sage_prepare_stats8`].
///
/// # Safety
/// As [`sage_prepare`], with `ends` covering `QUANT_K` and `V8_QUANT` CTAs only.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_prepare_quant8(p: PrepareParams) {
    let bx = ptx::block_idx().0;
    let e = p.ends;
    // SAFETY: as `sage_prepare`'s branches for these jobs.
    unsafe {
        if bx < e[job::QUANT_K] {
            quant_k(&p, e[job::QUANT_K] - 1 - bx)
        } else if bx < e[job::V8_QUANT] {
            v8_quant(&p, bx - e[job::V8_QUANT - 1])
        }
    }
}

/// The smoothed-K preparation of short K, one CTA per (batch, kv head) (`quant::k_head`): K's
/// segment sums, mean (also stored to the mean buffer) and INT8 K with its scales, in one launch,
/// bit for bit what the `SUM_K` and `QUANT_K` jobs of `sage_prepare` produce. Grid
/// `(batch * kv_heads, 1, 1)`, block `config::k_head_threads(head_dim)`,
/// `config::k_head_smem_bytes(head_dim, seq)` bytes of dynamic shared memory. Reads `p.mean` and
/// `p.k` only.
///
/// # Safety
/// Launched by the host with validated parameters and that geometry, `head_dim / 8` even and
/// `seq <= config::K_HEAD_MAX_KV_LEN`.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_prepare_k_head(p: PrepareParams) {
    let bx = ptx::block_idx().0;
    let (head, batch) = (bx % p.k.heads, bx / p.k.heads);
    // SAFETY: bx < batch * kv_heads (the grid); the rest is the caller's contract.
    unsafe { quant::k_head(&p.mean, &p.k, head, batch) }
}
