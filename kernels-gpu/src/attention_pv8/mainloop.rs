//! The main loop of the portable 8-bit P·V kernel: a two-stage cp.async pipeline of K and Vᵀ
//! tiles (128 keys up to head_dim 128, 64 above: `config::pv8_cta_k`) and the one `step` body
//! every key tile runs (masked or not).
//!
//! cp.async groups: Q, then one group per tile (its K and its Vᵀ together). Step t waits for all
//! of this thread's groups (only tile t's is in flight), and the barrier after the wait both makes
//! tile t visible to every warp and guarantees that every warp has finished step t − 1, whose
//! stage `(t + 1) % 2` tile t + 1 is then issued into. So each tile has a whole step to arrive,
//! with one barrier per tile.
//!
//! Shared memory (padded rows, `tile.rs`: conflict-free ldmatrix): the Q tile (CTA rows × HD),
//! then two K stages (tile keys × HD) and two Vᵀ stages (HD channels × tile key slots, the
//! prepared Vᵀ's layout: each 16-byte chunk is one cp.async from one Vᵀ row). Up to head_dim 128
//! each warp holds its Q fragments in registers for the whole loop; above, the 128 f32 output
//! registers per thread leave no room for them, and each k-step reads them from the Q tile.

use super::format::PvFormat;
use super::Geometry;
use crate::config::{
    padded_len, pv8_cta_k, pv8_cta_q, pv8_k_stage_bytes, pv8_q_tile_bytes, pv8_threads,
    pv8_v_stage_bytes, K_BLOCK, Q_BLOCK,
};
use crate::frag::{self, FragA};
use crate::params::AttnParams;
use crate::ptx;
use crate::softmax16::{OnlineSoftmax, TileBounds};
use crate::tile::Tile;
use crate::unroll::unroll;

/// Unroll bound of the copy loops (d = 128: 4 chunks per thread and tile; d = 256: 8).
const MAX_CHUNKS_PER_THREAD: usize = 8;

/// Global sources, shared tiles and per-CTA constants of one CTA.
pub(crate) struct Pipeline<const HD: usize> {
    q_tile: Tile,
    /// Stage 0 of K and of Vᵀ; stage 1 follows each at its stage size.
    k_stage0: Tile,
    v_stage0: Tile,
    /// Row `q_row0` of this (batch, head) in the padded INT8 Q.
    q_src: u64,
    /// Row 0 of this (batch, kv head) in the padded INT8 K.
    k_src: u64,
    /// Channel row 0 of this (batch, kv head) in the INT8 Vᵀ (rows of `padded_k` key slots).
    v_src: u64,
    /// `kv_len` padded to whole 64-key blocks: K's rows and Vᵀ's key slots in memory.
    padded_k: u32,
    kv_len: u32,
    n_tiles: u32,
    diag: i32,
    /// Q's scales of this thread's two rows.
    q_scale: [f32; 2],
    /// Address of this (batch, kv head)'s first K scale.
    k_scale_row: u64,
    /// Index of this head's last K block.
    last_k_block: u32,
    /// First query row of this warp's 16 within the CTA, and within the head.
    warp_row0: u32,
    row0: u32,
    lane: u32,
    tid: u32,
}

impl<const HD: usize> Pipeline<HD> {
    const THREADS: usize = pv8_threads(HD);
    /// Keys per tile.
    const CTA_K: usize = pv8_cta_k(HD);
    /// 16-byte chunks of the Q tile each thread copies (`CTA rows × HD / 16` over the threads).
    const Q_CHUNKS_PER_THREAD: usize = pv8_cta_q(HD) * HD / 16 / Self::THREADS;
    /// 16-byte chunks of a K or Vᵀ tile each thread copies (`tile keys × HD / 16` over the
    /// threads; at most [`MAX_CHUNKS_PER_THREAD`]).
    const CHUNKS_PER_THREAD: usize = Self::CTA_K * HD / 16 / Self::THREADS;
    /// Whether each warp keeps its Q fragments in registers (see the module docs).
    const Q_IN_REGISTERS: bool = HD <= 128;

