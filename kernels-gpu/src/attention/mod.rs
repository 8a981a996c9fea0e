//! The SageAttention forward kernel: INT8 Q·Kᵀ (m16n8k32, s32 accumulate), dequantize with
//! `q_scale * k_scale` (already in log2 units), online softmax with `ex2`, P in f16, P·V with
//! m16n8k16 (f16 accumulator per key tile summed into an f32 running output, or f32 throughout).
//!
//! One CTA owns `cta_q(HD, PV_F32)` query rows of one (batch, head); 4 warps own 16·MT rows each. K and V
//! tiles of `cta_k(HD, PV_F32, COMPACT)` keys (64, or 32 for d = 128 f32-acc, d = 256 and the
//! compact variants, `config::has_compact_variant`) stream through a
//! two-stage cp.async pipeline (`mainloop`). The entry is: block geometry → prologue loads → the
//! key tiles (unmasked, then the masked tail; causal: from the last down, the diagonal's masked
//! tiles first) → epilogue.
//!
//! Variants exist for HD = 64, 96, 128 and 256 (`config::for_each_attention_variant!`). A smaller
//! head_dim `p.head_dim` runs on the next one up: Q and K arrive quantized `HD` wide and V
//! converted `HD` wide, with zero columns past `p.head_dim`, and the epilogue stores only the
//! first `p.head_dim` output columns.

mod epilogue;
mod mainloop;
mod softmax;

use crate::config::{cta_k, cta_q, m_tiles, padded_len, K_BLOCK, Q_BLOCK};
use crate::frag::AccF32;
use crate::params::AttnParams;
use crate::ptx;
use crate::retry::RetryBackoff;
use crate::unroll::unroll;
use mainloop::{Pipeline, StepArgs};
use softmax::OnlineSoftmax;

/// Which rows and key tiles this CTA handles.
pub(crate) struct BlockGeometry {
    pub batch: u32,
    pub head: u32,
    pub kv_head: u32,
    /// First query row of the CTA.
    pub q_row0: u32,
    /// Key tiles to visit (the causal limit of the CTA's last row, and the sequence end).
    pub n_tiles: u32,
    /// Leading tiles that need no mask for any row of the CTA.
    pub n_unmasked: u32,
    /// `kv_len - qo_len`: query i sees key j iff `j <= i + diag` (bottom-right causal alignment).
    pub diag: i32,
}

