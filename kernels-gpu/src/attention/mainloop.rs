//! The main loop: a two-stage cp.async pipeline of K and V tiles and the one `step` body that
//! every key tile runs (masked or not).
//!
//! Tiles are visited in order, or from the last down for causal calls (`Pipeline::tile_of`);
//! below, index i counts visits. cp.async groups are committed in the order Q+K₀, V₀, K₁, V₁, …:
//! when step i starts, the groups in flight are exactly (Kᵢ, Vᵢ), so `wait_group 1` + barrier
//! makes Kᵢ visible, and after issuing Kᵢ₊₁ the same again makes Vᵢ visible. Empty groups are
//! committed past the last tile to keep that count uniform. Stage `(i+1) % 2` is overwritten only
//! after a barrier that every warp reaches after finishing visit i-1, its previous user.

use super::softmax::OnlineSoftmax;
use super::{BlockGeometry, OutAcc};
use crate::config::{
    cta_k, cta_q, k_stage_bytes, padded_len, q_tile_bytes, v_stage_bytes, ATTN_THREADS,
    F16_ACC_OVERFLOW_SHIFT, K_BLOCK, Q_BLOCK,
};
use crate::frag::{self, acc_col, acc_row, AccF16, AccF32, AccS32, FragA};
use crate::params::AttnParams;
use crate::ptx;
use crate::retry::RetryBackoff;
use crate::tile::Tile;
use crate::unroll::unroll;

/// Global sources and shared tiles of one CTA.
pub(crate) struct Pipeline<const HD: usize, const PV_F32: bool, const COMPACT: bool> {
    q_tile: Tile,
    /// Stage 0 of K and of V; stage 1 follows each at `*_stage_bytes(HD)`.
    k_stage0: Tile,
    v_stage0: Tile,
    /// Row `q_row0` of this (batch, head) in the padded INT8 Q.
    q_src: u64,
    /// Row 0 of this (batch, kv head) in the padded INT8 K.
    k_src: u64,
    /// Row 0 of this (batch, kv head) of V, and its row stride in bytes.
    v_src: u64,
    v_row_bytes: u64,
    kv_len: u32,
    n_tiles: u32,
    /// First query row of this warp within the CTA.
    warp_row0: u32,
    lane: u32,
    tid: u32,
}

/// Per-CTA constants the step needs.
pub(crate) struct StepArgs<'a, const MT: usize> {
    pub geo: &'a BlockGeometry,
    /// Q's scales (per token) of this thread's rows: m-tile `mt`, row g (`[mt][0]`) and g + 8.
    pub q_scale: [[f32; 2]; MT],
    /// Address of this (batch, kv head)'s first K scale.
    pub k_scale_row: u64,
    pub kv_len: u32,
}

impl<const HD: usize, const PV_F32: bool, const COMPACT: bool> Pipeline<HD, PV_F32, COMPACT> {
    /// d = 256 copies K and V tiles row-per-thread ([`Self::copy_rows`]): one copy address per
    /// thread stays live across the tile loop instead of one per chunk (8 for V), which with the
    /// 128 output registers is what fits (ptxas 12.9: 240–243 registers instead of 246–255).
    /// The d ≤ 128 variants keep the copy they were measured with (docs/perf-notes.md, v4).
    const WIDE: bool = HD > 128;

    #[inline(always)]
    pub fn new(p: &AttnParams, geo: &BlockGeometry) -> Self {
        let base = ptx::smem_base();
        let k0 = base + q_tile_bytes(HD, PV_F32) as u32;
        let v0 = k0 + 2 * k_stage_bytes(HD, PV_F32, COMPACT) as u32;
        let padded_q = padded_len(p.qo_len as usize, Q_BLOCK) as u64;
        let padded_k = padded_len(p.kv_len as usize, K_BLOCK) as u64;
        let q_head = (geo.batch * p.q_heads + geo.head) as u64;
        let kv_head = (geo.batch * p.kv_heads + geo.kv_head) as u64;
        let v_head = geo.batch as i64 * p.v_stride[0] + geo.kv_head as i64 * p.v_stride[1];
        let tid = ptx::thread_idx_x();
        Pipeline {
            q_tile: Tile::new(base, HD),
            k_stage0: Tile::new(k0, HD),
            v_stage0: Tile::new(v0, 2 * HD),
            q_src: p.q + (q_head * padded_q + geo.q_row0 as u64) * HD as u64,
            k_src: p.k + kv_head * padded_k * HD as u64,
            v_src: (p.v as i64 + 2 * v_head) as u64,
            v_row_bytes: 2 * p.v_stride[2] as u64,
            kv_len: p.kv_len,
            n_tiles: geo.n_tiles,
            warp_row0: (tid >> 5) * 16 * m_tiles_of::<HD, PV_F32>(),
            lane: tid & 31,
            tid,
        }
    }