    #[inline(always)]
    pub fn new(p: &AttnParams, geo: &Geometry) -> Self {
        const {
            // Every copy loop covers its tile exactly.
            assert!(Self::Q_CHUNKS_PER_THREAD * Self::THREADS * 16 == pv8_cta_q(HD) * HD);
            assert!(Self::CHUNKS_PER_THREAD * Self::THREADS * 16 == Self::CTA_K * HD);
            assert!(Self::Q_CHUNKS_PER_THREAD <= MAX_CHUNKS_PER_THREAD);
            assert!(Self::CHUNKS_PER_THREAD <= MAX_CHUNKS_PER_THREAD);
            // One K scale per 64-key half of a tile.
            assert!(Self::CTA_K == K_BLOCK || Self::CTA_K == 2 * K_BLOCK);
        };
        let base = ptx::smem_base();
        let k0 = base + pv8_q_tile_bytes(HD) as u32;
        let v0 = k0 + 2 * pv8_k_stage_bytes(HD) as u32;
        let padded_q = padded_len(p.qo_len as usize, Q_BLOCK) as u64;
        let padded_k = padded_len(p.kv_len as usize, K_BLOCK) as u64;
        let q_head = (geo.batch * p.q_heads + geo.head) as u64;
        let kv_head = (geo.batch * p.kv_heads + geo.kv_head) as u64;
        let k_blocks = padded_k / K_BLOCK as u64;
        let tid = ptx::thread_idx_x();
        let warp_row0 = 16 * (tid >> 5);
        // Q's scales (per token) of this thread's rows g and g + 8 of its warp's 16.
        let q_scale_row = q_head * padded_q + (geo.q_row0 + warp_row0 + ((tid & 31) >> 2)) as u64;
        // SAFETY: q_row0 + 127 < padded_q: inside the [b][h][padded_q] scales.
        let q_scale = unsafe {
            [
                ptx::ld_global_nc_f32(p.q_scale + 4 * q_scale_row),
                ptx::ld_global_nc_f32(p.q_scale + 4 * (q_scale_row + 8)),
            ]
        };
        Pipeline {
            q_tile: Tile::new(base, HD),
            k_stage0: Tile::new(k0, HD),
            v_stage0: Tile::new(v0, Self::CTA_K),
            q_src: p.q + (q_head * padded_q + geo.q_row0 as u64) * HD as u64,
            k_src: p.k + kv_head * padded_k * HD as u64,
            v_src: p.v + kv_head * HD as u64 * padded_k,
            padded_k: padded_k as u32,
            kv_len: p.kv_len,
            n_tiles: geo.n_tiles,
            diag: geo.diag,
            q_scale,
            k_scale_row: p.k_scale + 4 * kv_head * k_blocks,
            last_k_block: k_blocks as u32 - 1,
            warp_row0,
            row0: geo.q_row0 + warp_row0,
            lane: tid & 31,
            tid,
        }
    }

    /// The K stage tile `t` uses (arithmetic, not an array index: a run-time index into an array
    /// of tiles would put the array in local memory).
    #[inline(always)]
    fn k_tile(&self, t: u32) -> Tile {
        Tile {
            base: self.k_stage0.base + (t & 1) * pv8_k_stage_bytes(HD) as u32,
            ..self.k_stage0
        }
    }

    /// The Vᵀ stage tile `t` uses (see [`Self::k_tile`]).
    #[inline(always)]
    fn v_tile(&self, t: u32) -> Tile {
        Tile {
            base: self.v_stage0.base + (t & 1) * pv8_v_stage_bytes(HD) as u32,
            ..self.v_stage0
        }
    }

