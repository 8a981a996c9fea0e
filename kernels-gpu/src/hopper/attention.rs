//! The sm_90a SageAttention forward kernel: INT8 `Q·Kᵀ` with `wgmma m64n64k32.s32.s8.s8` (Q and
//! K from swizzled shared memory), dequantize with `q_scale * k_scale` (per row and key block, log2 units), online softmax
//! with `ex2`, P packed to f16 in registers, `P·V` with `wgmma m64n{HD}k16.f32.f16.f16` (P from
//! registers, V from shared memory, N-major) into an f32 running output. d = 96 keeps the d = 128
//! shared-memory rows for Q and K (3 k-steps of the 4) and stores V in 64-byte-swizzled blocks of
//! 32 channels for one `m64n96k16` per k-step (`smem.rs`); its global Q, K and V rows are 96 wide.
//!
//! With `PV8` (the 8-bit P·V, `PvPrecision::Int8`) the second product is `wgmma
//! m64n{≤64}k32.s32.u8.s8`: P as u8 relative to each key tile's row maximum (packed straight from
//! the Q·Kᵀ accumulator, see [`pack_probs_u8`]), V as the key-permuted INT8 Vᵀ of `v8.rs` (K-major
//! 64-key sub-tiles like a d = 64 K tile), each tile's product in a fresh s32 accumulator folded
//! into the f32 output (two-level accumulation), and the V scale and mean applied in the epilogue.
//! With `FP8` as well (`PvPrecision::Fp8`, the `*_fp8` entries) the same step runs on e4m3: P
//! packed as e4m3 (`pack_probs_e4m3`, scaled to 448), the FP8 module's e4m3 Vᵀ (same layout),
//! `wgmma m64n{≤128}k32.f32.e4m3.e4m3` into a fresh f32 accumulator per tile — the official
//! SageAttention 2.2 sm90 algorithm.
//! Its tiles hold 128 keys (two 64-key K blocks, one scale each), which halves the CUDA-core work
//! per key that does not scale with the keys (the fold, barriers, descriptors) — except at
//! d = 256, whose 128 output registers leave room for a 64-key tile's scores only — and each
//! warpgroup runs its tile serially (`Consumer::step_serial`: Q·Kᵀ, softmax, then P·V in groups
//! of 64 channels, each folded before the next is issued; at d = 128 one n = 128 product except on
//! causal masked tiles); the warp schedulers interleave the warpgroups, so one's softmax runs
//! under another's wgmmas. A CTA is a single warpgroup and several CTAs share an SM
//! (`sm90_ctas_per_sm`: four, three and two at d = 64, 128 and 256; 128, 168 and 255 registers),
//! which keeps warpgroups that share no stage barrier out of lockstep (docs/perf-notes.md, 8-bit
//! P·V v3.9–v3.11 and "8-bit P·V at d = 256").
//!
//! Same inputs, parameters and semantics as the portable kernel (`attention/`): bottom-right causal
//! alignment, rows without a visible key give 0 and LSE `-inf`, LSE plus `lse_bias`, f16 or bf16
//! output with any strides. The P·V accumulator is f32 throughout (on Hopper an f16 accumulator
//! is not faster), i.e. the portable kernel's `PvAccum::F32` arithmetic.
//!
//! CTA (see `config.rs`): `W = sm90_consumer_warpgroups(HD, PV8, NARROW)` warpgroups (f16 P·V:
//! 3 for d = 96, 4 for d = 64, 2 for d = 128 and 256; one with `NARROW`, the variant for short
//! causal calls, several CTAs per SM) of 64 query rows each, and no producer warp. With
//! f16 P·V every thread also copies `HD/32` 16-byte chunks of each K/V tile with cp.async (a
//! producer warp would make the CTA 32 threads more than a multiple of 128, which lowers the entry
//! register cap to 128 for 3 warpgroups; a producer warpgroup with `setmaxnreg` is untried:
//! ptxas 12.9 does give a `setmaxnreg.inc` branch more registers than the entry cap under
//! `.maxntid 384` + `.minnctapersm 1`, see docs/perf-notes.md); with the 8-bit P·V thread 0
//! copies each K and Vᵀ tile with three TMA boxes (`Consumer::tma_tile`; the host's descriptors,
//! `AttnParams::tma`), which frees the copies' address registers. Pipeline per
//! `sm90_stages(HD, PV8, NARROW)`-deep stage `s` of a K and a V tile, with two mbarriers:
//! `full[s]` (f16 P·V: one arrival per thread, through `cp.async.mbarrier.arrive.noinc`, i.e.
//! when its copies have landed; 8-bit: thread 0's arrival announcing the TMA bytes) and
//! `empty[s]` (one arrival per warp: its lane 0 once its warpgroup's wgmmas reading the stage are
//! done). Tile `t` uses stage `t % S` in round `t / S`; waiting for
//! round r's completion uses parity `r & 1`. Step t copies tile `t + lookahead` (see `Consumer::LOOKAHEAD`).
//!
//! With f16 P·V, each consumer warpgroup overlaps its softmax with its tensor-core work (FlashAttention-3's
//! intra-warpgroup pipelining): step t issues `S_t = Q·K_tᵀ` and `O += P_{t-1}·V_{t-1}` together,
//! waits for `S_t` alone, runs the softmax of tile t while the P·V wgmma still runs, then waits for
//! it and rescales O (skipped when no row max of the warp moved). Across warpgroups, pingpong
//! scheduling (named barriers, see [`PINGPONG`]) makes them issue their wgmmas in turn, so that
//! one's softmax overlaps the others' wgmmas (d = 64 and 96). At d = 128 the f16 tiles hold 128
//! keys (`config::SM90_F16_WIDE_TILES`: `S_t` one n = 128 product per k-step, P as 8 fragments,
//! two K scales) over two warpgroups without pingpong; the same step code serves both tile sizes.
//!
//! Three things ptxas does not see through, each handled where it happens: (1) the wgmma issue
//! sequence must contain no other instruction defining its inputs (descriptors are computed and
//! pinned before `wgmma.fence`; the loop-carried P fragments are packed only after the P·V that
//! reads the previous ones has completed), or ptxas serialises the wgmmas (C7513); (2) ptxas
//! hoists `wgmma.wait_group 0` to the top of the softmax unless a branch ends the basic block
//! first (see `Consumer::step`); (3) the proxy fence compiles to `MEMBAR.ALL.CTA`, which waits for
//! this thread's global loads, so the K scales are loaded a tile ahead where tiles come by
//! cp.async (TMA needs no fence: the one-warpgroup 8-bit step loads its own).

use super::config::{
    sm90_barrier_offset, sm90_consumer_warpgroups, sm90_cta_k, sm90_cta_q, sm90_k_offset,
    sm90_k_stage_bytes, sm90_kmajor_row_bytes, sm90_lookahead, sm90_stage_slack, sm90_stages,
    sm90_threads, sm90_v_offset, sm90_v_stage_bytes, SM90_CTA_K,
};
use super::q_tile::QTile;
use super::selftest::aligned_smem_base;
use super::smem::{
    self, issue_pv, issue_pv8, issue_pv_fp8, issue_qk, issue_qk128, kmajor_desc, kmajor_offset,
    pv8_descs, pv_descs, qk_descs,
};
use crate::config::{p8_tile, padded_len, K_BLOCK, LOG2_P_FP8_MAX, P8_MAX, Q_BLOCK};
use crate::p8::{pack_probs_e4m3, pack_probs_u8};
use crate::params::AttnParams;
use crate::ptx;
use crate::retry::RetryBackoff;
use crate::softmax16::{OnlineSoftmax, TileBounds};
use crate::store::{pack_out, store_lse, unsmooth_v8_scaled};
use crate::unroll::unroll;

/// Pingpong scheduling of the warpgroups (FlashAttention-3): each warpgroup issues its wgmmas
/// only in its turn, a named barrier per warpgroup (`SCHED_BAR0 + wg`, 256 threads: the waiting
/// warpgroup and the one before it) passing the turn round-robin right after the issue, so that
/// one warpgroup's softmax runs while the others' wgmmas occupy the tensor cores. Measured on an
/// H200 (docs/perf-notes.md, v2): with 3 or 4 warpgroups it gains 3–5%; with d = 128's former two
/// it was neutral (−2% causal).
const PINGPONG: bool = true;

/// Upper bound of the 16-byte K/V copies one thread issues per tile (see `Consumer::copy_tile`;
/// the per-variant count is `chunks.div_ceil(threads)`, checked below).
const MAX_COPIES_PER_THREAD: usize = 12;

