//! Launch constants of the sm_90a (wgmma) attention kernel: the single source of truth for the
//! device code in `hopper/` and for `host/hopper.rs`, which includes this file with `#[path]`.
//! Plain `const`s and `const fn`s only: this file compiles for both nvptx64 and the host.
//!
//! CTA layout: `sm90_consumer_warpgroups(d, pv8, narrow)` warpgroups (f16 P·V: 3 for d = 96, 4
//! for d = 64, 2 for d = 128 and 256; 8-bit, and the narrow f16 kernels of short causal calls: one
//! per CTA, `sm90_ctas_per_sm` CTAs per SM) of 64 query rows each (a warpgroup's rows share one
//! 128-row Q quantization block), and no producer warp: every thread also issues its share of the
//! cp.async copies of the K/V tiles (`sm90_cta_k(d, pv8, narrow)` keys: 64, or 128 for the 8-bit
//! P·V up to d = 128 and the wide f16 one at d = 128) where thread 0 does not copy them all with
//! TMA (d = 96, or an f16 V that TMA cannot describe), into `sm90_stages(d, pv8, narrow)`
//! shared-memory stages tracked by mbarriers.
//! Shared memory (from the dynamic base rounded up to 1024 bytes, the 128-byte swizzle period):
//! Q tile, the K stages, the V stages, then the mbarriers.

#![allow(dead_code)] // each side (device, host) uses a different subset

/// Warpgroups per CTA; each owns 64 query rows. With no producer warp the CTA is a multiple of
/// 128 threads, so the register cap at entry (one CTA per SM) is 255 for 256 threads, 168 for 384
/// and 128 for 512. FP16 P·V: d = 96 uses three, d = 64 (124–128 registers) four, which hides
/// more of its softmax latency (d = 64 tiles carry half the tensor work of d = 128 for the same
/// softmax), d = 256 two (its f32 output alone takes 128 registers per thread), d = 128 two over
/// 128-key tiles (250–254 registers; [`SM90_F16_WIDE_TILES`]). 8-bit P·V
/// (`pv8`): 128-key tiles, whose scores take 64 registers, then the s32 product of a tile (one
/// n = 128 product at d = 128, else column groups of 32 registers) beside the f32 output: one
/// warpgroup per CTA at every d, several
/// CTAs per SM ([`sm90_ctas_per_sm`]; serial tiles), which measured 8–23% (d = 128), 12–26%
/// (d = 64) and 1–13% (d = 256, 64-key tiles) faster than two or three warpgroups in one CTA
/// (docs/perf-notes.md, v3.9 and v3.11).
///
/// `narrow`: the f16 P·V at d ≤ 128 as one-warpgroup CTAs, several per SM
/// ([`sm90_ctas_per_sm`]), for causal calls over short sequences, where 64-row CTAs spread the
/// triangle's uneven work more evenly (measured +15–31% on the kernel at causal 1K, d = 64 / 96,
/// and slower elsewhere: docs/perf-notes.md, v14 and v14.1).
pub const fn sm90_consumer_warpgroups(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    match (head_dim, pv8) {
        _ if narrow => 1,
        (129.., false) => 2,
        // `sm90_f16_wide` as a pattern: calling it here changes LLVM's code for the d ≤ 96
        // entries (an equivalent compare, other SASS scheduling; not measured).
        (128, false) if SM90_F16_WIDE_TILES => 2,
        (65.., false) => 3,
        (_, false) => 4,
        (_, true) => 1,
    }
}

/// CTAs that must fit on one SM (the entry's `.minnctapersm`, which caps ptxas' registers at
/// 65536 / (CTAs · threads) rounded down to 8): for the one-warpgroup 8-bit kernels, 3 at
/// d = 128 (168 registers: the official 2.2 kernel's occupancy; 73 KiB of shared memory each)
/// 4 at d = 64 (128 registers, 53 KiB; +2–8% over 3, docs/perf-notes.md, v3.10) and 2 at d = 256
/// (255 registers, 81 KiB); the narrow f16 kernels 4, 3 and 2 at d = 64, 96 and 128 (caps of
/// 128, 168 and 255 registers, of which ptxas takes 128, 168 and 206; 54, 70 and 106 KiB); 1 for
/// every other kernel (its shared memory holds one CTA per SM).
pub const fn sm90_ctas_per_sm(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    if sm90_consumer_warpgroups(head_dim, pv8, narrow) > 1 {
        1
    } else if narrow {
        match head_dim {
            ..=64 => 4,
            65..=96 => 3,
            _ => 2,
        }
    } else if head_dim <= 64 {
        4
    } else if head_dim <= 128 {
        3
    } else {
        2
    }
}