    /// The key tile the CTA visits `i`-th: tiles 0, 1, … in order, or with `REVERSE` (causal
    /// calls) from the last down, so that the diagonal's masked tiles come first. A row's max
    /// then starts at the keys nearest to it, which on score shapes that fall off with distance
    /// are its largest: the unmasked tiles after them, taken against that max without a
    /// reduction, almost never have to be taken again (`scripts/retry-model.py`: 0% against
    /// 11–29% in forward order for the f16 accumulator, up to 49% for the f32 one).
    #[inline(always)]
    pub fn tile_of<const REVERSE: bool>(&self, i: u32) -> u32 {
        if REVERSE {
            self.n_tiles - 1 - i
        } else {
            i
        }
    }

    /// The K stage the `i`-th visited tile uses. Arithmetic, not an array index: a run-time index
    /// into an array of tiles would put the array in local memory.
    #[inline(always)]
    fn k_tile(&self, i: u32) -> Tile {
        Tile {
            base: self.k_stage0.base + (i & 1) * k_stage_bytes(HD, PV_F32, COMPACT) as u32,
            ..self.k_stage0
        }
    }

    /// The V stage the `i`-th visited tile uses (see [`Self::k_tile`]).
    #[inline(always)]
    fn v_tile(&self, i: u32) -> Tile {
        Tile {
            base: self.v_stage0.base + (i & 1) * v_stage_bytes(HD, PV_F32, COMPACT) as u32,
            ..self.v_stage0
        }
    }

    /// Issues the Q tile and the first visited key tile (one group) and its value tile (a second
    /// group).
    ///
    /// # Safety
    /// The sources are valid (host validation) and `n_tiles > 0`.
    #[inline(always)]
    pub unsafe fn load_q_and_first_tile<const REVERSE: bool>(&self) {
        let chunks_per_row = (HD / 16) as u32;
        let total = cta_q(HD, PV_F32) as u32 * chunks_per_row;
        let mut c = self.tid;
        while c < total {
            let (row, chunk) = (c / chunks_per_row, c % chunks_per_row);
            // SAFETY: the padded Q holds whole 128-row blocks, so every row of the CTA exists.
            unsafe {
                ptx::cp_async_16(
                    self.q_tile.addr(row, chunk * 16),
                    self.q_src + row as u64 * HD as u64 + chunk as u64 * 16,
                )
            };
            c += ATTN_THREADS as u32;
        }
        let first = self.tile_of::<REVERSE>(0);
        unsafe { self.load_k(first, 0) };
        ptx::cp_async_commit();
        unsafe { self.load_v(first, 0) };
        ptx::cp_async_commit();
    }

    /// Issues key tile `t`, the `i`-th visited, into stage `i % 2`.
    #[inline(always)]
    unsafe fn load_k(&self, t: u32, i: u32) {
        if Self::WIDE {
            let src = self.k_src + t as u64 * (cta_k(HD, PV_F32, COMPACT) * HD) as u64;
            // SAFETY: K is padded to whole 64-row tiles, zero beyond kv_len: every row exists.
            return unsafe { self.copy_rows(self.k_tile(i), src, HD as u64, HD, u32::MAX) };
        }
        let tile = self.k_tile(i);
        let chunks_per_row = (HD / 16) as u32;
        let src = self.k_src + t as u64 * (cta_k(HD, PV_F32, COMPACT) * HD) as u64;
        let mut c = self.tid;
        while c < cta_k(HD, PV_F32, COMPACT) as u32 * chunks_per_row {
            let (row, chunk) = (c / chunks_per_row, c % chunks_per_row);
            // SAFETY: K is padded to whole 64-row tiles, zero beyond kv_len.
            unsafe {
                ptx::cp_async_16(
                    tile.addr(row, chunk * 16),
                    src + row as u64 * HD as u64 + chunk as u64 * 16,
                )
            };
            c += ATTN_THREADS as u32;
        }
    }