/// Whether this variant uses pingpong: the f16 P·V over 64-key tiles at d = 64 and 96 does; the
/// 8-bit one runs each warpgroup's tile serially and lets the warp schedulers interleave the
/// warpgroups (pingpong measured 6% slower there at d = 128); the f16 P·V's two warpgroups over
/// 128-key tiles at d = 128 measured up to 6% faster without it (docs/perf-notes.md, v17), and
/// d = 256 (two warpgroups, twice the tensor work per softmax) 1.5–5% (v7). A one-warpgroup CTA
/// (`narrow`) has no partner warpgroup to alternate with.
const fn pingpong(pv8: bool, head_dim: usize, narrow: bool) -> bool {
    PINGPONG && !pv8 && head_dim <= 128 && !narrow && sm90_cta_k(head_dim, pv8, narrow) == 64
}
/// Whether a launch's K/V tiles come by TMA: always with the 8-bit P·V, and with f16 P·V (except
/// d = 96, whose 96-byte rows sit in 128-byte ones) when the host could describe the caller's V
/// (`AttnParams::tma` nonzero; else every thread copies with cp.async). One decision for the
/// barrier counts and the copies.
#[inline(always)]
fn tiles_by_tma<const HD: usize, const PV8: bool>(tma: u64) -> bool {
    PV8 || (HD != 96 && tma != 0)
}
/// First named barrier of the pingpong (0 is `bar.sync 0`, 1..=4 the per-warpgroup barriers: Q's,
/// and the f16 P·V's check of its probabilities, `f16_probs_against_max`).
const SCHED_BAR0: u32 = 5;

/// Whether the f16 P·V's unmasked tiles take their probabilities against the running max as it
/// stands and check afterwards that none passed 2^14 (`OnlineSoftmax::probabilities_against_max`,
/// one barrier reduction per warpgroup and tile; a tile that did is taken again from its scores).
/// Measured on the H200 (v27, docs/perf-notes.md): +3–17% at d = 64 / 96 / 128, where the max's
/// reduction was on the critical path of a latency-bound step; 1–4% slower at d = 256 (64-key
/// tiles: twice the barriers per key, and more tensor work per softmax to hide it behind). Masked
/// tiles keep the exact path (measured slower through this one).
const fn f16_probs_against_max(head_dim: usize) -> bool {
    head_dim <= 128
}

/// Which rows and key tiles this CTA handles (as `attention::BlockGeometry`, with 128-row CTAs).
struct Geometry {
    batch: u32,
    head: u32,
    kv_head: u32,
    /// First query row of the CTA.
    q_row0: u32,
    /// Key tiles to visit (the causal limit of the CTA's last row, and the sequence end).
    n_tiles: u32,
    /// Leading tiles that need no mask for any row of the CTA.
    n_unmasked: u32,
    /// `kv_len - qo_len`: query i sees key j iff `j <= i + diag`.
    diag: i32,
}

impl Geometry {
    #[inline(always)]
    fn new<const HD: usize, const CAUSAL: bool, const PV8: bool, const NARROW: bool>(
        p: &AttnParams,
    ) -> Self {
        let rows = sm90_cta_q(HD, PV8, NARROW) as u32;
        let q_blocks = p.qo_len.div_ceil(rows);
        let (bx, by, bz) = ptx::block_idx();
        // Causal CTAs near the end of the sequence do the most work: start them first (see
        // `AttnParams::causal_chunk` for the two orders).
        let (rank, head, batch) = if CAUSAL && p.causal_chunk != 0 {
            let pair = bz * p.causal_chunk + bx;
            (by, pair % p.q_heads, pair / p.q_heads)
        } else {
            (bx, by, bz)
        };
        let q_block = if CAUSAL { q_blocks - 1 - rank } else { rank };
        let q_row0 = q_block * rows;
        let kv_head = head / (p.q_heads / p.kv_heads);
        let diag = p.kv_len as i32 - p.qo_len as i32;
        let tile = sm90_cta_k(HD, PV8, NARROW) as i32;
        let full_len_tiles = p.kv_len / tile as u32;
        let (n_tiles, n_unmasked) = if CAUSAL {
            let last_row = (q_row0 + rows).min(p.qo_len) as i32 - 1;
            let kv_end = (last_row + diag + 1).clamp(0, p.kv_len as i32);
            let n_tiles = (kv_end + tile - 1) / tile;
            let first_visible = q_row0 as i32 + diag + 1;
            let unmasked = if first_visible > 0 {
                first_visible / tile
            } else {
                0
            };
            let n_unmasked = unmasked.min(full_len_tiles as i32).min(n_tiles);
            (n_tiles as u32, n_unmasked as u32)
        } else {
            (p.kv_len.div_ceil(tile as u32), full_len_tiles)
        };
        Geometry {
            batch,
            head,
            kv_head,
            q_row0,
            n_tiles,
            n_unmasked,
            diag,
        }
    }
}

/// Shared-memory addresses of the CTA (all derived from the aligned base).
#[derive(Clone, Copy)]
struct Smem<const HD: usize, const PV8: bool, const NARROW: bool> {
    q: u32,
    k0: u32,
    v0: u32,
    bars: u32,
}

impl<const HD: usize, const PV8: bool, const NARROW: bool> Smem<HD, PV8, NARROW> {
    const S: u32 = sm90_stages(HD, PV8, NARROW) as u32;

    #[inline(always)]
    fn new() -> Self {
        let base = aligned_smem_base();
        Smem {
            q: base,
            k0: base + sm90_k_offset(HD, PV8, NARROW) as u32,
            v0: base + sm90_v_offset(HD, PV8, NARROW) as u32,
            bars: base + sm90_barrier_offset(HD, PV8, NARROW) as u32,
        }
    }
    #[inline(always)]
    fn k_stage(self, s: u32) -> u32 {
        self.k0 + s * sm90_k_stage_bytes(HD, PV8, NARROW) as u32
    }
    #[inline(always)]
    fn v_stage(self, s: u32) -> u32 {
        self.v0 + s * sm90_v_stage_bytes(HD, PV8, NARROW) as u32
    }
    #[inline(always)]
    fn full(self, s: u32) -> u32 {
        self.bars + 8 * s
    }
    #[inline(always)]
    fn empty(self, s: u32) -> u32 {
        self.bars + 8 * (Self::S + s)
    }
}

/// The kernel body shared by every variant. `KS = HD/32` int8 k-steps, `NT = HD/8` output n-tiles.
///
/// # Safety
/// `p` satisfies the host's validation (as for the portable kernel); the launch has
/// `ceil(qo_len / sm90_cta_q(HD, PV8, NARROW)) × q_heads × batch` blocks of
/// `sm90_threads(HD, PV8, NARROW)` threads and `sm90_smem_bytes(HD, PV8, NARROW)` bytes of dynamic
/// shared memory.
#[inline(always)]
unsafe fn attention<
    const HD: usize,
    const KS: usize,
    const NT: usize,
    const CAUSAL: bool,
    const PV8: bool,
    const NARROW: bool,
    const FP8: bool,
>(
    p: &AttnParams,
) {
    const {
        // The FP8 P·V is the 8-bit step with e4m3 P and Vᵀ.
        assert!(!FP8 || PV8);
        assert!(KS * 32 == HD && NT * 8 == HD && matches!(HD, 64 | 96 | 128 | 256));
        assert!(!PV8 || HD != 96);
        // d = 96 (f16 P·V only): `copy_chunks_hd96` takes every chunk to exist and the first
        // round of threads to copy K.
        assert!(
            HD != 96
                || (!PV8
                    && (sm90_cta_k(HD, PV8, NARROW) * HD / 16) % sm90_threads(HD, PV8, NARROW)
                        == 0
                    && (sm90_cta_k(HD, PV8, NARROW) * HD / 16 * 3) % sm90_threads(HD, PV8, NARROW)
                        == 0)
        );
        assert!(Q_BLOCK % 64 == 0 && SM90_CTA_K == K_BLOCK);
        // The CPU emulation of the 8-bit P·V scales P per `p8_tile(d)` keys, as this kernel's
        // tiles: two 64-key K blocks, or one at d = 256.
        assert!(!PV8 || sm90_cta_k(HD, true, NARROW) == p8_tile(HD));
        assert!(matches!(sm90_cta_k(HD, PV8, NARROW), 64 | 128) && K_BLOCK == 64);
        // Every thread's share of a tile's copies fits the copy loop (the 8-bit P·V copies by
        // TMA only).
        let chunks = sm90_cta_k(HD, PV8, NARROW) * HD / 16 * if PV8 { 2 } else { 3 };
        assert!(PV8 || chunks.div_ceil(sm90_threads(HD, PV8, NARROW)) <= MAX_COPIES_PER_THREAD);
        // Tile t + lookahead overwrites tile t + lookahead - S, which must be released by then
        // (`sm90_stage_slack`).
        let margin = sm90_stage_slack(HD, PV8, NARROW);
        let (stages, ahead) = (
            sm90_stages(HD, PV8, NARROW),
            sm90_lookahead(HD, PV8, NARROW),
        );
        assert!(ahead >= 1 && stages >= ahead + margin && stages <= 8);
    };
    let geo = Geometry::new::<HD, CAUSAL, PV8, NARROW>(p);
    if CAUSAL && geo.batch >= p.batch {
        // A CTA of the last head chunk past the last (batch, head) pair: the whole CTA leaves
        // before any barrier.
        return;
    }
    let sm = Smem::<HD, PV8, NARROW>::new();
    let tid = ptx::thread_idx_x();
    if tid == 0 {
        unroll::<8>(
            #[inline(always)]
            |s| {
                if (s as u32) < Smem::<HD, PV8, NARROW>::S {
                    // SAFETY: the barrier words lie inside the launch's dynamic shared memory.
                    unsafe {
                        // cp.async: every thread's arrival; TMA: thread 0's (announcing the
                        // bytes).
                        let arrivals = if tiles_by_tma::<HD, PV8>(p.tma) {
                            1
                        } else {
                            sm90_threads(HD, PV8, NARROW) as u32
                        };
                        ptx::mbarrier_init(sm.full(s as u32), arrivals);
                        ptx::mbarrier_init(
                            sm.empty(s as u32),
                            4 * sm90_consumer_warpgroups(HD, PV8, NARROW) as u32,
                        );
                    }
                }
            },
        );
    }
    ptx::sync_threads();

    // SAFETY: as for the kernel.
    unsafe { consume::<HD, KS, NT, CAUSAL, PV8, NARROW, FP8>(p, &geo, sm, tid) };
}