    /// Issues the Q tile (one group) and tile 0 (a second group), waits for Q and returns this
    /// warp's Q fragments (`KS` k-steps of 32 bytes), which stay in registers for the whole loop
    /// (zeros, unused, when [`Self::Q_IN_REGISTERS`] is false: the k-steps read the Q tile).
    ///
    /// # Safety
    /// The sources are valid (host validation) and `n_tiles > 0`; every thread calls it.
    #[inline(always)]
    pub unsafe fn load_q_and_first_tile<const KS: usize>(&self) -> [FragA; KS] {
        let cpr = (HD / 16) as u32;
        unroll::<MAX_CHUNKS_PER_THREAD>(
            #[inline(always)]
            |j| {
                if j >= Self::Q_CHUNKS_PER_THREAD {
                    return;
                }
                let c = self.tid + (Self::THREADS * j) as u32;
                let (row, chunk) = (c / cpr, c % cpr);
                // SAFETY: the padded Q holds whole 128-row blocks, and a CTA's rows lie inside
                // one, so every row of the CTA exists.
                unsafe {
                    ptx::cp_async_16(
                        self.q_tile.addr(row, 16 * chunk),
                        self.q_src + (row * HD as u32 + 16 * chunk) as u64,
                    )
                };
            },
        );
        ptx::cp_async_commit();
        // SAFETY: tile 0 exists (n_tiles > 0).
        unsafe { self.load_tile(0) };
        ptx::cp_async_commit();
        ptx::cp_async_wait::<1>();
        ptx::sync_threads();
        let mut q = [[0u32; 4]; KS];
        if !Self::Q_IN_REGISTERS {
            return q;
        }
        unroll::<KS>(
            #[inline(always)]
            |ks| {
                // SAFETY: rows warp_row0..+16 and bytes 32ks..+32 lie inside the Q tile.
                q[ks] =
                    unsafe { frag::load_a(self.q_tile, self.warp_row0, 32 * ks as u32, self.lane) };
            },
        );
        q
    }

    /// Issues K and Vᵀ tile `t` into stage `t % 2`. Rows (K) and key slots (Vᵀ) past the padded
    /// sequence — the second 64-key half of the last 128-key tile — are zero-filled without a
    /// read; those inside it but past `kv_len` are the preparation's zero padding.
    ///
    /// # Safety
    /// `t < n_tiles`; the stage is no longer read by any warp.
    #[inline(always)]
    unsafe fn load_tile(&self, t: u32) {
        let key0 = t * Self::CTA_K as u32;
        let (k_tile, v_tile) = (self.k_tile(t), self.v_tile(t));
        let k_src = self.k_src + key0 as u64 * HD as u64;
        let k_cpr = (HD / 16) as u32;
        let v_cpr = (Self::CTA_K / 16) as u32;
        unroll::<MAX_CHUNKS_PER_THREAD>(
            #[inline(always)]
            |j| {
                if j >= Self::CHUNKS_PER_THREAD {
                    return;
                }
                let c = self.tid + (Self::THREADS * j) as u32;
                let (row, chunk) = (c / k_cpr, c % k_cpr);
                let dst = k_tile.addr(row, 16 * chunk);
                if key0 + row < self.padded_k {
                    // SAFETY: the row lies inside this head's padded K.
                    unsafe { ptx::cp_async_16(dst, k_src + (row * HD as u32 + 16 * chunk) as u64) };
                } else {
                    // SAFETY: nothing is read (source size 0).
                    unsafe { ptx::cp_async_16_zfill(dst, self.k_src, 0) };
                }
            },
        );
        unroll::<MAX_CHUNKS_PER_THREAD>(
            #[inline(always)]
            |j| {
                if j >= Self::CHUNKS_PER_THREAD {
                    return;
                }
                let c = self.tid + (Self::THREADS * j) as u32;
                let (channel, chunk) = (c / v_cpr, c % v_cpr);
                let dst = v_tile.addr(channel, 16 * chunk);
                let slot = key0 + 16 * chunk;
                if slot < self.padded_k {
                    // SAFETY: channel < HD rows of this head's Vᵀ, and the 16 slots lie inside
                    // its padded keys (a multiple of 64).
                    unsafe {
                        ptx::cp_async_16(
                            dst,
                            self.v_src + channel as u64 * self.padded_k as u64 + slot as u64,
                        )
                    };
                } else {
                    // SAFETY: nothing is read (source size 0).
                    unsafe { ptx::cp_async_16_zfill(dst, self.v_src, 0) };
                }
            },
        );
    }