impl BlockGeometry {
    #[inline(always)]
    fn new<const HD: usize, const PV_F32: bool, const COMPACT: bool, const CAUSAL: bool>(
        p: &AttnParams,
    ) -> Self {
        let (bx, head, batch) = ptx::block_idx();
        let rows = cta_q(HD, PV_F32) as u32;
        let q_blocks = p.qo_len.div_ceil(rows);
        // Causal CTAs near the end of the sequence do the most work: start them first.
        let q_block = if CAUSAL { q_blocks - 1 - bx } else { bx };
        let q_row0 = q_block * rows;
        let kv_head = head / (p.q_heads / p.kv_heads);
        let diag = p.kv_len as i32 - p.qo_len as i32;
        let tile = cta_k(HD, PV_F32, COMPACT) as i32;
        let full_len_tiles = p.kv_len / cta_k(HD, PV_F32, COMPACT) as u32;
        let (n_tiles, n_unmasked) = if CAUSAL {
            let last_row = (q_row0 + rows).min(p.qo_len) as i32 - 1;
            let kv_end = (last_row + diag + 1).clamp(0, p.kv_len as i32);
            let n_tiles = (kv_end + tile - 1) / tile;
            // Tiles entirely at or below the first row's limit are unmasked for every row.
            let first_visible = q_row0 as i32 + diag + 1;
            let unmasked = if first_visible > 0 {
                first_visible / tile
            } else {
                0
            };
            let n_unmasked = unmasked.min(full_len_tiles as i32).min(n_tiles);
            (n_tiles as u32, n_unmasked as u32)
        } else {
            let n_tiles = p.kv_len.div_ceil(cta_k(HD, PV_F32, COMPACT) as u32);
            (n_tiles, full_len_tiles)
        };
        BlockGeometry {
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

/// The kernel body shared by every variant. `KS = HD/32` int8 k-steps for Q·Kᵀ, `NP = HD/16` pairs
/// of output n-tiles, `NT = HD/8` output n-tiles, `MT` 16-row tiles per warp, `KT = cta_k/8` key
/// n-tiles and `KK = cta_k/16` key k-steps per tile.
///
/// # Safety
/// `p` satisfies the host's validation (see `host/attention.rs`): pointers are valid for the shapes,
/// quantized buffers are padded to whole blocks, and the launch has `cta_q(HD, PV_F32)`-row blocks,
/// `ATTN_THREADS` threads and `attn_smem_bytes(HD, PV_F32, COMPACT)` bytes of dynamic shared memory.
#[inline(always)]
unsafe fn attention<
    const HD: usize,
    const KS: usize,
    const NP: usize,
    const NT: usize,
    const MT: usize,
    const KT: usize,
    const KK: usize,
    const CAUSAL: bool,
    const PV_F32: bool,
    const COMPACT: bool,
>(
    p: &AttnParams,
) {
    const {
        assert!(KS * 32 == HD && NP * 16 == HD && NT * 8 == HD);
        assert!(
            MT == m_tiles(HD, PV_F32)
                && KT * 8 == cta_k(HD, PV_F32, COMPACT)
                && KK * 16 == cta_k(HD, PV_F32, COMPACT)
        );
        assert!(
            K_BLOCK % cta_k(HD, PV_F32, COMPACT) == 0,
            "a key tile must share one K scale"
        );
        assert!(
            Q_BLOCK % cta_q(HD, PV_F32) == 0,
            "a CTA's rows lie inside the padded Q"
        );
    };
    let geo = BlockGeometry::new::<HD, PV_F32, COMPACT, CAUSAL>(p);
    let pipe = Pipeline::<HD, PV_F32, COMPACT>::new(p, &geo);
    // Q's scales are per token: this thread's rows are g and g + 8 of each of its m-tiles.
    let padded_q = padded_len(p.qo_len as usize, Q_BLOCK) as u64;
    let tid = ptx::thread_idx_x();
    let thread_row0 = geo.q_row0 + (tid >> 5) * 16 * MT as u32 + ((tid & 31) >> 2);
    let q_scale_row = (geo.batch * p.q_heads + geo.head) as u64 * padded_q + thread_row0 as u64;
    let k_blocks = padded_len(p.kv_len as usize, K_BLOCK) / K_BLOCK;
    let k_scale_row =
        p.k_scale + 4 * (geo.batch * p.kv_heads + geo.kv_head) as u64 * k_blocks as u64;

    let mut softmax = OnlineSoftmax::<MT>::new();
    let mut out = [[[0.0f32; 4]; NT]; MT];

    if geo.n_tiles > 0 {
        // SAFETY: the host validated every pointer and the padded quantized layouts.
        unsafe { pipe.load_q_and_first_tile::<CAUSAL>() };
        let mut q_scale = [[0.0f32; 2]; MT];
        unroll::<MT>(
            #[inline(always)]
            |mt| {
                unroll::<2>(
                    #[inline(always)]
                    |h| {
                        let row = q_scale_row + (16 * mt + 8 * h) as u64;
                        // SAFETY: the CTA's rows lie inside the padded Q (whole Q_BLOCK blocks),
                        // whose scales are [b][h][padded_q].
                        q_scale[mt][h] = unsafe { ptx::ld_global_nc_f32(p.q_scale + 4 * row) };
                    },
                );
            },
        );
        let args = StepArgs {
            geo: &geo,
            q_scale,
            k_scale_row,
            kv_len: p.kv_len,
        };
        // Visits every key tile once, after the first loads, up to the last wait.
        macro_rules! pass {
            ($shifted:literal) => {
                let mut backoff = RetryBackoff::new();
                // Visits `range` of the order (`Pipeline::tile_of`), masked or not.
                macro_rules! visit {
                    ($range:expr, $mask:literal) => {
                        for i in $range {
                            // SAFETY: i < n_tiles, visited in order; see `Pipeline::step`.
                            unsafe {
                                pipe.step::<KS, NP, NT, MT, KT, KK, CAUSAL, $mask, $shifted>(
                                    i,
                                    &args,
                                    &mut softmax,
                                    &mut out,
                                    &mut backoff,
                                )
                            };
                        }
                    };
                }
                // Causal calls from the last tile down, so the masked tiles at the diagonal come
                // first; otherwise the unmasked tiles, then the tail.
                let n_masked = geo.n_tiles - geo.n_unmasked;
                if CAUSAL {
                    visit!(0..n_masked, true);
                    visit!(n_masked..geo.n_tiles, false);
                } else {
                    visit!(0..geo.n_unmasked, false);
                    visit!(geo.n_unmasked..geo.n_tiles, true);
                }
                ptx::cp_async_wait::<0>();
            };
        }
        pass!(false);
        // The f16 accumulator sums each tile's `p·v` in f16, which V beyond about ±1023 can
        // overflow. A CTA with such a row runs its tiles again, every probability lowered by
        // `2^-F16_ACC_OVERFLOW_SHIFT`: finite for every f16 V. The check costs a barrier per
        // CTA. NaN or ∞ in V take the second pass too and stay non-finite, as the contract
        // wants. It is a second copy of the loop (`SHIFTED`), not a runtime shift in the first:
        // that one cost registers, and spilled at d = 96.
        if !PV_F32 && ptx::sync_threads_any(overflowed(&out, &softmax)) {
            softmax = OnlineSoftmax::<MT>::new();
            out = [[[0.0f32; 4]; NT]; MT];
            // SAFETY: as the first pass's; every warp is done with the tiles' shared memory
            // (the barrier above).
            unsafe { pipe.load_q_and_first_tile::<CAUSAL>() };
            pass!(true);
        }
    }
    // SAFETY: the output and LSE pointers were validated by the host for these shapes.
    unsafe { epilogue::store::<HD, NT, MT>(p, &geo, &softmax, &out) };
}

/// Whether a row this thread holds has a non-finite output while its probabilities' sum is
/// finite: what an overflowing f16 tile sum leaves (one sum per row: ∞ and NaN carry through it;
/// finite outputs, at most `kv_len · 16 · 65504`, cannot overflow f32). Rows whose scores are NaN
/// (a NaN in Q or K) have a NaN sum and stay out: a second pass cannot change them.
#[inline(always)]
fn overflowed<const NT: usize, const MT: usize>(
    out: &OutAcc<NT, MT>,
    softmax: &OnlineSoftmax<MT>,
) -> bool {
    let mut any = false;
    unroll::<MT>(
        #[inline(always)]
        |mt| {
            unroll::<2>(
                #[inline(always)]
                |h| {
                    let mut row = 0.0f32;
                    unroll::<NT>(
                        #[inline(always)]
                        |nt| row += out[mt][nt][2 * h] + out[mt][nt][2 * h + 1],
                    );
                    any |= !row.is_finite() && softmax.sum[mt][h].is_finite();
                },
            );
        },
    );
    any
}

/// Accumulator element type of the output (re-exported for the submodules).
pub(crate) type OutAcc<const NT: usize, const MT: usize> = [[AccF32; NT]; MT];

macro_rules! attention_entry {
    ($name:literal, $hd:literal, $causal:literal, $pv_f32:literal, $compact:literal) => {
        const _: () = {
            /// Kernel entry (see the module docs); one per variant.
            #[unsafe(export_name = $name)]
            pub unsafe extern "ptx-kernel" fn attention_entry(p: AttnParams) {
                // SAFETY: the host launches this entry only with validated parameters.
                unsafe {
                    attention::<
                        $hd,
                        { $hd / 32 },
                        { $hd / 16 },
                        { $hd / 8 },
                        { m_tiles($hd, $pv_f32) },
                        { cta_k($hd, $pv_f32, $compact) / 8 },
                        { cta_k($hd, $pv_f32, $compact) / 16 },
                        $causal,
                        $pv_f32,
                        $compact,
                    >(&p)
                }
            }
        };
    };
}

crate::for_each_attention_variant!(attention_entry);