    /// Issues value tile `t`, the `i`-th visited, into stage `i % 2`; rows past `kv_len` are
    /// zero-filled, never read. (V is `HD` wide: a zero-padded problem's V is copied to `HD`
    /// columns by the host.)
    #[inline(always)]
    unsafe fn load_v(&self, t: u32, i: u32) {
        if Self::WIDE {
            let key0 = t * cta_k(HD, PV_F32, COMPACT) as u32;
            let src = self.v_src + key0 as u64 * self.v_row_bytes;
            let rows = self.kv_len.saturating_sub(key0);
            // SAFETY: rows below kv_len - key0 are inside V.
            return unsafe { self.copy_rows(self.v_tile(i), src, self.v_row_bytes, 2 * HD, rows) };
        }
        let tile = self.v_tile(i);
        let chunks_per_row = (HD / 8) as u32;
        let mut c = self.tid;
        while c < cta_k(HD, PV_F32, COMPACT) as u32 * chunks_per_row {
            let (row, chunk) = (c / chunks_per_row, c % chunks_per_row);
            let key = t * cta_k(HD, PV_F32, COMPACT) as u32 + row;
            let dst = tile.addr(row, chunk * 16);
            // SAFETY: key < kv_len is inside V; otherwise nothing is read (src size 0).
            unsafe {
                if key < self.kv_len {
                    ptx::cp_async_16(
                        dst,
                        self.v_src + key as u64 * self.v_row_bytes + chunk as u64 * 16,
                    );
                } else {
                    ptx::cp_async_16_zfill(dst, self.v_src, 0);
                }
            }
            c += ATTN_THREADS as u32;
        }
    }

    /// Row-per-thread copy of a `cta_k`-row tile of `row_bytes`-byte rows from `src` (row stride
    /// `src_stride` bytes): thread `tid` copies row `tid / TPR` (`TPR = ATTN_THREADS / cta_k`
    /// threads per row), 16-byte chunks `tid % TPR + TPR·j`. Per copy instruction the `TPR`
    /// threads of a row read `16·TPR` contiguous bytes, and the shared and global addresses are
    /// one base plus an immediate, so the tile loop keeps one address per thread instead of one
    /// per chunk. Rows `≥ rows` are zero-filled (nothing read).
    ///
    /// # Safety
    /// Every row below `rows` (and below `cta_k`) is readable.
    #[inline(always)]
    unsafe fn copy_rows(&self, tile: Tile, src: u64, src_stride: u64, row_bytes: usize, rows: u32) {
        const {
            let tpr = ATTN_THREADS / cta_k(HD, PV_F32, COMPACT);
            assert!(
                !Self::WIDE
                    || (tpr * cta_k(HD, PV_F32, COMPACT) == ATTN_THREADS && (HD / 16) % tpr == 0),
                "every thread copies whole 16-byte chunks of one row"
            );
        };
        let tpr = (ATTN_THREADS / cta_k(HD, PV_F32, COMPACT)) as u32;
        let per_thread = row_bytes / 16 / tpr as usize;
        let (row, lane_chunk) = (self.tid / tpr, self.tid % tpr);
        let src = src + row as u64 * src_stride + 16 * lane_chunk as u64;
        let dst = tile.addr(row, 16 * lane_chunk);
        let row_ok = row < rows;
        unroll::<32>(
            #[inline(always)]
            |j| {
                if j >= per_thread {
                    return;
                }
                let off = 16 * tpr * j as u32;
                // SAFETY: see the function's contract; the zero-fill form reads nothing.
                unsafe {
                    if row_ok {
                        ptx::cp_async_16(dst + off, src + off as u64);
                    } else {
                        ptx::cp_async_16_zfill(dst + off, self.v_src, 0);
                    }
                }
            },
        );
    }