    /// K scales of the two 64-key halves of tile `t` (the second clamped to the last K block: its
    /// keys, if it has none, are masked; a 64-key tile uses the first only).
    #[inline(always)]
    fn k_scales(&self, t: u32) -> [f32; 2] {
        if Self::CTA_K == K_BLOCK {
            // SAFETY: t < n_tiles = this head's K blocks.
            let s = unsafe { ptx::ld_global_nc_f32(self.k_scale_row + 4 * t as u64) };
            return [s, s];
        }
        let b = 2 * t;
        let hi = if b + 1 < self.last_k_block {
            b + 1
        } else {
            self.last_k_block
        };
        // SAFETY: both blocks are < k_blocks of this head.
        unsafe {
            [
                ptx::ld_global_nc_f32(self.k_scale_row + 4 * b as u64),
                ptx::ld_global_nc_f32(self.k_scale_row + 4 * hi as u64),
            ]
        }
    }

    /// One key tile: wait for tile t → issue tile t + 1 → `S = Q·Kₜᵀ` → dequantize, mask, online
    /// softmax relative to the tile's row maximum → u8 P → `O = O·rescale + (P·Vₜ)·factor`.
    ///
    /// # Safety
    /// `t < n_tiles`, called for t = 0, 1, … in order by every thread of the CTA, after
    /// [`Self::load_q_and_first_tile`].
    #[inline(always)]
    pub unsafe fn step<
        F: PvFormat,
        const KS: usize,
        const NT: usize,
        const NK: usize,
        const CAUSAL: bool,
        const MASK: bool,
    >(
        &self,
        t: u32,
        q: &[FragA; KS],
        softmax: &mut OnlineSoftmax,
        out: &mut [[f32; 4]; NT],
    ) {
        let k_scales = self.k_scales(t);
        ptx::cp_async_wait::<0>();
        ptx::sync_threads();
        if t + 1 < self.n_tiles {
            // SAFETY: stage (t + 1) % 2 was last read in step t − 1, which every warp has left.
            unsafe { self.load_tile(t + 1) };
            ptx::cp_async_commit();
        }
        // SAFETY: tile t is in its stage and visible (wait + barrier above).
        let s = unsafe { self.qk::<KS, NK>(self.k_tile(t), q) };
        let (p, rescale, factor) =
            self.probabilities::<CAUSAL, MASK, NK>(&s, t, k_scales, softmax, F::P_SCALE_LOG2);
        let probs = F::pack::<NK>(&p);
        // Once the row maxima settle, most tiles leave them unchanged: skip the rescale when no
        // row of the warp moved.
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
        // SAFETY: as for the Q·Kᵀ.
        unsafe { self.pv::<F, NT, NK>(self.v_tile(t), &probs, factor, out) };
    }

    /// `S = Q·Kᵀ` for this warp's 16 rows and the keys of `k_tile` (`NK` n-tiles of 8 keys).
    ///
    /// # Safety
    /// The tile (and the Q tile) is loaded and visible; the whole warp calls it.
    #[inline(always)]
    unsafe fn qk<const KS: usize, const NK: usize>(
        &self,
        k_tile: Tile,
        q: &[FragA; KS],
    ) -> [[i32; 4]; NK] {
        let mut acc = [[0i32; 4]; NK];
        unroll::<KS>(
            #[inline(always)]
            |ks| {
                let a = if Self::Q_IN_REGISTERS {
                    q[ks]
                } else {
                    // SAFETY: rows warp_row0..+16 and bytes 32ks..+32 lie inside the Q tile.
                    unsafe { frag::load_a(self.q_tile, self.warp_row0, 32 * ks as u32, self.lane) }
                };
                // Key n-tiles in pairs (one ldmatrix.x4 each).
                unroll::<8>(
                    #[inline(always)]
                    |np| {
                        if 2 * np >= NK {
                            return;
                        }
                        // SAFETY: keys 16np..+16 and bytes 32ks..+32 lie inside the tile.
                        let (b0, b1) = unsafe {
                            frag::load_b_rows_pair(
                                k_tile,
                                16 * np as u32,
                                32 * ks as u32,
                                self.lane,
                            )
                        };
                        ptx::mma_s8_m16n8k32(&mut acc[2 * np], a, b0);
                        ptx::mma_s8_m16n8k32(&mut acc[2 * np + 1], a, b1);
                    },
                );
            },
        );
        acc
    }