/// Per-warpgroup constants of the consumer loop.
struct Consumer<const HD: usize, const PV8: bool, const NARROW: bool> {
    sm: Smem<HD, PV8, NARROW>,
    q_desc: u64,
    /// Q's scales of this thread's two rows (`h`: lane/4 and lane/4 + 8 of its warp's 16).
    q_scale: [f32; 2],
    /// Address of this (batch, kv head)'s first K scale.
    k_scale_row: u64,
    kv_len: u32,
    diag: i32,
    /// First query row of this warp's 16 (within the head).
    warp_row0: u32,
    /// `n_tiles - 1`.
    last_tile: u32,
    /// Index of this head's last 64-key K block (its scale is the last one).
    last_k_block: u32,
    lane: u32,
    /// This consumer warpgroup's index.
    wg: u32,
    /// Thread index in the CTA (f16 P·V: all threads copy K/V tiles; 8-bit: thread 0, by TMA).
    tid: u32,
    /// f16 P·V: this (batch, kv head)'s K (padded, INT8) and V (f16, first row) in global memory.
    k_head: u64,
    v_head: u64,
    v_row_bytes: u64,
    n_tiles: u32,
    /// The TMA descriptors (`AttnParams::tma`; 0 = none), this (batch, kv head)'s index in the
    /// 3-D maps, and the two for the f16 V's 4-D one.
    tma: u64,
    kv_head_index: u32,
    kv_head: u32,
    batch: u32,
}

impl<const HD: usize, const PV8: bool, const NARROW: bool> Consumer<HD, PV8, NARROW> {
    /// Tiles copied ahead of the one being computed: tile `t + LOOKAHEAD` is issued in step t into
    /// the stage of tile `t + LOOKAHEAD - S`, which every warpgroup released in its step t - 1
    /// (with `S - LOOKAHEAD = 3`), so the wait for it rarely blocks. (H200: 8 stages / 5 ahead
    /// measured 1–2% faster at d = 128 and 2.5% at d = 64 than 6 / 3.)
    const LOOKAHEAD: u32 = sm90_lookahead(HD, PV8, NARROW) as u32;
    /// Keys per tile.
    const CK: u32 = sm90_cta_k(HD, PV8, NARROW) as u32;
    /// 8-key n-tiles of a tile's scores.
    const NK: usize = sm90_cta_k(HD, PV8, NARROW) / 8;
    /// Pingpong: waits for this warpgroup's turn to issue wgmmas.
    #[inline(always)]
    fn sched_wait(&self) {
        if pingpong(PV8, HD, NARROW) {
            ptx::named_barrier_sync(SCHED_BAR0 + self.wg, 256);
        }
    }

    /// Pingpong: passes the turn to the next warpgroup (after this one's wgmmas are issued).
    #[inline(always)]
    fn sched_pass(&self) {
        if pingpong(PV8, HD, NARROW) {
            let w = sm90_consumer_warpgroups(HD, PV8, NARROW) as u32;
            let next = if self.wg + 1 == w { 0 } else { self.wg + 1 };
            ptx::named_barrier_arrive(SCHED_BAR0 + next, 256);
        }
    }

    /// 16-byte chunks of one K tile.
    const K_CHUNKS: u32 = (sm90_cta_k(HD, PV8, NARROW) * HD / 16) as u32;
    /// 16-byte chunks of one K and one V tile: 3·CK·HD/16 with f16 V (HD/32 per thread with 384
    /// threads and 64-key tiles, 12 with 256 threads and d = 128's 128-key tiles), 2·CK·HD/16
    /// with the INT8 Vᵀ (by TMA only).
    const CHUNKS: u32 = Self::K_CHUNKS * if PV8 { 2 } else { 3 };
    /// Threads of the CTA (all of them copy).
    const THREADS: u32 = sm90_threads(HD, PV8, NARROW) as u32;

    /// Copies K and V tile `u` into its stage (every thread of the CTA: `HD/32` 16-byte copies
    /// each), after the stage's previous tile has been released; completion is signalled on
    /// `full` through `cp.async.mbarrier.arrive.noinc`. A tile that lies wholly inside the padded
    /// K and V (every tile but the sequence's last) is copied without any per-chunk bounds test.
    #[inline(always)]
    fn copy_tile(&self, u: u32) {
        let s_count = Smem::<HD, PV8, NARROW>::S;
        let (s, round) = (u % s_count, u / s_count);
        if self.uses_tma() {
            self.tma_tile(s, round, u);
            return;
        }
        if round > 0 {
            // SAFETY: an initialised barrier.
            unsafe { ptx::mbarrier_wait_parity(self.sm.empty(s), (round - 1) & 1) };
        }
        let key0 = u * Self::CK;
        let inside = key0 + Self::CK <= self.kv_len;
        // d = 96 has a copy loop of its own (`copy_chunks_hd96`), chosen by `if const`: with it
        // the other head dims' PTX is exactly what it was before d = 96, while a branch on
        // `HD == 96` inside `copy_chunks` (plain or `if const`) or a constant function pointer
        // for the V offset changed their instruction order (d = 64: 128 → 127 registers).
        if const { HD == 96 } {
            if inside {
                self.copy_chunks_hd96::<false>(s, u);
            } else {
                self.copy_chunks_hd96::<true>(s, u);
            }
        } else if inside {
            self.copy_chunks::<false>(s, u);
        } else {
            self.copy_chunks::<true>(s, u);
        }
        // SAFETY: an initialised barrier.
        unsafe { ptx::cp_async_mbarrier_arrive_noinc(self.sm.full(s)) };
    }

    /// Keys of one TMA box of K (the host's maps: `launch::tma`): a whole tile of the 8-bit
    /// P·V, 64 for the f16 one.
    const K_BOX_KEYS: u32 = if PV8 { Self::CK } else { 64 };

    /// Whether the tiles come by TMA ([`tiles_by_tma`]).
    #[inline(always)]
    fn uses_tma(&self) -> bool {
        tiles_by_tma::<HD, PV8>(self.tma)
    }

    /// Thread 0 copies K and V tile `u` into stage `s` (its `round`-th use) with TMA, once the
    /// stage's previous tile has been released (every thread waits: uniform control flow, which
    /// ptxas allocates fewer registers for). The copy engine swizzles each box into the layout the
    /// wgmma descriptors read; keys past the tensor (8-bit: past the padded K; f16 V: past
    /// `kv_len`) read as zeros. `full[s]` completes when thread 0 has arrived and every byte has
    /// landed. K: 128-byte-wide boxes of the tile's keys (d = 256: two column blocks). V: 8-bit,
    /// one Vᵀ sub-tile of 64 keys × d channels per 64 keys; f16, `d/64` column blocks of 64 keys × 64
    /// channels of the caller's V (a 4-D map over its strides).
    #[inline(always)]
    fn tma_tile(&self, s: u32, round: u32, u: u32) {
        if round > 0 {
            // SAFETY: an initialised barrier.
            unsafe { ptx::mbarrier_wait_parity(self.sm.empty(s), (round - 1) & 1) };
        }
        if self.tid != 0 {
            return;
        }
        let key0 = (u * Self::CK) as i32;
        let full = self.sm.full(s);
        let (k_map, v_map) = (self.tma, self.tma + 128);
        let bytes = Self::CK * HD as u32 * if PV8 { 2 } else { 3 };
        // SAFETY: the host encoded both maps for this call's K and V (`launch::tma`), 64-byte
        // aligned in global memory; each box lands inside its stage at an offset aligned for its
        // swizzle (multiples of 4 KiB); `full[s]` expects exactly their bytes.
        unsafe {
            ptx::mbarrier_arrive_expect_tx(full, bytes);
            let head = self.kv_head_index as i32;
            // One box per 128-byte column block (two at d = 256, whose tiles are 64 keys with
            // either P·V) and per `K_BOX_KEYS` keys: the f16 P·V's K boxes are 64 keys, two per
            // 128-key tile (whose K-major rows continue across them).
            unroll::<2>(
                #[inline(always)]
                |h| {
                    if (h as u32) < Self::CK / Self::K_BOX_KEYS {
                        let key = key0 + (h as u32 * Self::K_BOX_KEYS) as i32;
                        let box_bytes = Self::K_BOX_KEYS * sm90_kmajor_row_bytes(HD) as u32;
                        let rows = self.sm.k_stage(s) + h as u32 * box_bytes;
                        unroll::<2>(
                            #[inline(always)]
                            |b| {
                                if b < HD.div_ceil(128) {
                                    let dst = rows + b as u32 * smem::KMAJOR_BLOCK_BYTES;
                                    ptx::tma_load_3d(dst, k_map, 128 * b as i32, key, head, full);
                                }
                            },
                        );
                    }
                },
            );
            if PV8 {
                // One Vᵀ box per 64-key sub-tile (d = 256: one).
                let sub_tile = const { (HD * 64) as u32 };
                unroll::<2>(
                    #[inline(always)]
                    |h| {
                        if (h as u32) < Self::CK / 64 {
                            let dst = self.sm.v_stage(s) + h as u32 * sub_tile;
                            let key = key0 + 64 * h as i32;
                            ptx::tma_load_3d(dst, v_map, key, 0, head, full);
                        }
                    },
                );
            } else {
                let (kv_head, batch) = (self.kv_head as i32, self.batch as i32);
                // Boxes of 64 keys × 64 channels: a 128-key tile's column block takes two.
                unroll::<4>(
                    #[inline(always)]
                    |b| {
                        if b < HD / 64 {
                            let block =
                                self.sm.v_stage(s) + b as u32 * smem::v_block_bytes(Self::CK);
                            unroll::<2>(
                                #[inline(always)]
                                |h| {
                                    if (h as u32) < Self::CK / 64 {
                                        let dst = block + h as u32 * smem::v_block_bytes(64);
                                        let key = key0 + 64 * h as i32;
                                        let c = [64 * b as i32, key, kv_head, batch];
                                        ptx::tma_load_4d(dst, v_map, c, full);
                                    }
                                },
                            );
                        }
                    },
                );
            }
        }
    }