    /// The `i`-th visited key tile `t` ([`Self::tile_of`]): wait Kₜ → issue the next visited K →
    /// S = Q·Kₜᵀ (int8) → dequantize → mask → online softmax → wait Vₜ → issue the next visited V
    /// → O += P·Vₜ. With `CAUSAL` the tiles are visited from the last down. `SHIFTED`: the f16
    /// accumulator's second pass ([`F16_ACC_OVERFLOW_SHIFT`]).
    ///
    /// # Safety
    /// `i < n_tiles`, called for i = 0, 1, … in order by every thread of the CTA.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn step<
        const KS: usize,
        const NP: usize,
        const NT: usize,
        const MT: usize,
        const KT: usize,
        const KK: usize,
        const CAUSAL: bool,
        const MASK: bool,
        const SHIFTED: bool,
    >(
        &self,
        i: u32,
        args: &StepArgs<MT>,
        softmax: &mut OnlineSoftmax<MT>,
        out: &mut OutAcc<NT, MT>,
        backoff: &mut RetryBackoff,
    ) {
        let t = self.tile_of::<CAUSAL>(i);
        // SAFETY: the tile's K block < k_blocks of this head.
        let k_block = (t as usize * cta_k(HD, PV_F32, COMPACT) / K_BLOCK) as u64;
        let k_scale = unsafe { ptx::ld_global_nc_f32(args.k_scale_row + 4 * k_block) };
        let has_next = i + 1 < self.n_tiles;

        ptx::cp_async_wait::<1>();
        ptx::sync_threads();
        if has_next {
            unsafe { self.load_k(self.tile_of::<CAUSAL>(i + 1), i + 1) };
        }
        ptx::cp_async_commit();

        let s_int = unsafe { self.qk::<KS, MT, KT>(self.k_tile(i)) };
        // The first visited tile sets the first max; masked tiles keep the exact path (their
        // first visible key may come late in a row); `backoff` holds tiles back after retries.
        let lagging = !MASK && i > 0;
        let s = if lagging && backoff.may_try() {
            // The shifted pass's probabilities are 2^-shift of the first's: so is its limit.
            let limit = if !SHIFTED {
                Self::FAST_SUM_LIMIT
            } else {
                Self::FAST_SUM_LIMIT * const { 1.0 / (1u32 << F16_ACC_OVERFLOW_SHIFT) as f32 }
            };
            let (p, sums, within) =
                softmax.probabilities_against_max(&s_int, &args.q_scale, k_scale, limit);
            // Warp-uniform: mma.sync needs every lane in the same branch.
            if ptx::vote_all(within) {
                backoff.kept();
                softmax.add_sums(&sums);
                p
            } else {
                backoff.retried();
                // The scores again from shared memory rather than kept live through the fast
                // path: kept, they cost up to 40 registers and spill at d = 96 (ptxas 12.9);
                // a retry is rare. Kₜ's stage is overwritten only after step i + 1's first
                // barrier.
                let s_int = unsafe { self.qk::<KS, MT, KT>(self.k_tile(i)) };
                self.exact_softmax::<NT, MT, KT, CAUSAL, MASK, SHIFTED>(
                    &s_int, t, args, k_scale, softmax, out,
                )
            }
        } else {
            if lagging {
                backoff.waited();
            }
            self.exact_softmax::<NT, MT, KT, CAUSAL, MASK, SHIFTED>(
                &s_int, t, args, k_scale, softmax, out,
            )
        };
        let mut probs = [[[0u32; 4]; KK]; MT];
        unroll::<MT>(
            #[inline(always)]
            |mt| {
                unroll::<KK>(
                    #[inline(always)]
                    |kk| probs[mt][kk] = frag::probs_to_frag_a(&s[mt][2 * kk], &s[mt][2 * kk + 1]),
                );
            },
        );

        ptx::cp_async_wait::<1>();
        ptx::sync_threads();
        if has_next {
            unsafe { self.load_v(self.tile_of::<CAUSAL>(i + 1), i + 1) };
        }
        ptx::cp_async_commit();

        let v_tile = self.v_tile(i);
        if PV_F32 {
            unsafe { self.pv_f32::<NP, NT, MT, KK>(v_tile, &probs, out) };
        } else {
            unsafe { self.pv_f16_accum::<NP, NT, MT, KK>(v_tile, &probs, out) };
        }
    }

    /// The largest lane-partial row sum of one tile that the probabilities against the running
    /// max may reach ([`OnlineSoftmax::probabilities_against_max`]). With the f16 accumulator
    /// per tile, `cta_k / 4` (the keys a lane holds of a row): the quad's tile sum then stays at
    /// or below `cta_k`, the bound the exact path's probabilities (each at most 1) put on the f16
    /// partial products, so the fast path cannot overflow where the exact one would not. With
    /// the f32 accumulator, 2^14: every probability stays inside f16 with its full relative
    /// precision, and the f32 output and sums grow by at most that factor per tile between
    /// moves of the max (2^14 · 2^17 keys stays far inside f32).
    const FAST_SUM_LIMIT: f32 = if PV_F32 {
        16384.0
    } else {
        (cta_k(HD, PV_F32, COMPACT) / 4) as f32
    };

