//! The portable 8-bit P·V kernel (`PvPrecision::Int8` on any sm_80+ device: Ampere, Ada, Hopper
//! without wgmma): INT8 Q·Kᵀ and u8 P · s8 Vᵀ, both with `mma.sync m16n8k32` (s32 accumulate).
//!
//! Same inputs, parameters and answers as the sm_90a kernel's 8-bit path (`hopper/attention.rs`,
//! `step_serial`), and the same CPU emulation (`attention_pv8_emulation`, P tiles of
//! `config::p8_tile(HD)` keys from key 0: 128 up to head_dim 128, 64 above):
//!
//! 1. `S = Q·Kₜᵀ` for a key tile (128 keys: two 64-key K blocks, one K scale each; 64 keys at
//!    d = 256) in n-tiles of 8 keys of s32 accumulators, Q's fragments held in registers for the
//!    whole loop (read from the Q tile per k-step at d = 256);
//! 2. dequantize (log2 units), mask (tails, causal), online softmax with the probabilities relative
//!    to the tile's own row maximum (`softmax16`, `PER_TILE`), so that the u8 P uses its whole
//!    range, and the tile's factor `2^(tile max − running max)`;
//! 3. P packed to u8 straight from the accumulator registers (`p8::pack_probs_u8`): the mma.sync
//!    m16n8k32 A fragment has the wgmma's per-warp layout, so the prepared Vᵀ's key permutation
//!    (`config::v8_key_slot`) fits it, and Vᵀ rows (one channel each, key slots contiguous) are
//!    the B operand exactly as K's rows are for Q·Kᵀ (`frag::load_b_rows_pair`, no transpose);
//! 4. `acc = P·Vₜ` in a fresh s32 accumulator per group of 64 channels (exact), folded as
//!    `O = O·rescale + acc·factor` in f32 (two-level accumulation);
//! 5. epilogue: `o = O / l · v_scale / 255 + v_mean`, the LSE as on the f16 path.
//!
//! CTA: `config::pv8_warps(HD)` warps × 16 query rows — 8 warps, 128 rows (one Q block) up to
//! d = 128; 4 warps, 64 rows at d = 256 (two Q scales per thread, its rows'); K and Vᵀ tiles in a
//! two-stage cp.async pipeline (`mainloop`), one barrier per tile. Registers per thread: the f32
//! output (`HD/2`), the scores (`2 · tile keys / 8`) or the packed P and a 64-channel s32
//! accumulator (32), Q's fragments (`HD/8`, up to d = 128): ptxas 12.9 gives 203–255, so one CTA
//! per SM. Shared memory: `config::pv8_smem_bytes` (48 KiB at d = 64, 90 KiB at d = 128, 91 KiB at
//! d = 256, within the 99 KiB an Ada or GA10x block may opt in to).
//! Variants for HD = 64, 96, 128 and 256 (the prepared Vᵀ and Q/K are `HD` wide, d = 96
//! included). A smaller head_dim `p.head_dim` (a multiple of 16) runs on the next one up: Q, K and
//! Vᵀ arrive with zero channels past it (zero V scale and mean there) and the epilogue stores only
//! its first `p.head_dim` output columns.

mod epilogue;
mod format;
mod mainloop;

use crate::config::{key_tiles, p8_tile, pv8_cta_k, pv8_cta_q, pv8_warps, K_BLOCK, Q_BLOCK};
use crate::params::AttnParams;
use crate::ptx;
use crate::softmax16::OnlineSoftmax;
use format::PvFormat;
use mainloop::Pipeline;