/// Keys per K/V tile: 64 for the f16 P·V except its wide d = 128 CTAs (128, see
/// [`SM90_F16_WIDE_TILES`]), 128 for the 8-bit one up to d = 128 (which halves its
/// per-tile costs per key: the s32 → f32 fold of the P·V product, barriers, descriptors; measured
/// +15–20% at d = 128, docs/perf-notes.md; a 128-key tile is stored as two 64-key tiles), 64 for
/// the 8-bit one at d = 256, whose 128 output registers leave room for 32 score registers, not 64
/// (ptxas spilled 320–344 bytes with 128-key tiles). Equal to the P tile of the 8-bit P·V
/// (`config::p8_tile`), which the CPU emulation follows.
pub const fn sm90_cta_k(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    if (pv8 && head_dim <= 128) || sm90_f16_wide(head_dim, pv8, narrow) {
        128
    } else {
        SM90_CTA_K
    }
}
/// Query rows per CTA (each warpgroup's 64 rows lie inside one 128-row Q quantization block).
pub const fn sm90_cta_q(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    64 * sm90_consumer_warpgroups(head_dim, pv8, narrow)
}
/// Keys per K/V tile of the f16 P·V (= `K_BLOCK`: one K scale per tile).
pub const SM90_CTA_K: usize = 64;
/// The f16 P·V at d = 128 (wide CTAs) in 128-key tiles over two warpgroups, FlashAttention-3's
/// shape: the 255-register cap of 256 threads holds 64 score, 64 output and 32 probability
/// registers per thread, which three warpgroups' 168 cannot; the per-tile costs that do not scale
/// with the keys (row reductions, barriers, descriptors, wgmma waits) are paid once per 128 keys.
/// Measured 4–8% faster than three warpgroups over 64-key tiles at 4K–16K, 1–4% at 2K
/// (docs/perf-notes.md, v17; at d = 64 the same tiles measured slower, v17.1). Narrow CTAs keep
/// 64-key tiles: two per SM cannot hold 48 KiB stages.
pub const SM90_F16_WIDE_TILES: bool = true;
/// Whether the CTA is the f16 P·V's wide d = 128 one ([`SM90_F16_WIDE_TILES`]): two warpgroups
/// over 128-key tiles. Narrow CTAs and the 8-bit P·V are not.
pub const fn sm90_f16_wide(head_dim: usize, pv8: bool, narrow: bool) -> bool {
    SM90_F16_WIDE_TILES && !pv8 && !narrow && head_dim == 128
}
/// Stage slack of the wide f16 d = 128 CTA (see [`sm90_stage_slack`]): 3, one tile copied ahead
/// in four stages (a slack of 2, two ahead, measured 1–2% slower, v17.2).
pub const SM90_F16_WIDE_SLACK: usize = 3;
/// Threads per CTA: the warpgroups (each thread computes and copies).
pub const fn sm90_threads(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    128 * sm90_consumer_warpgroups(head_dim, pv8, narrow)
}
/// Alignment of the tiles in shared memory (the 128-byte swizzle repeats every 1024 bytes and the
/// wgmma descriptors assume that phase); the kernel rounds the dynamic base up to it.
pub const SM90_SMEM_ALIGN: usize = 1024;
/// Head dimensions with an sm_90a kernel (f16 P·V).
pub const SM90_HEAD_DIMS: [usize; 4] = [64, 96, 128, 256];
/// Head dimensions with an sm_90a 8-bit P·V kernel.
pub const SM90_PV8_HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// K/V pipeline stages (f16 P·V over 64-key tiles: tile t + 5 is copied while tile t is computed;
/// see the kernel). At d = 64 and 96 this is 8 stages (d = 96: 8 · 20 KiB + 24 KiB of Q ≈ 185 KiB,
/// inside the 227 KiB a block may have); at d = 128 (128-key tiles) and d = 256 a stage is 48 KiB
/// (INT8 K 16 KiB + f16 V 32 KiB) beside a 16 or 32 KiB Q tile: 4 stages, 209 or 225 KiB. The
/// 8-bit P·V, several CTAs per SM: see the second branch.
pub const fn sm90_stages(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    if narrow {
        // f16, one warpgroup: d = 64, four CTAs of 4 KiB of Q and four 12 KiB stages; d = 96,
        // three of 8 KiB of Q and three 20 KiB stages; d = 128, two of 8 KiB of Q and four
        // 24 KiB stages (the f16 step releases tile t - 2 in step t: three stages hold one tile
        // ahead, four two).
        match head_dim {
            65..=96 => 3,
            _ => 4,
        }
    } else if sm90_ctas_per_sm(head_dim, pv8, narrow) > 1 {
        // Several CTAs share an SM's 228 KiB: d = 256, two of 16 KiB of Q and two 32 KiB
        // stages (three would pass 228 KiB by 96 bytes); d = 128, three of 8 KiB of Q and two
        // 32 KiB stages; d = 64, four of 4 KiB of Q and three 16 KiB stages.
        if head_dim <= 64 {
            3
        } else {
            2
        }
    } else if head_dim > 128 || sm90_cta_k(head_dim, pv8, narrow) == 128 {
        4
    } else {
        8
    }
}