    /// f16 P·V: this thread's chunks of tile `u` into stage `s`; with `EDGE`, V rows past
    /// `kv_len` are zero-filled without a read.
    #[inline(always)]
    fn copy_chunks<const EDGE: bool>(&self, s: u32, u: u32) {
        let (threads, ck, k_chunks) = (Self::THREADS, Self::CK, Self::K_CHUNKS);
        let key0 = u * ck;
        let k_src = self.k_head + (u as u64) * (ck as u64 * HD as u64);
        unroll::<MAX_COPIES_PER_THREAD>(
            #[inline(always)]
            |j| {
                let c = self.tid + threads * j as u32;
                // With whole rounds of the CTA's threads (tid < threads), which chunks exist and
                // which are K's is known per j at compile time.
                let exists = if Self::CHUNKS.is_multiple_of(threads) {
                    (j as u32) < Self::CHUNKS / threads
                } else {
                    (j as u32) < Self::CHUNKS.div_ceil(threads) && c < Self::CHUNKS
                };
                let is_k = if k_chunks.is_multiple_of(threads) {
                    (j as u32) < k_chunks / threads
                } else {
                    c < k_chunks
                };
                if exists {
                    if is_k {
                        let cpr = (HD / 16) as u32;
                        let (r, col) = (c / cpr, c % cpr);
                        let dst = self.sm.k_stage(s) + kmajor_offset::<HD>(r, col);
                        let src = k_src + (r * HD as u32 + 16 * col) as u64;
                        if EDGE && ck == 128 {
                            // K is padded to whole 64-row blocks only: the last 128-key tile may
                            // end past it. Its keys past kv_len are masked; zero-filled, unread.
                            let (src, bytes) = if key0 + r < self.kv_len {
                                (src, 16)
                            } else {
                                (self.k_head, 0)
                            };
                            // SAFETY: rows below kv_len are inside the padded K.
                            unsafe { ptx::cp_async_16_zfill(dst, src, bytes) };
                        } else {
                            // SAFETY: K is padded to whole 64-row blocks, which 64-key tiles and
                            // every 128-key tile but an edge one stay inside.
                            unsafe { ptx::cp_async_16(dst, src) };
                        }
                    } else {
                        let c = c - k_chunks;
                        let cpr = (HD / 8) as u32;
                        let (r, col) = (c / cpr, c % cpr);
                        let dst = self.sm.v_stage(s) + smem::v_offset(r, col, ck);
                        let src =
                            self.v_head + (key0 + r) as u64 * self.v_row_bytes + 16 * col as u64;
                        if !EDGE {
                            // SAFETY: every key of the tile is inside V.
                            unsafe { ptx::cp_async_16(dst, src) };
                        } else {
                            // The sequence's last, partial tile: keys past kv_len are zero-filled
                            // (nothing is read; the address is replaced by the head's first row).
                            let (src, bytes) = if key0 + r < self.kv_len {
                                (src, 16)
                            } else {
                                (self.v_head, 0)
                            };
                            // SAFETY: see above.
                            unsafe { ptx::cp_async_16_zfill(dst, src, bytes) };
                        }
                    }
                }
            },
        );
    }

    /// [`Self::copy_chunks`] for d = 96 (f16 V only): 3 chunks per thread, K rows of 6 chunks
    /// into the 128-byte rows of the d = 128 layout, V rows of 12 chunks into three 64-byte
    /// swizzled blocks of 32 channels (`smem::v96_offset`). Every chunk exists and the first
    /// round of the CTA's threads copies K (384 threads, 384 K chunks: checked in `attention`).
    /// Instantiated, never called, for the other head dims too, so it holds no `const` checks.
    #[inline(always)]
    fn copy_chunks_hd96<const EDGE: bool>(&self, s: u32, u: u32) {
        let (threads, ck, k_chunks) = (Self::THREADS, Self::CK, Self::K_CHUNKS);
        let key0 = u * ck;
        let k_src = self.k_head + (u as u64) * (ck as u64 * HD as u64);
        unroll::<MAX_COPIES_PER_THREAD>(
            #[inline(always)]
            |j| {
                let c = self.tid + threads * j as u32;
                if (j as u32) < Self::CHUNKS / threads {
                    if (j as u32) < k_chunks / threads {
                        let cpr = (HD / 16) as u32;
                        let (r, col) = (c / cpr, c % cpr);
                        let dst = self.sm.k_stage(s) + kmajor_offset::<HD>(r, col);
                        let src = k_src + (r * HD as u32 + 16 * col) as u64;
                        // SAFETY: K is padded to whole 64-row blocks; this row is inside.
                        unsafe { ptx::cp_async_16(dst, src) };
                    } else {
                        let c = c - k_chunks;
                        let cpr = (HD / 8) as u32;
                        let (r, col) = (c / cpr, c % cpr);
                        let dst = self.sm.v_stage(s) + smem::v96_offset(r, col);
                        let src =
                            self.v_head + (key0 + r) as u64 * self.v_row_bytes + 16 * col as u64;
                        if !EDGE {
                            // SAFETY: every key of the tile is inside V.
                            unsafe { ptx::cp_async_16(dst, src) };
                        } else {
                            // Keys past kv_len are zero-filled (nothing read), as in
                            // `copy_chunks`.
                            let (src, bytes) = if key0 + r < self.kv_len {
                                (src, 16)
                            } else {
                                (self.v_head, 0)
                            };
                            // SAFETY: see above.
                            unsafe { ptx::cp_async_16_zfill(dst, src, bytes) };
                        }
                    }
                }
            },
        );
    }

    /// Copies tile `u` if it exists.
    #[inline(always)]
    fn copy_ahead(&self, u: u32) {
        if u < self.n_tiles {
            self.copy_tile(u);
        }
    }

    /// Waits until K and V tile `t` are in shared memory (follow with [`Self::make_visible`]).
    #[inline(always)]
    fn wait_k(&self, t: u32) {
        let s = Smem::<HD, PV8, NARROW>::S;
        // SAFETY: an initialised barrier.
        unsafe { ptx::mbarrier_wait_parity(self.sm.full(t % s), (t / s) & 1) };
    }

    /// Makes the tiles the waits above observed (written by cp.async, i.e. the generic proxy)
    /// visible to wgmma (the async proxy). In SASS this is `MEMBAR.ALL.CTA; FENCE.VIEW.ASYNC.S`:
    /// the membar waits for this thread's outstanding memory operations, so no global load may be
    /// in flight here (the K scales are loaded one tile ahead, after it).
    #[inline(always)]
    fn make_visible(&self) {
        if self.uses_tma() {
            // TMA writes through the async proxy, which wgmma reads: nothing to order.
            return;
        }
        ptx::fence_proxy_async_shared();
    }

    /// Hands the stage of tile `t` back to the copies (after this warpgroup's last wgmma on it
    /// has completed).
    #[inline(always)]
    fn release(&self, t: u32) {
        if self.lane == 0 {
            // SAFETY: an initialised barrier.
            unsafe { ptx::mbarrier_arrive(self.sm.empty(t % Smem::<HD, PV8, NARROW>::S)) };
        }
    }