    /// How far above a tile's max the exact path sets a row's running max (log2 units;
    /// [`OnlineSoftmax::update`]). With the f16 accumulator's tight limit (`cta_k / 4`), 3 lets
    /// the following tiles' scores rise about 3 units more before a retry: on score shapes that
    /// decay with distance, a CPU model (`scripts/retry-model.py`) puts the share of retried
    /// tiles at 3–10% instead of 11–29% in causal order. The tile's probabilities are then ≤ 1/8,
    /// which f16 holds with full precision down to 2^-11 of the true max (2^-14 without). The
    /// f32 accumulator's limit (2^14) rarely retries: no headroom, its code as before.
    const MAX_HEADROOM: f32 = if PV_F32 { 0.0 } else { 3.0 };

    /// Today's softmax of one tile: dequantize, mask, reduce the tile max, move the running max,
    /// rescale the output, and the probabilities against the new max.
    #[inline(always)]
    fn exact_softmax<
        const NT: usize,
        const MT: usize,
        const KT: usize,
        const CAUSAL: bool,
        const MASK: bool,
        const SHIFTED: bool,
    >(
        &self,
        s_int: &[[AccS32; KT]; MT],
        t: u32,
        args: &StepArgs<MT>,
        k_scale: f32,
        softmax: &mut OnlineSoftmax<MT>,
        out: &mut OutAcc<NT, MT>,
    ) -> [[AccF32; KT]; MT] {
        let mut s = dequantize::<MT, KT>(s_int, &args.q_scale, k_scale);
        if MASK {
            self.mask::<MT, KT, CAUSAL>(&mut s, t, args);
        }
        // The shifted pass has no headroom: its probabilities keep their f16 range.
        let (headroom, shift) = if SHIFTED {
            (0.0, F16_ACC_OVERFLOW_SHIFT as f32)
        } else {
            (Self::MAX_HEADROOM, 0.0)
        };
        let rescale = softmax.update(&mut s, headroom, shift);
        unroll::<MT>(
            #[inline(always)]
            |mt| {
                unroll::<NT>(
                    #[inline(always)]
                    |nt| {
                        unroll::<4>(
                            #[inline(always)]
                            |e| out[mt][nt][e] *= rescale[mt][e >> 1],
                        );
                    },
                );
            },
        );
        s
    }

    /// S = Q·Kᵀ for this warp's rows and the `8 * KT` keys of `k_tile`.
    #[inline(always)]
    unsafe fn qk<const KS: usize, const MT: usize, const KT: usize>(
        &self,
        k_tile: Tile,
    ) -> [[AccS32; KT]; MT] {
        let mut acc = [[[0i32; 4]; KT]; MT];
        unroll::<KS>(
            #[inline(always)]
            |ks| {
                let byte0 = ks as u32 * 32;
                let mut a = [[0u32; 4]; MT];
                unroll::<MT>(
                    #[inline(always)]
                    |mt| {
                        a[mt] = unsafe {
                            frag::load_a(
                                self.q_tile,
                                self.warp_row0 + mt as u32 * 16,
                                byte0,
                                self.lane,
                            )
                        };
                    },
                );
                // Key n-tiles come in pairs (one ldmatrix.x4 each): KT / 2 pairs.
                unroll::<KT>(
                    #[inline(always)]
                    |np| {
                        if 2 * np >= KT {
                            return;
                        }
                        let (b0, b1) = unsafe {
                            frag::load_b_rows_pair(k_tile, np as u32 * 16, byte0, self.lane)
                        };
                        unroll::<MT>(
                            #[inline(always)]
                            |mt| {
                                ptx::mma_s8_m16n8k32(&mut acc[mt][2 * np], a[mt], b0);
                                ptx::mma_s8_m16n8k32(&mut acc[mt][2 * np + 1], a[mt], b1);
                            },
                        );
                    },
                );
            },
        );
        acc
    }

    /// Sets scores of keys past `kv_len` (and, when causal, past each row's diagonal) to -inf.
    #[inline(always)]
    fn mask<const MT: usize, const KT: usize, const CAUSAL: bool>(
        &self,
        s: &mut [[AccF32; KT]; MT],
        t: u32,
        args: &StepArgs<MT>,
    ) {
        let key0 = t * cta_k(HD, PV_F32, COMPACT) as u32;
        let row0 = args.geo.q_row0 + self.warp_row0;
        unroll::<MT>(
            #[inline(always)]
            |mt| {
                unroll::<KT>(
                    #[inline(always)]
                    |nt| {
                        unroll::<4>(
                            #[inline(always)]
                            |e| {
                                let key = key0 + nt as u32 * 8 + acc_col(self.lane, e);
                                let row = row0 + mt as u32 * 16 + acc_row(self.lane, e);
                                let mut visible = key < args.kv_len;
                                if CAUSAL {
                                    visible &= key as i32 <= row as i32 + args.geo.diag;
                                }
                                if !visible {
                                    s[mt][nt][e] = f32::NEG_INFINITY;
                                }
                            },
                        );
                    },
                );
            },
        );
    }