/// How many tiles behind step t's tile a stage may still be held when step t copies: a CTA of one
/// warpgroup with the serial 8-bit step releases tile t - 1 at the start of step t (1); the
/// one-warpgroup f16 step, which overlaps tile t's softmax with tile t - 1's P·V, releases tile
/// t - 2 (2); several warpgroups keep one tile of slack for the slowest (3).
pub const fn sm90_stage_slack(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    match (sm90_consumer_warpgroups(head_dim, pv8, narrow), pv8) {
        (1, true) => 1,
        (1, false) => 2,
        _ if sm90_cta_k(head_dim, pv8, narrow) == 128 => SM90_F16_WIDE_SLACK,
        _ => 3,
    }
}

/// Tiles copied ahead of the one being computed: tile `t + lookahead` in step t, into the stage
/// of tile `t + lookahead - stages`, which [`sm90_stage_slack`] says is free by then.
pub const fn sm90_lookahead(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    sm90_stages(head_dim, pv8, narrow) - sm90_stage_slack(head_dim, pv8, narrow)
}

/// Bytes of one row of a K-major INT8 tile (Q, K) in shared memory: `head_dim`, except at d = 96,
/// whose 96-byte rows sit in the 128-byte rows of the d = 128 layout (the 128-byte swizzle; the
/// last 32 bytes of each row are never written nor read: Q·Kᵀ runs 3 k-steps of 32).
pub const fn sm90_kmajor_row_bytes(head_dim: usize) -> usize {
    if head_dim == 96 {
        128
    } else {
        head_dim
    }
}

/// Bytes of the INT8 Q tile (`sm90_cta_q` rows of `sm90_kmajor_row_bytes` bytes, K-major
/// swizzled).
pub const fn sm90_q_bytes(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    sm90_cta_q(head_dim, pv8, narrow) * sm90_kmajor_row_bytes(head_dim)
}

/// Bytes of one INT8 K stage.
pub const fn sm90_k_stage_bytes(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    sm90_cta_k(head_dim, pv8, narrow) * sm90_kmajor_row_bytes(head_dim)
}

/// Bytes of one V stage: f16 V (`head_dim / 64` column blocks of 64 keys × 128 bytes; d = 96:
/// three blocks of 32 channels, 64 keys × 64 bytes each), or with `pv8` the INT8 Vᵀ (`head_dim`
/// rows of 64 keys, K-major like a d = 64 K tile).
pub const fn sm90_v_stage_bytes(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    sm90_cta_k(head_dim, pv8, narrow) * head_dim * if pv8 { 1 } else { 2 }
}

/// Offset of the first K stage from the aligned base.
pub const fn sm90_k_offset(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    sm90_q_bytes(head_dim, pv8, narrow)
}

/// Offset of the first V stage from the aligned base.
pub const fn sm90_v_offset(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    sm90_k_offset(head_dim, pv8, narrow)
        + sm90_stages(head_dim, pv8, narrow) * sm90_k_stage_bytes(head_dim, pv8, narrow)
}

/// Offset of the mbarriers from the aligned base: `full[stages]`, `empty[stages]`, 8 bytes each.
pub const fn sm90_barrier_offset(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    sm90_v_offset(head_dim, pv8, narrow)
        + sm90_stages(head_dim, pv8, narrow) * sm90_v_stage_bytes(head_dim, pv8, narrow)
}

/// Dynamic shared memory to launch with (includes the slack for aligning the base).
pub const fn sm90_smem_bytes(head_dim: usize, pv8: bool, narrow: bool) -> usize {
    SM90_SMEM_ALIGN
        + sm90_barrier_offset(head_dim, pv8, narrow)
        + 2 * 8 * sm90_stages(head_dim, pv8, narrow)
}