    /// Descriptor of the K tile `t`'s 64-key half `h` (a 128-key tile is two 64-key tiles).
    #[inline(always)]
    fn k_desc(&self, t: u32, h: u32) -> u64 {
        let row_bytes = const { sm90_kmajor_row_bytes(HD) as u32 };
        kmajor_desc::<HD>(self.sm.k_stage(t % Smem::<HD, PV8, NARROW>::S) + h * (64 * row_bytes))
    }

    /// K scale of tile `t` (64-key tiles).
    #[inline(always)]
    fn k_scale(&self, t: u32) -> f32 {
        // SAFETY: t < k_blocks of this head.
        unsafe { ptx::ld_global_nc_f32(self.k_scale_row + 4 * t as u64) }
    }

    /// K scales of the two 64-key halves of tile `t` (the second one clamped to the last K block:
    /// its keys, if any are missing, are masked).
    #[inline(always)]
    fn k_scales(&self, t: u32) -> [f32; 2] {
        if Self::CK == K_BLOCK as u32 {
            // A 64-key tile is one K block (its "second half" is never read).
            let k = self.k_scale(t);
            return [k, k];
        }
        let b = t * (Self::CK / K_BLOCK as u32);
        [
            self.k_scale(b),
            self.k_scale((b + 1).min(self.last_k_block)),
        ]
    }

    /// Scores of tile `t` → probabilities: dequantize, mask, online softmax. Returns the f32
    /// probabilities (accumulator layout), the rescale factor of the two rows, and (8-bit P·V)
    /// the factor of the tile's P: with `PV8` the probabilities are relative to the tile's own
    /// row maximum, so that the u8 P uses its whole range, and the tile's product is worth
    /// `tile_factor` times that (1 with f16 P·V).
    #[inline(always)]
    fn softmax<const MASK: bool, const CAUSAL: bool, const NK: usize>(
        &self,
        s_int: &[[i32; 4]; NK],
        t: u32,
        k_scales: [f32; 2],
        softmax: &mut OnlineSoftmax,
        p_scale_log2: f32,
    ) -> ([[f32; 4]; NK], [f32; 2], [f32; 2]) {
        let bounds = TileBounds {
            key0: t * Self::CK,
            row0: self.warp_row0,
            lane: self.lane,
            kv_len: self.kv_len,
            diag: self.diag,
        };
        softmax.update_tile::<PV8, MASK, CAUSAL, NK>(
            s_int,
            self.q_scale,
            k_scales,
            &bounds,
            p_scale_log2,
        )
    }

    /// After the f16 P·V wait: `out *= rescale`, skipped when it is 1 for every row of the warp
    /// (once the row maxima settle, most tiles leave them unchanged).
    #[inline(always)]
    fn rescale<const NT: usize>(out: &mut [[f32; 4]; NT], rescale: [f32; 2]) {
        if !ptx::vote_all(rescale[0] == 1.0 && rescale[1] == 1.0) {
            unroll::<NT>(
                #[inline(always)]
                |j| {
                    unroll::<4>(
                        #[inline(always)]
                        |e| out[j][e] *= rescale[e >> 1],
                    );
                },
            );
        }
    }

    /// f16 P·V, tile 0: `S_0 = Q·K_0ᵀ` and its softmax (nothing to overlap with yet). Returns
    /// the packed P (`NK` 8-key n-tiles of scores, `PK = NK / 2` 16-key fragments of P).
    #[inline(always)]
    fn first<
        const MASK: bool,
        const CAUSAL: bool,
        const KS: usize,
        const NK: usize,
        const PK: usize,
    >(
        &self,
        softmax: &mut OnlineSoftmax,
    ) -> [[u32; 4]; PK] {
        self.wait_k(0);
        self.make_visible();
        let k_scales = self.k_scales(0);
        let qd = qk_descs::<KS>(self.q_desc, self.k_desc(0, 0));
        self.sched_wait();
        ptx::wgmma_fence();
        let mut s = issue_scores::<KS, NK>(&qd);
        ptx::wgmma_commit();
        self.sched_pass();
        self.copy_ahead(Self::LOOKAHEAD);
        ptx::wgmma_wait::<0>();
        smem::pin_acc(&mut s);
        let (p, _, _) = self.softmax::<MASK, CAUSAL, NK>(&s, 0, k_scales, softmax, 0.0);
        pack_probs(&p)
    }

    /// f16 P·V, step t ≥ 1: issue `S_t = Q·K_tᵀ` and `P_{t-1}·V_{t-1}`; softmax of tile t
    /// while the P·V runs; then rescale O. Releases tile t-2's stage. `probs` holds `P_{t-1}` on
    /// entry and `P_t` on return; `k_scales_t` tile t's K scales on entry, tile t + 1's on return.
    /// `backoff` decides whether an unmasked tile tries the lagging max ([`RetryBackoff`]).
    #[inline(always)]
    fn step<
        const MASK: bool,
        const CAUSAL: bool,
        const KS: usize,
        const NT: usize,
        const NK: usize,
        const PK: usize,
        const KB: usize,
    >(
        &self,
        t: u32,
        probs: &mut [[u32; 4]; PK],
        out: &mut [[f32; 4]; NT],
        softmax: &mut OnlineSoftmax,
        k_scales_t: &mut [f32; KB],
        backoff: &mut RetryBackoff,
    ) {
        // V_{t-1} arrived with K_{t-1} (one barrier per stage), waited for in step t-1.
        self.wait_k(t);
        self.make_visible();
        let k_scales = [k_scales_t[0], k_scales_t[KB - 1]];
        *k_scales_t = self.tile_k_scales::<KB>((t + 1).min(self.last_tile));
        // Tile t-2's stage was last read by the P·V that step t-1 waited for. Releasing it here
        // rather than right after that wait keeps ptxas from hoisting the arrive, and with it the
        // wgmma wait, above the softmax it should overlap.
        if t >= 2 {
            self.release(t - 2);
        }
        let qd = qk_descs::<KS>(self.q_desc, self.k_desc(t, 0));
        let vd = self.v_descs::<NT, PK>(t - 1);
        self.sched_wait();
        ptx::wgmma_fence();
        let mut s = issue_scores::<KS, NK>(&qd);
        ptx::wgmma_commit();
        issue_pv::<NT, PK>(out, probs, &vd);
        ptx::wgmma_commit();
        self.sched_pass();
        self.copy_ahead(t + Self::LOOKAHEAD);
        ptx::wgmma_wait::<1>();
        smem::pin_acc(&mut s);
        let lagging = !MASK && f16_probs_against_max(HD);
        let mut kept = None;
        if lagging && backoff.may_try() {
            let (p, sums, within) =
                softmax.probabilities_against_max::<NK>(&s, self.q_scale, k_scales);
            if ptx::named_barrier_all(1 + self.wg, 128, within) {
                backoff.kept();
                softmax.add_sums(sums);
                kept = Some(p);
            } else {
                backoff.retried();
                // A probability passed 2^14 (a score 14 above the max in log2 units) or is not
                // finite: the tile again from its scores, which the probabilities overwrote,
                // with a new max. K_t is still resident (its stage is released in step t + 2).
                // The descriptors are rebuilt (a few integer ops on this rare path) rather than
                // kept live across the softmax.
                let qd = qk_descs::<KS>(self.q_desc, self.k_desc(t, 0));
                ptx::wgmma_fence();
                s = issue_scores::<KS, NK>(&qd);
                ptx::wgmma_commit();
                ptx::wgmma_wait::<0>();
                smem::pin_acc(&mut s);
            }
        } else if lagging {
            backoff.waited();
        }
        // One exact softmax for masked tiles, retries and tiles the backoff holds back.
        let (mut next, rescale) = match kept {
            Some(p) => (p, [1.0f32; 2]),
            None => {
                let (p, rescale, _) =
                    self.softmax::<MASK, CAUSAL, NK>(&s, t, k_scales, softmax, 0.0);
                (p, rescale)
            }
        };
        // ptxas's scheduler hoists `wgmma.wait_group 0` to the top of the softmax (it does not
        // model the wait's stall), which would serialise the softmax behind the P·V. A branch on
        // the softmax's last result (the row sums) ends the basic block there, so the wait stays
        // after all of it. Never taken: the sums are >= 0 or a positive NaN, never all-ones bits.
        if softmax.sum[0].to_bits() & softmax.sum[1].to_bits() == u32::MAX {
            ptx::trap();
        }
        ptx::wgmma_wait::<0>();
        smem::pin_o(out);
        // P_t is packed only now: ptxas coalesces the packed registers with the loop-carried
        // P_{t-1} that the P·V just issued reads, and would serialize the wgmmas (C7513) if they
        // were written while it is in flight.
        unroll::<NK>(
            #[inline(always)]
            |j| ptx::pin_f32x4(&mut next[j]),
        );
        Self::rescale::<NT>(out, rescale);
        *probs = pack_probs(&next);
    }

    /// The `KB` K scales of tile `t` (one per 64-key K block; with one, a single load carried
    /// as one register).
    #[inline(always)]
    fn tile_k_scales<const KB: usize>(&self, t: u32) -> [f32; KB] {
        let k = self.k_scales(t);
        let mut out = [0.0; KB];
        unroll::<KB>(
            #[inline(always)]
            |b| out[b] = k[b],
        );
        out
    }