    /// O += P·V with an f32 accumulator.
    #[inline(always)]
    unsafe fn pv_f32<const NP: usize, const NT: usize, const MT: usize, const KK: usize>(
        &self,
        v_tile: Tile,
        probs: &[[FragA; KK]; MT],
        out: &mut OutAcc<NT, MT>,
    ) {
        unroll::<KK>(
            #[inline(always)]
            |kk| {
                unroll::<NP>(
                    #[inline(always)]
                    |np| {
                        let (b0, b1) = unsafe {
                            frag::load_b_trans_pair(
                                v_tile,
                                kk as u32 * 16,
                                np as u32 * 16,
                                self.lane,
                            )
                        };
                        unroll::<MT>(
                            #[inline(always)]
                            |mt| {
                                ptx::mma_f16_m16n8k16_f32(&mut out[mt][2 * np], probs[mt][kk], b0);
                                ptx::mma_f16_m16n8k16_f32(
                                    &mut out[mt][2 * np + 1],
                                    probs[mt][kk],
                                    b1,
                                );
                            },
                        );
                    },
                );
            },
        );
    }

    /// O += P·V, accumulating the tile's keys in f16 (SageAttention's fast path), then adding
    /// that partial into the f32 running output. Processed 16 output columns at a time so only 4
    /// f16 accumulator registers per row tile are live.
    #[inline(always)]
    unsafe fn pv_f16_accum<const NP: usize, const NT: usize, const MT: usize, const KK: usize>(
        &self,
        v_tile: Tile,
        probs: &[[FragA; KK]; MT],
        out: &mut OutAcc<NT, MT>,
    ) {
        unroll::<NP>(
            #[inline(always)]
            |np| {
                let mut partial: [[AccF16; 2]; MT] = [[[0u32; 2]; 2]; MT];
                unroll::<KK>(
                    #[inline(always)]
                    |kk| {
                        let (b0, b1) = unsafe {
                            frag::load_b_trans_pair(
                                v_tile,
                                kk as u32 * 16,
                                np as u32 * 16,
                                self.lane,
                            )
                        };
                        unroll::<MT>(
                            #[inline(always)]
                            |mt| {
                                ptx::mma_f16_m16n8k16_f16(&mut partial[mt][0], probs[mt][kk], b0);
                                ptx::mma_f16_m16n8k16_f16(&mut partial[mt][1], probs[mt][kk], b1);
                            },
                        );
                    },
                );
                unroll::<MT>(
                    #[inline(always)]
                    |mt| {
                        unroll::<2>(
                            #[inline(always)]
                            |j| {
                                let (r0c0, r0c1) = ptx::unpack_f16x2(partial[mt][j][0]);
                                let (r8c0, r8c1) = ptx::unpack_f16x2(partial[mt][j][1]);
                                let o = &mut out[mt][2 * np + j];
                                o[0] += r0c0;
                                o[1] += r0c1;
                                o[2] += r8c0;
                                o[3] += r8c1;
                            },
                        );
                    },
                );
            },
        );
    }
}

/// `m_tiles(HD, PV_F32)` as u32.
#[inline(always)]
const fn m_tiles_of<const HD: usize, const PV_F32: bool>() -> u32 {
    crate::config::m_tiles(HD, PV_F32) as u32
}

/// Integer scores → f32 log2-domain scores: each times its row's `q_scale * k_scale`.
#[inline(always)]
fn dequantize<const MT: usize, const KT: usize>(
    s: &[[AccS32; KT]; MT],
    q_scale: &[[f32; 2]; MT],
    k_scale: f32,
) -> [[AccF32; KT]; MT] {
    let mut r = [[[0.0f32; 4]; KT]; MT];
    unroll::<MT>(
        #[inline(always)]
        |mt| {
            let scale = [q_scale[mt][0] * k_scale, q_scale[mt][1] * k_scale];
            unroll::<KT>(
                #[inline(always)]
                |nt| {
                    unroll::<4>(
                        #[inline(always)]
                        |e| r[mt][nt][e] = s[mt][nt][e] as f32 * scale[e >> 1],
                    );
                },
            );
        },
    );
    r
}