/// Calls `$m!(name, head_dim, causal, pv8, narrow)` once per sm_90a attention entry (`pv8`: P·V
/// on u8 P · s8 Vᵀ instead of f16; `narrow`: one-warpgroup f16 CTAs, see
/// [`sm90_consumer_warpgroups`]). The device crate stamps the entries from it and the host builds
/// its name table from it.
#[macro_export]
macro_rules! for_each_sm90_attention_variant {
    ($m:ident) => {
        $m!("sage_attn_sm90_hd64_full", 64, false, false, false);
        $m!("sage_attn_sm90_hd64_causal", 64, true, false, false);
        $m!("sage_attn_sm90_hd96_full", 96, false, false, false);
        $m!("sage_attn_sm90_hd96_causal", 96, true, false, false);
        $m!("sage_attn_sm90_hd128_full", 128, false, false, false);
        $m!("sage_attn_sm90_hd128_causal", 128, true, false, false);
        $m!("sage_attn_sm90_hd256_full", 256, false, false, false);
        $m!("sage_attn_sm90_hd256_causal", 256, true, false, false);
        $m!("sage_attn_sm90_hd64_causal_narrow", 64, true, false, true);
        $m!("sage_attn_sm90_hd96_causal_narrow", 96, true, false, true);
        $m!("sage_attn_sm90_hd128_causal_narrow", 128, true, false, true);
        $m!("sage_attn_sm90_hd64_full_pv8", 64, false, true, false);
        $m!("sage_attn_sm90_hd64_causal_pv8", 64, true, true, false);
        $m!("sage_attn_sm90_hd128_full_pv8", 128, false, true, false);
        $m!("sage_attn_sm90_hd128_causal_pv8", 128, true, true, false);
        $m!("sage_attn_sm90_hd256_full_pv8", 256, false, true, false);
        $m!("sage_attn_sm90_hd256_causal_pv8", 256, true, true, false);
    };
}

/// Calls `$m!(name, head_dim, causal)` once per sm_90a FP8 P·V entry (`PvPrecision::Fp8` on
/// Hopper): the 8-bit kernel (`pv8` in the configuration functions: same CTA, tiles and stages)
/// with e4m3 P and Vᵀ and an f32 accumulator per tile. The device crate stamps the entries from
/// it and the host builds its name table from it.
#[macro_export]
macro_rules! for_each_sm90_fp8_variant {
    ($m:ident) => {
        $m!("sage_attn_sm90_hd64_full_fp8", 64, false);
        $m!("sage_attn_sm90_hd64_causal_fp8", 64, true);
        $m!("sage_attn_sm90_hd128_full_fp8", 128, false);
        $m!("sage_attn_sm90_hd128_causal_fp8", 128, true);
        $m!("sage_attn_sm90_hd256_full_fp8", 256, false);
        $m!("sage_attn_sm90_hd256_causal_fp8", 256, true);
    };
}

/// Entry names of the single-tile wgmma tests (one warpgroup, 128 threads,
/// [`SM90_TEST_SMEM`] bytes of dynamic shared memory, `TestParams {a, b, d}`).
pub mod sm90_test_names {
    /// `D[64][64] (s32) = A[64][HD] (s8) · B[64][HD]ᵀ (s8)`, HD = 64.
    pub const WGMMA_S8_HD64: &str = "sage_sm90_test_wgmma_s8_hd64";
    /// As [`WGMMA_S8_HD64`] with HD = 96 (the d = 128 layout, 3 k-steps).
    pub const WGMMA_S8_HD96: &str = "sage_sm90_test_wgmma_s8_hd96";
    /// As [`WGMMA_S8_HD64`] with HD = 128.
    pub const WGMMA_S8_HD128: &str = "sage_sm90_test_wgmma_s8_hd128";
    /// `D[64][HD] (f32) = A[64][64] (f16, from registers) · B[64][HD] (f16, N-major)`, HD = 64.
    pub const WGMMA_F16_HD64: &str = "sage_sm90_test_wgmma_f16_hd64";
    /// As [`WGMMA_F16_HD64`] with HD = 96 (`m64n96k16`, V in 64-byte-swizzled column blocks).
    pub const WGMMA_F16_HD96: &str = "sage_sm90_test_wgmma_f16_hd96";
    /// As [`WGMMA_F16_HD64`] with HD = 128.
    pub const WGMMA_F16_HD128: &str = "sage_sm90_test_wgmma_f16_hd128";
}

/// Dynamic shared memory of the single-tile wgmma tests.
pub const SM90_TEST_SMEM: usize = SM90_SMEM_ALIGN + 64 * 128 * 2 + 64 * 128;