    /// The f16 P·V's descriptors of the V tile `t`'s `PK` k-steps.
    #[inline(always)]
    fn v_descs<const NT: usize, const PK: usize>(&self, t: u32) -> [[u64; PK]; 2] {
        let stage = self.sm.v_stage(t % Smem::<HD, PV8, NARROW>::S);
        pv_descs::<NT, PK>(smem::v_tile_desc::<HD>(stage, Self::CK))
    }

    /// The f16 P·V's loop over the CTA's key tiles (`NK` 8-key n-tiles per tile, `PK = NK / 2`
    /// fragments of P, `KB = NK / 8` K blocks), unmasked tiles first.
    #[inline(always)]
    fn run_f16<
        const CAUSAL: bool,
        const KS: usize,
        const NT: usize,
        const NK: usize,
        const PK: usize,
        const KB: usize,
    >(
        &self,
        geo: &Geometry,
        out: &mut [[f32; 4]; NT],
        softmax: &mut OnlineSoftmax,
    ) {
        let mut probs = if geo.n_unmasked > 0 {
            self.first::<false, CAUSAL, KS, NK, PK>(softmax)
        } else {
            self.first::<true, CAUSAL, KS, NK, PK>(softmax)
        };
        // K scales of the next tile, loaded one step ahead (see `Consumer::make_visible`).
        let mut k_scales = self.tile_k_scales::<KB>(1.min(self.last_tile));
        let mut backoff = RetryBackoff::new();
        let (p_, k_, b_) = (&mut probs, &mut k_scales, &mut backoff);
        for t in 1..geo.n_unmasked {
            self.step::<false, CAUSAL, KS, NT, NK, PK, KB>(t, p_, out, softmax, k_, b_);
        }
        for t in geo.n_unmasked.max(1)..geo.n_tiles {
            self.step::<true, CAUSAL, KS, NT, NK, PK, KB>(t, p_, out, softmax, k_, b_);
        }
        self.last::<NT, PK>(geo.n_tiles - 1, &probs, out);
    }

    /// Issues `S_t = Q·K_tᵀ` for a 128-key tile (one n = 128 product per k-step at d ≤ 128) into
    /// one commit group, with no wait (tile t waited for and made visible). With 64-key tiles
    /// (d = 256) only the first [`Self::NK`] n-tiles are scores; the rest stay zero, never read.
    #[inline(always)]
    fn issue_qk_pv8<const KS: usize>(&self, t: u32) -> [[i32; 4]; 16] {
        let qd = qk_descs::<KS>(self.q_desc, self.k_desc(t, 0));
        if Self::CK == 64 {
            ptx::wgmma_fence();
            let s_lo = issue_qk::<KS>(&qd);
            ptx::wgmma_commit();
            let mut s = [[0i32; 4]; 16];
            unroll::<8>(
                #[inline(always)]
                |j| s[j] = s_lo[j],
            );
            return s;
        }
        if HD <= 128 {
            // The two 64-key halves are consecutive K-major rows: one n = 128 product per k-step,
            // as the official kernel (measured slower in v3.7's pipelined two-warpgroup kernel;
            // this serial step waits for the whole product either way).
            ptx::wgmma_fence();
            let s = issue_qk128::<KS>(&qd);
            ptx::wgmma_commit();
            return s;
        }
        // A 128-key tile's second half: the same Q descriptors, K's from its second 64 rows.
        let kd_hi = qk_descs::<KS>(0, self.k_desc(t, 1))[1];
        ptx::wgmma_fence();
        let s_lo = issue_qk::<KS>(&qd);
        let s_hi = issue_qk::<KS>(&[qd[0], kd_hi]);
        ptx::wgmma_commit();
        let mut s = [[0i32; 4]; 16];
        unroll::<16>(
            #[inline(always)]
            |j| s[j] = if j < 8 { s_lo[j] } else { s_hi[j - 8] },
        );
        s
    }

    /// The 8-bit P·V step, serial: `S_t = Q·K_tᵀ`, its softmax, then `P_t·V_t` into a
    /// fresh s32 accumulator and `O = O·rescale + acc·factor`, with nothing of this warpgroup in
    /// flight across the softmax: the other warpgroups' wgmmas fill the tensor cores meanwhile.
    /// Holding only one of S and the s32 accumulator at a time is what lets 128-key tiles fit the
    /// register cap of two to four warpgroups per SM. Loads its tile's K scales itself, under
    /// its Q·Kᵀ (carried from the previous step, the two registers made ptxas spill at the 168
    /// cap). Releases tile t-1's stage.
    #[inline(always)]
    fn step_serial<
        const MASK: bool,
        const CAUSAL: bool,
        const KS: usize,
        const NT: usize,
        const FP8: bool,
    >(
        &self,
        t: u32,
        out: &mut [[f32; 4]; NT],
        softmax: &mut OnlineSoftmax,
    ) {
        self.wait_k(t);
        self.make_visible();
        let k_scales = self.k_scales(t);
        if t >= 1 {
            self.release(t - 1);
        }
        let mut s = self.issue_qk_pv8::<KS>(t);
        self.copy_ahead(t + Self::LOOKAHEAD);
        ptx::wgmma_wait::<0>();
        unroll::<16>(
            #[inline(always)]
            |j| {
                if j < Self::NK {
                    ptx::pin_i32x4(&mut s[j])
                }
            },
        );
        self.softmax_pv8::<MASK, CAUSAL, NT, FP8>(t, &s, out, softmax, k_scales);
    }

    /// The second half of an 8-bit P·V step: the softmax of tile t's scores `s`, P as u8 (e4m3
    /// with `FP8`), `O *= rescale`, then `P_t·V_t` in column groups of 64 channels, each into a
    /// fresh s32 (f32) accumulator folded into O (`O += acc·factor`) before the next group is
    /// issued.
    #[inline(always)]
    fn softmax_pv8<const MASK: bool, const CAUSAL: bool, const NT: usize, const FP8: bool>(
        &self,
        t: u32,
        s: &[[i32; 4]; 16],
        out: &mut [[f32; 4]; NT],
        softmax: &mut OnlineSoftmax,
        k_scales: [f32; 2],
    ) {
        if Self::NK == 8 {
            let Some(s8) = s.first_chunk::<8>() else {
                return;
            };
            self.softmax_pv8_nk::<MASK, CAUSAL, NT, 8, FP8>(t, s8, out, softmax, k_scales);
        } else {
            self.softmax_pv8_nk::<MASK, CAUSAL, NT, 16, FP8>(t, s, out, softmax, k_scales);
        }
    }

    /// [`Self::softmax_pv8`] for `NK` 8-key n-tiles of scores (16: 128-key tiles, 8: 64-key).
    #[inline(always)]
    fn softmax_pv8_nk<
        const MASK: bool,
        const CAUSAL: bool,
        const NT: usize,
        const NK: usize,
        const FP8: bool,
    >(
        &self,
        t: u32,
        s: &[[i32; 4]; NK],
        out: &mut [[f32; 4]; NT],
        softmax: &mut OnlineSoftmax,
        k_scales: [f32; 2],
    ) {
        let p_scale_log2 = if FP8 { LOG2_P_FP8_MAX } else { 0.0 };
        let (mut p, rescale, factor) =
            self.softmax::<MASK, CAUSAL, NK>(s, t, k_scales, softmax, p_scale_log2);
        unroll::<NK>(
            #[inline(always)]
            |j| ptx::pin_f32x4(&mut p[j]),
        );
        let probs = if FP8 {
            pack_probs_e4m3(&p)
        } else {
            pack_probs_u8(&p)
        };
        if !ptx::vote_all(rescale[0] == 1.0 && rescale[1] == 1.0) {
            unroll::<NT>(
                #[inline(always)]
                |j| {
                    unroll::<4>(
                        #[inline(always)]
                        |e| out[j][e] *= rescale[e >> 1],
                    );
                },
            );
        }
        if HD == 128 && !(MASK && CAUSAL) {
            // d = 128 (one warpgroup per CTA, as at every d): S is dead here, so the whole
            // product fits as one n = 128 wgmma per k-step into 64 s32 registers, with one wait,
            // as the official kernel does (on causal masked tiles ptxas spilled with it: column
            // groups there).
            if FP8 {
                let acc = self.pv8_product(t, &probs, 0, issue_pv_fp8::<16>, smem::pin_o);
                Self::fold(out, 0, &acc, factor, |a| a);
            } else {
                let acc = self.pv8_product(t, &probs, 0, issue_pv8::<16>, smem::pin_acc);
                Self::fold(out, 0, &acc, factor, |a| a as f32);
            }
            return;
        }
        // The product in column groups of at most 64 channels, each into a fresh s32 accumulator
        // folded before the next is issued: at d = 128 this keeps 32 accumulator registers live
        // instead of 64 beside the output's 64. (Issuing both groups back to back and folding the
        // first under the second measured 1–2% slower: docs/perf-notes.md, v3.1.)
        const { assert!(!PV8 || (NT % 8 == 0 && NT <= 32)) };
        unroll::<4>(
            #[inline(always)]
            |g| {
                if 8 * g < NT {
                    if FP8 {
                        let acc = self.pv8_product(t, &probs, g, issue_pv_fp8::<8>, smem::pin_o);
                        Self::fold(out, 8 * g, &acc, factor, |a| a);
                    } else {
                        let acc = self.pv8_product(t, &probs, g, issue_pv8::<8>, smem::pin_acc);
                        Self::fold(out, 8 * g, &acc, factor, |a| a as f32);
                    }
                    // d = 256: ptxas would issue the next group's product while this one is
                    // still being folded, two 32-register accumulators beside the 128 output
                    // registers, and spill. A branch on the fold's last result ends the basic
                    // block, so the next issue stays after it (never taken: an FMA makes a
                    // canonical NaN, never all-ones bits). d ≤ 128 keep their schedule.
                    if HD == 256 && out[8 * g + 7][3].to_bits() == u32::MAX {
                        ptx::trap();
                    }
                }
            },
        );
    }