/// Which rows and key tiles this CTA handles.
pub(crate) struct Geometry {
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

impl Geometry {
    #[inline(always)]
    fn new<const HD: usize, const CAUSAL: bool>(p: &AttnParams) -> Self {
        let (bx, head, batch) = ptx::block_idx();
        let rows = pv8_cta_q(HD) as u32;
        let q_blocks = p.qo_len.div_ceil(rows);
        // Causal CTAs near the end of the sequence do the most work: start them first.
        let q_block = if CAUSAL { q_blocks - 1 - bx } else { bx };
        let q_row0 = q_block * rows;
        let (n_tiles, n_unmasked) = key_tiles(
            q_row0 as usize,
            pv8_cta_q(HD),
            pv8_cta_k(HD),
            p.qo_len as usize,
            p.kv_len as usize,
            CAUSAL,
        );
        Geometry {
            batch,
            head,
            kv_head: head / (p.q_heads / p.kv_heads),
            q_row0,
            n_tiles: n_tiles as u32,
            n_unmasked: n_unmasked as u32,
            diag: p.kv_len as i32 - p.qo_len as i32,
        }
    }
}

/// The kernel body shared by every variant: `KS = HD/32` k-steps of Q·Kᵀ, `NT = HD/8` output
/// n-tiles, `NK = p8_tile(HD)/8` n-tiles of scores per key tile.
///
/// # Safety
/// `p` satisfies the host's validation (as for the portable kernel) with `v` the prepared INT8 Vᵀ
/// (`[batch][kv_heads][HD][padded kv_len]`) and `v_scale`/`v_mean` its scales and mean; the launch
/// has `ceil(qo_len / pv8_cta_q(HD)) × q_heads × batch` blocks of `pv8_threads(HD)` threads and
/// `pv8_smem_bytes(HD)` bytes of dynamic shared memory.
#[inline(always)]
unsafe fn attention<
    F: PvFormat,
    const HD: usize,
    const KS: usize,
    const NT: usize,
    const NK: usize,
    const CAUSAL: bool,
>(
    p: &AttnParams,
) {
    const {
        assert!(KS * 32 == HD && NT * 8 == HD && NT <= 32);
        // The CPU emulation scales P per p8_tile(HD) keys from key 0: this kernel's key tiles,
        // whole K blocks; the packed P holds at most four 32-key k-steps.
        assert!(pv8_cta_k(HD) == p8_tile(HD) && NK * 8 == pv8_cta_k(HD));
        assert!(pv8_cta_k(HD) % K_BLOCK == 0 && NK <= 16);
        // A CTA's rows lie inside one padded Q block; one 16-row m-tile per warp.
        assert!(Q_BLOCK % pv8_cta_q(HD) == 0 && pv8_cta_q(HD) == 16 * pv8_warps(HD));
    };
    let geo = Geometry::new::<HD, CAUSAL>(p);
    let mut softmax = OnlineSoftmax::new();
    let mut out = [[0.0f32; 4]; NT];
    if geo.n_tiles > 0 {
        let pipe = Pipeline::<HD>::new(p, &geo);
        // SAFETY: the host validated every pointer and the padded quantized layouts.
        let q = unsafe { pipe.load_q_and_first_tile::<KS>() };
        for t in 0..geo.n_unmasked {
            // SAFETY: t < n_tiles, in order, by every thread; see `Pipeline::step`.
            unsafe { pipe.step::<F, KS, NT, NK, CAUSAL, false>(t, &q, &mut softmax, &mut out) };
        }
        for t in geo.n_unmasked..geo.n_tiles {
            // SAFETY: as above.
            unsafe { pipe.step::<F, KS, NT, NK, CAUSAL, true>(t, &q, &mut softmax, &mut out) };
        }
    }
    // SAFETY: the output, LSE, V scale and V mean pointers were validated by the host.
    unsafe { epilogue::store::<F, HD, NT>(p, &geo, &softmax, &out) };
}

/// One kernel entry: [`attention`] with P·V format `$format` (see the module docs).
macro_rules! attention_entry {
    ($name:literal, $format:ty, $hd:literal, $causal:literal) => {
        const _: () = {
            /// Kernel entry (see the module docs); one per variant.
            #[unsafe(export_name = $name)]
            pub unsafe extern "ptx-kernel" fn attention_entry(p: AttnParams) {
                // SAFETY: the host launches this entry only with validated parameters.
                unsafe {
                    attention::<
                        $format,
                        $hd,
                        { $hd / 32 },
                        { $hd / 8 },
                        { p8_tile($hd) / 8 },
                        $causal,
                    >(&p)
                }
            }
        };
    };
}

/// The INT8 entries (the portable module).
#[cfg(not(feature = "ada_fp8"))]
macro_rules! pv8_attention_entry {
    ($name:literal, $hd:literal, $causal:literal) => {
        attention_entry!($name, format::Int8, $hd, $causal);
    };
}

#[cfg(not(feature = "ada_fp8"))]
crate::for_each_pv8_attention_variant!(pv8_attention_entry);

/// The FP8 entries (the sm_89 module): the same kernel with e4m3 P and Vᵀ; the last argument
/// picks the accumulator of one key tile's product (`true`: f16).
#[cfg(feature = "ada_fp8")]
macro_rules! fp8_attention_entry {
    ($name:literal, $hd:literal, $causal:literal, true) => {
        attention_entry!($name, format::Fp8F16, $hd, $causal);
    };
    ($name:literal, $hd:literal, $causal:literal, false) => {
        attention_entry!($name, format::Fp8F32, $hd, $causal);
    };
}

#[cfg(feature = "ada_fp8")]
crate::for_each_fp8_attention_variant!(fp8_attention_entry);