    /// Scores of tile `t` → probabilities relative to the tile's row maximum (f32, accumulator
    /// layout), with the rescale factor of the previous output and the tile's factor, per row
    /// (`softmax16::OnlineSoftmax` with `PER_TILE`). Unmasked tiles scale the integer scores inside
    /// the exponent (`update_unscaled`); masked ones dequantize, then set scores past `kv_len` and
    /// (causal) past each row's diagonal to −∞.
    #[inline(always)]
    fn probabilities<const CAUSAL: bool, const MASK: bool, const NK: usize>(
        &self,
        s_int: &[[i32; 4]; NK],
        t: u32,
        k_scales: [f32; 2],
        softmax: &mut OnlineSoftmax,
        p_scale_log2: f32,
    ) -> ([[f32; 4]; NK], [f32; 2], [f32; 2]) {
        let bounds = TileBounds {
            key0: t * Self::CTA_K as u32,
            row0: self.row0,
            lane: self.lane,
            kv_len: self.kv_len,
            diag: self.diag,
        };
        softmax.update_tile::<true, MASK, CAUSAL, NK>(
            s_int,
            self.q_scale,
            k_scales,
            &bounds,
            p_scale_log2,
        )
    }

    /// `O += (P·Vₜ)·factor`: per group of 64 channels (8 n-tiles), a fresh accumulator of format
    /// `F` over the tile's `NK / 4` k-steps of 32 keys (s32: exact), then folded into the f32 output. B fragments
    /// are 4-byte runs of Vᵀ rows: `ldmatrix` (no transpose) as for K.
    ///
    /// # Safety
    /// The tile is loaded and visible; the whole warp calls it.
    #[inline(always)]
    unsafe fn pv<F: PvFormat, const NT: usize, const NK: usize>(
        &self,
        v_tile: Tile,
        probs: &[FragA; 4],
        factor: [f32; 2],
        out: &mut [[f32; 4]; NT],
    ) {
        unroll::<4>(
            #[inline(always)]
            |g| {
                if 8 * g >= NT {
                    return;
                }
                let mut acc = [F::ZERO; 8];
                unroll::<4>(
                    #[inline(always)]
                    |kk| {
                        if 4 * kk >= NK {
                            return;
                        }
                        unroll::<4>(
                            #[inline(always)]
                            |np| {
                                let nt = 8 * g + 2 * np;
                                if nt < NT {
                                    // SAFETY: channels 8nt..+16 < HD and key slots 32kk..+32 lie
                                    // inside the tile.
                                    let (b0, b1) = unsafe {
                                        frag::load_b_rows_pair(
                                            v_tile,
                                            8 * nt as u32,
                                            32 * kk as u32,
                                            self.lane,
                                        )
                                    };
                                    F::mma(&mut acc[2 * np], probs[kk], b0);
                                    F::mma(&mut acc[2 * np + 1], probs[kk], b1);
                                }
                            },
                        );
                    },
                );
                unroll::<8>(
                    #[inline(always)]
                    |j| {
                        if 8 * g + j < NT {
                            F::fold(&acc[j], factor, &mut out[8 * g + j]);
                        }
                    },
                );
            },
        );
    }
}