    /// `P_t·V_t` for the channels `64g ..` of tile t (`N` n-tiles of 8 channels: 8, or 16 for
    /// d = 128 at once), issued by `issue` into a fresh accumulator (`issue_pv8`: u8 P × s8 Vᵀ
    /// into s32; `issue_pv_fp8`: e4m3 × e4m3 into f32), waited for and pinned by `pin`.
    #[inline(always)]
    fn pv8_product<const N: usize, A>(
        &self,
        t: u32,
        probs: &[[u32; 4]; 4],
        g: usize,
        issue: impl FnOnce(&[[u32; 4]; 4], &[u64; 4], usize) -> [[A; 4]; N],
        pin: impl FnOnce(&mut [[A; 4]; N]),
    ) -> [[A; 4]; N] {
        let vd = self.vt_descs(t, g);
        ptx::wgmma_fence();
        let mut acc = issue(probs, &vd, Self::CK as usize / 32);
        ptx::wgmma_commit();
        ptx::wgmma_wait::<0>();
        pin(&mut acc);
        acc
    }

    /// The Vᵀ descriptors of tile t's k-steps for the channels `64g ..` (channel rows 64g.. of
    /// every Vᵀ sub-tile: 64 rows × 64 bytes = 256 units), shared by both 8-bit products.
    #[inline(always)]
    fn vt_descs(&self, t: u32, g: usize) -> [u64; 4] {
        let stage = self.sm.v_stage(t % Smem::<HD, PV8, NARROW>::S);
        let mut vd = pv8_descs::<HD>(kmajor_desc::<64>(stage), Self::CK as usize / 32);
        unroll::<4>(
            #[inline(always)]
            |kk| vd[kk] += 256 * g as u64,
        );
        vd
    }

    /// `O += acc·factor` for the output n-tiles `first ..` (`factor`: the tile's P scale per row),
    /// `acc` the tile's product as f32 (`to_f32`: the s32 one's conversion, or the f32 one as is).
    #[inline(always)]
    fn fold<const NT: usize, const N: usize, A: Copy>(
        out: &mut [[f32; 4]; NT],
        first: usize,
        acc: &[[A; 4]; N],
        factor: [f32; 2],
        to_f32: impl Fn(A) -> f32,
    ) {
        unroll::<N>(
            #[inline(always)]
            |j| {
                if first + j < NT {
                    let o = &mut out[first + j];
                    unroll::<4>(
                        #[inline(always)]
                        |e| o[e] = ptx::fma(to_f32(acc[j][e]), factor[e >> 1], o[e]),
                    );
                }
            },
        );
    }

    /// f16 P·V: the last `P·V` (tile `t`).
    #[inline(always)]
    fn last<const NT: usize, const PK: usize>(
        &self,
        t: u32,
        probs: &[[u32; 4]; PK],
        out: &mut [[f32; 4]; NT],
    ) {
        // V_t arrived with K_t, waited for (and made visible) in the step of tile t. Tile t - 1's
        // stage is not released: the next tile to use it would be t - 1 + S > t, the last.
        let vd = self.v_descs::<NT, PK>(t);
        ptx::wgmma_fence();
        issue_pv::<NT, PK>(out, probs, &vd);
        ptx::wgmma_commit();
        ptx::wgmma_wait::<0>();
        smem::pin_o(out);
        // Tile t's stage is never reused: no tile is left to load.
    }
}

/// Issues the f16 P·V's `S_t = Q·K_tᵀ` (no fence, commit or wait): `NK` = 8 n-tiles of 8 keys
/// (one n = 64 product per k-step), or 16 (a 128-key tile, one n = 128 product per k-step).
#[inline(always)]
fn issue_scores<const KS: usize, const NK: usize>(qd: &[[u64; KS]; 2]) -> [[i32; 4]; NK] {
    let mut s = [[0i32; 4]; NK];
    if NK == 16 {
        let s16 = issue_qk128::<KS>(qd);
        unroll::<NK>(
            #[inline(always)]
            |j| s[j] = s16[j],
        );
    } else {
        let s8 = issue_qk::<KS>(qd);
        unroll::<8>(
            #[inline(always)]
            |j| s[j] = s8[j],
        );
    }
    s
}

/// f32 probabilities (accumulator layout, `NK` n-tiles of 8 keys) → the `PK = NK / 2` f16 A
/// fragments of `P·V` (keys `16kk..16kk+16` in fragment kk: the FlashAttention-2 register reuse,
/// no shuffles).
#[inline(always)]
fn pack_probs<const NK: usize, const PK: usize>(s: &[[f32; 4]; NK]) -> [[u32; 4]; PK] {
    const { assert!(2 * PK == NK) };
    let mut probs = [[0u32; 4]; PK];
    unroll::<PK>(
        #[inline(always)]
        |kk| {
            let (lo, hi) = (&s[2 * kk], &s[2 * kk + 1]);
            probs[kk] = [
                ptx::pack_f16x2(lo[0], lo[1]),
                ptx::pack_f16x2(lo[2], lo[3]),
                ptx::pack_f16x2(hi[0], hi[1]),
                ptx::pack_f16x2(hi[2], hi[3]),
            ];
        },
    );
    probs
}

/// A consumer warpgroup: loads its 64 Q rows, runs the pipelined loop, writes O and the LSE.
#[inline(always)]
unsafe fn consume<
    const HD: usize,
    const KS: usize,
    const NT: usize,
    const CAUSAL: bool,
    const PV8: bool,
    const NARROW: bool,
    const FP8: bool,
>(
    p: &AttnParams,
    geo: &Geometry,
    sm: Smem<HD, PV8, NARROW>,
    tid: u32,
) {
    let wg = tid >> 7; // < sm90_consumer_warpgroups(HD, PV8, NARROW)
    let lane = tid & 31;
    let wg_row0 = 64 * wg;
    let warp_row0 = geo.q_row0 + wg_row0 + 16 * ((tid >> 5) & 3);
    let mut softmax = OnlineSoftmax::new();
    let mut out = [[0.0f32; 4]; NT];

    if geo.n_tiles > 0 {
        // This warpgroup's 64 Q rows: loads started here, landed after the first K/V copies.
        let q_dst = sm.q + wg_row0 * const { sm90_kmajor_row_bytes(HD) as u32 };
        let wtid = tid & 127;
        // SAFETY: validated parameters; q_dst is this warpgroup's tile.
        let q_tile = unsafe {
            QTile::begin::<HD>(p, geo.batch, geo.head, geo.q_row0 + wg_row0, q_dst, wtid)
        };
        let k_blocks = padded_len(p.kv_len as usize, K_BLOCK) / K_BLOCK;
        let k_scale_row =
            p.k_scale + 4 * (geo.batch * p.kv_heads + geo.kv_head) as u64 * k_blocks as u64;
        let padded_k = padded_len(p.kv_len as usize, K_BLOCK) as u64;
        let kv_head = (geo.batch * p.kv_heads + geo.kv_head) as u64;
        // f16 V: any strides (the 8-bit P·V reads K and its INT8 Vᵀ through the TMA maps).
        let (v_head, v_row_bytes) = if PV8 {
            (0, 0)
        } else {
            let v_head = geo.batch as i64 * p.v_stride[0] + geo.kv_head as i64 * p.v_stride[1];
            ((p.v as i64 + 2 * v_head) as u64, 2 * p.v_stride[2] as u64)
        };
        let mut c = Consumer::<HD, PV8, NARROW> {
            sm,
            q_desc: kmajor_desc::<HD>(q_dst),
            q_scale: [0.0; 2],
            k_scale_row,
            kv_len: p.kv_len,
            diag: geo.diag,
            warp_row0,
            last_tile: geo.n_tiles - 1,
            last_k_block: k_blocks as u32 - 1,
            lane,
            wg,
            tid,
            k_head: p.k + kv_head * padded_k * HD as u64,
            v_head,
            v_row_bytes,
            n_tiles: geo.n_tiles,
            tma: p.tma,
            kv_head_index: kv_head as u32,
            kv_head: geo.kv_head,
            batch: geo.batch,
        };
        if c.uses_tma() && tid == 0 {
            ptx::prefetch_tensormap(p.tma);
            ptx::prefetch_tensormap(p.tma + 128);
        }
        // The first tiles (not in a cp.async group: `QTile::finish` waits for Q's only).
        unroll::<8>(
            #[inline(always)]
            |u| {
                if (u as u32) < Consumer::<HD, PV8, NARROW>::LOOKAHEAD {
                    c.copy_ahead(u as u32)
                }
            },
        );
        // SAFETY: as for `begin`.
        c.q_scale = unsafe { q_tile.finish::<HD>(p, q_dst, wtid) };
        ptx::fence_proxy_async_shared();
        ptx::named_barrier_sync(1 + wg, 128);

        if pingpong(PV8, HD, NARROW) && wg == 0 {
            // The first turn is warpgroup 0's: its own arrival completes its first wait.
            ptx::named_barrier_arrive(SCHED_BAR0, 256);
        }
        if PV8 {
            let (o_, s_) = (&mut out, &mut softmax);
            for t in 0..geo.n_unmasked {
                c.step_serial::<false, CAUSAL, KS, NT, FP8>(t, o_, s_);
            }
            for t in geo.n_unmasked..geo.n_tiles {
                c.step_serial::<true, CAUSAL, KS, NT, FP8>(t, o_, s_);
            }
        } else if Consumer::<HD, PV8, NARROW>::CK == 128 {
            c.run_f16::<CAUSAL, KS, NT, 16, 8, 2>(geo, &mut out, &mut softmax);
        } else {
            c.run_f16::<CAUSAL, KS, NT, 8, 4, 1>(geo, &mut out, &mut softmax);
        }
    }
    // SAFETY: the output and LSE pointers were validated by the host for these shapes.
    unsafe { store::<NT, PV8, FP8>(p, geo, warp_row0, lane, &softmax, &out) };
}

/// Writes this warp's 16 rows of O (and LSE when requested), as `attention/epilogue.rs`. With
/// `PV8`, O is in units of `P8_MAX` (with `FP8`: O and the row sums both in the e4m3 P's unit)
/// and of each channel's V scale, and the V mean smoothing took away is added back (except on
/// rows that see no key, which stay 0).
#[inline(always)]
unsafe fn store<const NT: usize, const PV8: bool, const FP8: bool>(
    p: &AttnParams,
    geo: &Geometry,
    warp_row0: u32,
    lane: u32,
    softmax: &OnlineSoftmax,
    out: &[[f32; 4]; NT],
) {
    let head_base =
        p.o as i64 + 2 * (geo.batch as i64 * p.o_stride[0] + geo.head as i64 * p.o_stride[1]);
    let hd = 8 * NT as u64;
    let kv_head = (geo.batch * p.kv_heads + geo.kv_head) as u64;
    let (v_scale, v_mean) = (
        p.v_scale + 4 * kv_head * 2 * hd,
        p.v_mean + 4 * kv_head * hd,
    );
    // u8: O is in units of the largest P of each tile's scaling, the row sums of P in [0, 1];
    // e4m3: both in P's unit (the softmax's `p_scale_log2`), which the LSE takes back out.
    let (inv_p_max, p_scale_log2) = if FP8 {
        (1.0, LOG2_P_FP8_MAX)
    } else {
        (1.0 / P8_MAX, 0.0)
    };
    if PV8 && (NT == 32 || (FP8 && NT == 16)) {
        // SAFETY: forwarded.
        unsafe {
            store_pv8_by_column(
                p,
                geo,
                head_base,
                (v_scale, v_mean, inv_p_max, p_scale_log2),
                warp_row0,
                lane,
                softmax,
                out,
            )
        };
        return;
    }
    unroll::<2>(
        #[inline(always)]
        |h| {
            // Shuffles first: every lane must take part, whether or not its row exists.
            let l = softmax.row_sum(h);
            let inv = if l == 0.0 { 0.0 } else { ptx::rcp(l) };
            let row = warp_row0 + (lane >> 2) + 8 * h as u32;
            if row < p.qo_len {
                let row_ptr = head_base + 2 * row as i64 * p.o_stride[2];
                unroll::<NT>(
                    #[inline(always)]
                    |nt| {
                        let c = out[nt];
                        let col = nt as u32 * 8 + 2 * (lane & 3);
                        let (mut a, mut b) = (c[2 * h] * inv, c[2 * h + 1] * inv);
                        if PV8 && l != 0.0 {
                            // SAFETY: col + 1 < HD: inside this kv head's scales and mean.
                            (a, b) = unsafe {
                                unsmooth_v8_scaled(v_scale, v_mean, col, a, b, inv_p_max)
                            };
                        }
                        let packed = pack_out(p, a, b);
                        // SAFETY: row < qo_len and col + 1 < HD: inside the validated output.
                        unsafe { ptx::st_global_u32((row_ptr + 2 * col as i64) as u64, packed) };
                    },
                );
                if p.lse != 0 && lane & 3 == 0 {
                    // SAFETY: row < qo_len; the LSE buffers were validated for these shapes.
                    unsafe {
                        store_lse(p, geo.batch, geo.head, row, l, softmax.max[h], p_scale_log2)
                    };
                }
            }
        },
    );
}

/// [`store`] for the 8-bit P·V at d = 256 and the FP8 one at d = 128, columns outermost: each
/// column pair's V scale and mean are loaded once for both of the thread's rows, and both rows'
/// outputs of a column die together. Row by row (as `store`), ptxas spilled 4–8 bytes beside
/// d = 256's 128 output registers, and 16 bytes at the FP8 d = 128 kernel's 168-register cap.
///
/// # Safety
/// As [`store`]; `v8` is this kv head's V scales and mean.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_pv8_by_column<const NT: usize>(
    p: &AttnParams,
    geo: &Geometry,
    head_base: i64,
    (v_scale, v_mean, inv_p_max, p_scale_log2): (u64, u64, f32, f32),
    warp_row0: u32,
    lane: u32,
    softmax: &OnlineSoftmax,
    out: &[[f32; 4]; NT],
) {
    // Shuffles first: every lane must take part, whether or not its rows exist.
    let l = [softmax.row_sum(0), softmax.row_sum(1)];
    let inv = l.map(|l| if l == 0.0 { 0.0 } else { ptx::rcp(l) });
    let row = [warp_row0 + (lane >> 2), warp_row0 + (lane >> 2) + 8];
    let row_ptr = row.map(|r| head_base + 2 * r as i64 * p.o_stride[2]);
    unroll::<NT>(
        #[inline(always)]
        |nt| {
            let c = out[nt];
            let col = nt as u32 * 8 + 2 * (lane & 3);
            unroll::<2>(
                #[inline(always)]
                |h| {
                    if row[h] < p.qo_len {
                        let (mut a, mut b) = (c[2 * h] * inv[h], c[2 * h + 1] * inv[h]);
                        if l[h] != 0.0 {
                            // SAFETY: col + 1 < HD: inside this kv head's scales and mean.
                            (a, b) = unsafe {
                                unsmooth_v8_scaled(v_scale, v_mean, col, a, b, inv_p_max)
                            };
                        }
                        let packed = pack_out(p, a, b);
                        let at = (row_ptr[h] + 2 * col as i64) as u64;
                        // SAFETY: row < qo_len and col + 1 < HD: inside the validated output.
                        unsafe { ptx::st_global_u32(at, packed) };
                    }
                },
            );
        },
    );
    unroll::<2>(
        #[inline(always)]
        |h| {
            if row[h] < p.qo_len && p.lse != 0 && lane & 3 == 0 {
                // SAFETY: row < qo_len; the LSE buffers were validated for these shapes.
                unsafe {
                    store_lse(
                        p,
                        geo.batch,
                        geo.head,
                        row[h],
                        l[h],
                        softmax.max[h],
                        p_scale_log2,
                    )
                };
            }
        },
    );
}

macro_rules! sm90_attention_entry {
    ($name:literal, $hd:literal, $causal:literal, $pv8:literal, $narrow:literal) => {
        const _: () = {
            /// Kernel entry (see the module docs); one per variant.
            #[unsafe(export_name = $name)]
            pub unsafe extern "ptx-kernel" fn sm90_attention_entry(p: AttnParams) {
                // SAFETY: the host launches this entry only with validated parameters.
                unsafe {
                    attention::<$hd, { $hd / 32 }, { $hd / 8 }, $causal, $pv8, $narrow, false>(&p)
                }
            }
        };
    };
}

crate::for_each_sm90_attention_variant!(sm90_attention_entry);

macro_rules! sm90_fp8_attention_entry {
    ($name:literal, $hd:literal, $causal:literal) => {
        const _: () = {
            /// Kernel entry of the FP8 P·V (the 8-bit step with e4m3 P and Vᵀ); one per variant.
            #[unsafe(export_name = $name)]
            pub unsafe extern "ptx-kernel" fn sm90_fp8_attention_entry(p: AttnParams) {
                // SAFETY: the host launches this entry only with validated parameters.
                unsafe {
                    attention::<$hd, { $hd / 32 }, { $hd / 8 }, $causal, true, false, true>(&p)
                }
            }
        };
    };
}

crate::for_each_sm90_fp8_variant!(sm90_fp8_attention_entry);
