//! Host side of the Hopper (sm_90a) wgmma attention kernel (`kernels-gpu/src/hopper/`): kernel
//! names, launch geometry, the launch itself, and test entry points.
//!
//! # Dispatch
//!
//! The sm_90a kernel takes exactly the portable kernel's `AttnParams` (same quantized Q/K
//! layouts, scales, V/O strides, LSE and `lse_bias`) and gives the same answers; its P·V
//! accumulates in f32 throughout (on Hopper an f16 accumulator is not faster), so it serves both
//! `PvAccum` options. `attention::selected_kernel` decides when it runs (compute capability 9.0,
//! `Backend::Auto`; head_dim 72..=88 runs zero-padded on the d = 96 kernel; its narrow variant
//! for short causal calls: `SelectedKernel::entry`) and `enqueue_attend` launches it through
//! `launch_hopper_attention`.
//!
//! Launch geometry ([`hopper_launch_config`]): grid `(ceil(qo_len / sm90_cta_q(d)), q_heads,
//! batch)`, block [`sm90_threads`]`(d)` threads, [`sm90_smem_bytes`]`(d)` bytes of dynamic shared
//! memory, which needs the opt-in above 48 KiB that [`Runtime`] does on first launch:
//!
//! | head dim | P·V | warpgroups | rows per CTA | threads | shared memory |
//! |---|---|---|---|---|---|
//! | 64 | f16 | 4 | 256 | 512 | 1024 + 16384 + 8·12288 + 128 = 115 840 |
//! | 96 | f16 | 3 | 192 | 384 | 1024 + 24576 + 8·20480 + 128 = 189 568 |
//! | 128 | f16 | 3 | 192 | 384 | 1024 + 24576 + 8·24576 + 128 = 222 336 |
//! | 256 | f16 | 2 | 128 | 256 | 1024 + 32768 + 4·49152 + 64 = 230 464 |
//! | 64, causal, N ≤ 2K | f16 | 1 (4 CTAs per SM) | 64 | 128 | 1024 + 4096 + 4·12288 + 64 = 54 336 |
//! | 96, causal, N ≤ 1K | f16 | 1 (3 CTAs per SM) | 64 | 128 | 1024 + 8192 + 3·20480 + 48 = 70 704 |
//! | 128, causal, N ≤ 1K | f16 | 1 (2 CTAs per SM) | 64 | 128 | 1024 + 8192 + 4·24576 + 64 = 107 584 |
//! | 64 | 8-bit | 1 (4 CTAs per SM) | 64 | 128 | 1024 + 4096 + 3·16384 + 48 = 54 320 |
//! | 128 | 8-bit | 1 (3 CTAs per SM) | 64 | 128 | 1024 + 8192 + 2·32768 + 32 = 74 784 |
//! | 256 | 8-bit | 1 (2 CTAs per SM) | 64 | 128 | 1024 + 16384 + 2·32768 + 32 = 82 976 |
//!
//! (each warpgroup owns 64 query rows; thread 0 copies the K/V tiles by TMA through descriptors
//! the call encodes, `launch::tma`, except with f16 P·V at d = 96 or a V that TMA cannot
//! describe, where every thread copies its share; no producer warp). Head dims 64, 96, 128 and
//! 256 (8-bit P·V: 64, 128 and 256, with 64-key tiles at 256); `launch::dispatch` runs the sizes
//! between them zero-padded on the next one up (d = 80 on the d = 96 kernel, d = 160 and 192 on
//! d = 256; with the 8-bit P·V d = 96 on d = 128). d = 96 stores Q and K in
//! the d = 128 kernel's 128-byte shared-memory rows (its stage is 8 KiB of K + 12 KiB of V).

use crate::device::runtime::{ModuleKind, Runtime};
use crate::params::AttnParams;
use crate::types::error::{Error, Result};

/// Launch constants shared with the device crate (the same source file).
#[path = "../../abi/hopper_config.rs"]
pub mod config;

pub use config::{sm90_cta_q, sm90_smem_bytes, sm90_threads, SM90_HEAD_DIMS, SM90_PV8_HEAD_DIMS};

/// The sm_90a attention entry for this head dim, masking, P·V precision (`pv8`: 8-bit) and CTA
/// shape (`narrow`: see [`narrow_pays`]), or `None` when there is none (head dim 80, the 8-bit
/// P·V at 96, a narrow kernel other than the causal f16 ones at d ≤ 128, or anything else): the
/// caller then uses the portable kernel.
pub(crate) fn hopper_attention_kernel_name(
    head_dim: usize,
    causal: bool,
    pv8: bool,
    narrow: bool,
) -> Option<&'static str> {
    macro_rules! find {
        ($name:literal, $hd:literal, $causal:literal, $pv8:literal, $narrow:literal) => {
            if head_dim == $hd && causal == $causal && pv8 == $pv8 && narrow == $narrow {
                return Some($name);
            }
        };
    }
    crate::for_each_sm90_attention_variant!(find);
    None
}

/// The sm_90a FP8 P·V entry (`PvPrecision::Fp8`: the 8-bit kernel with e4m3 P and Vᵀ) for this
/// head dim and masking, or `None` when there is none (the 8-bit kernels' sizes: 64, 128, 256).
pub(crate) fn hopper_fp8_kernel_name(head_dim: usize, causal: bool) -> Option<&'static str> {
    macro_rules! find {
        ($name:literal, $hd:literal, $causal:literal) => {
            if head_dim == $hd && causal == $causal {
                return Some($name);
            }
        };
    }
    crate::for_each_sm90_fp8_variant!(find);
    None
}

/// Every sm_90a attention entry point, for resource checks.
pub fn hopper_attention_kernel_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! push {
        ($name:literal, $hd:literal, $causal:literal, $pv8:literal, $narrow:literal) => {
            v.push($name);
        };
    }
    crate::for_each_sm90_attention_variant!(push);
    macro_rules! push_fp8 {
        ($name:literal, $hd:literal, $causal:literal) => {
            v.push($name);
        };
    }
    crate::for_each_sm90_fp8_variant!(push_fp8);
    v
}

/// Whether the sm_90a kernels can run on this runtime's device: compute capability exactly 9.0
/// (H100, H200, GH200) and a build that embeds the Hopper PTX.
pub fn hopper_available(rt: &Runtime) -> bool {
    rt.compute_capability() == (9, 0) && !crate::device::kernels::PTX_HOPPER.trim().is_empty()
}

/// Longest sequence (queries and keys) for which a causal f16 call at `head_dim` runs the narrow
/// kernel: 2048 at d ≤ 64, 1024 at d = 96 and 128, 0 above. H200, whole calls against the wide
/// kernels (docs/perf-notes.md, v14.1): causal 1K +23% / +17% / +9% at d = 64 / 96 / 128, causal
/// 2K +8.5% / −6% / −8%, causal 4K −4% / −6% / −6%.
pub const fn narrow_max_len(head_dim: usize) -> usize {
    match head_dim {
        ..=64 => 2048,
        65..=128 => 1024,
        _ => 0,
    }
}

/// Whether a launch takes the narrow (one-warpgroup, 64-row CTA) variant of the f16 kernel:
/// causal, both lengths at most [`narrow_max_len`] — where its finer CTAs balance the triangle's
/// work; longer or non-causal calls run faster on the wide CTAs, whose pingpong and deeper
/// pipeline serve long rows of tiles better.
pub fn narrow_pays(head_dim: usize, pv8: bool, causal: bool, qo_len: usize, kv_len: usize) -> bool {
    let max = narrow_max_len(head_dim);
    !pv8 && causal && qo_len <= max && kv_len <= max
}

/// Grid, block and dynamic shared memory of one sm_90a attention launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// `(ceil(qo_len / sm90_cta_q(head_dim)), q_heads, batch)`, or with the causal
    /// longest-first order in head chunks of `c` (`AttnParams::causal_chunk`) `(c,
    /// ceil(qo_len / sm90_cta_q(head_dim)), ceil(q_heads · batch / c))`.
    pub grid: (u32, u32, u32),
    /// [`sm90_threads`]`(head_dim)` threads.
    pub threads: u32,
    /// [`sm90_smem_bytes`]`(head_dim)` bytes.
    pub smem_bytes: u32,
}

/// The launch geometry for a problem (see the module docs).
pub fn hopper_launch_config(
    head_dim: usize,
    (pv8, narrow): (bool, bool),
    qo_len: usize,
    q_heads: usize,
    batch: usize,
    causal_chunk: u32,
) -> LaunchConfig {
    let q_blocks = qo_len.div_ceil(sm90_cta_q(head_dim, pv8, narrow)) as u32;
    let pairs = (q_heads * batch) as u32;
    LaunchConfig {
        grid: if causal_chunk > 0 {
            (causal_chunk, q_blocks, pairs.div_ceil(causal_chunk))
        } else {
            (q_blocks, q_heads as u32, batch as u32)
        },
        threads: sm90_threads(head_dim, pv8, narrow) as u32,
        smem_bytes: sm90_smem_bytes(head_dim, pv8, narrow) as u32,
    }
}

/// The smallest head chunk worth the longest-first order (H200, B = 4, H = 32, v12 in
/// docs/perf-notes.md): chunks of 128 pairs (N = 1K) and 70 (2K, and 4K at d = 64) made the causal
/// call 0–11% faster, chunks of 35–46 (4K at d = 96 / 128) made the kernel 4–5% slower and chunks
/// of 8–17 (16K) the kernel or the call 2–4%: small chunks spread the concurrent CTAs over more
/// heads than L2 holds well, and their tails are short anyway.
pub const MIN_CAUSAL_CHUNK: u64 = 64;

/// The head chunk of a causal launch's longest-first order (`AttnParams::causal_chunk`): as many
/// (batch, head) pairs as have their K and V (INT8 K and f16 V, or INT8 K and INT8 Vᵀ) fit in
/// 7/8 of the L2 together, so that each head's K and V, read by its Q blocks in different waves,
/// stay in L2 between them (at N = 1K, B = 4, H = 32, d = 128 all 128 pairs: 48 MiB of the
/// H200's 60, leaving 7.5 MiB for the streaming Q and O; measured in
/// docs/perf-notes.md v12). 0 (each head's blocks longest first, the old order) when a chunk would
/// hold fewer than [`MIN_CAUSAL_CHUNK`] pairs and not all of them, or the grid would not allow it
/// (`q_blocks` and the chunk count ≤ 65535).
#[allow(clippy::too_many_arguments)]
pub fn causal_chunk(
    head_dim: usize,
    (pv8, narrow): (bool, bool),
    qo_len: usize,
    q_heads: usize,
    kv_len: usize,
    kv_heads: usize,
    batch: usize,
    l2_bytes: u64,
) -> u32 {
    let bytes_per_key = head_dim as u64 * if pv8 { 2 } else { 3 };
    let kv_head_bytes = (kv_len as u64 * bytes_per_key).max(1);
    let kv_fit = l2_bytes / 8 * 7 / kv_head_bytes;
    let pairs = (q_heads * batch) as u64;
    let chunk = (kv_fit * (q_heads / kv_heads.max(1)) as u64).min(pairs);
    let fits_grid = |n: u64| n <= 65_535;
    if chunk < pairs.min(MIN_CAUSAL_CHUNK)
        || !fits_grid(qo_len.div_ceil(sm90_cta_q(head_dim, pv8, narrow)) as u64)
        || !fits_grid(pairs.div_ceil(chunk))
    {
        0
    } else {
        chunk as u32
    }
}

/// Launches the sm_90a entry `name` (compiled for `head_dim`, `pv8`, `causal` and `narrow`: the
/// entry `SelectedKernel::entry` gives for the call's lengths) for `batch` batches on the
/// runtime's stream, with the geometry of [`hopper_launch_config`] (causal: in the head chunks of
/// [`causal_chunk`]).
///
/// # Safety
/// `params` satisfies everything the portable attention kernel requires (validated shapes and
/// pointers, quantized Q padded to 128 rows and K to 64, scales for every block, `lse`/`lse_bias`
/// 0 or `batch * q_heads * qo_len` f32), `head_dim` is the one `name` was compiled for, and the
/// buffers stay alive and unaliased until the kernel finishes (keep the access guards alive until
/// this returns).
pub(crate) unsafe fn launch_hopper_attention(
    rt: &Runtime,
    name: &str,
    head_dim: usize,
    (pv8, narrow): (bool, bool),
    causal: bool,
    batch: usize,
    params: &AttnParams,
) -> Result<()> {
    let (qo_len, q_heads) = (params.qo_len as usize, params.q_heads as usize);
    let chunk = if causal {
        causal_chunk(
            head_dim,
            (pv8, narrow),
            qo_len,
            q_heads,
            params.kv_len as usize,
            params.kv_heads as usize,
            batch,
            rt.l2_bytes(),
        )
    } else {
        0
    };
    let params = &AttnParams {
        causal_chunk: chunk,
        ..*params
    };
    let cfg = hopper_launch_config(head_dim, (pv8, narrow), qo_len, q_heads, batch, chunk);
    let kernel = rt.function(ModuleKind::Hopper, name)?;
    // SAFETY: `params` is the struct the entry takes (params.rs is shared); the caller guarantees
    // the pointers are valid for this grid.
    unsafe {
        rt.launch(
            &kernel,
            cfg.grid,
            (cfg.threads, 1, 1),
            cfg.smem_bytes,
            params,
        )
    }
}

/// Shared memory of the single-tile wgmma tests.
const TEST_SMEM: u32 = config::SM90_TEST_SMEM as u32;

fn run_tile<A, B, D>(rt: &Runtime, name: &str, a: &[A], b: &[B], d_len: usize) -> Result<Vec<D>>
where
    A: cudarc::driver::DeviceRepr,
    B: cudarc::driver::DeviceRepr,
    D: cudarc::driver::DeviceRepr + Default + Clone,
{
    // SAFETY: one warpgroup reads 64×HD operands and writes d_len results, the sizes the callers
    // check and allocate.
    unsafe {
        crate::launch::selftest::run_tile_kernel(
            rt,
            (ModuleKind::Hopper, name),
            (128, TEST_SMEM),
            a,
            b,
            d_len,
        )
    }
}

/// Single-tile test of the Q·Kᵀ wgmma path: `D[64][64] = A[64][hd] · B[64][hd]ᵀ` (s8 → s32), both
/// operands row-major (as Q and K are stored), staged in the kernel's swizzled layout. Returns D
/// row-major. `hd` is 64, 96 or 128.
pub fn wgmma_s8_tile(rt: &Runtime, hd: usize, a: &[i8], b: &[i8]) -> Result<Vec<i32>> {
    let name = match hd {
        64 => config::sm90_test_names::WGMMA_S8_HD64,
        96 => config::sm90_test_names::WGMMA_S8_HD96,
        128 => config::sm90_test_names::WGMMA_S8_HD128,
        _ => {
            return Err(Error::UnsupportedHeadDim {
                head_dim: hd,
                supported: &SM90_HEAD_DIMS,
            });
        }
    };
    if a.len() != 64 * hd || b.len() != 64 * hd {
        return Err(Error::ShapeMismatch {
            what: format!("operands must hold 64×{hd}"),
        });
    }
    run_tile(rt, name, a, b, 64 * 64)
}

/// Single-tile test of the P·V wgmma path: `D[64][hd] = A[64][64] · B[64][hd]` (f16 → f32, raw
/// f16 bits), A loaded into registers in the P-fragment layout, B (keys × head dim, as V is
/// stored) staged in the kernel's N-major swizzled layout. Returns D row-major. `hd` is 64, 96 or
/// 128.
pub fn wgmma_f16_tile(rt: &Runtime, hd: usize, a: &[u16], b: &[u16]) -> Result<Vec<f32>> {
    let name = match hd {
        64 => config::sm90_test_names::WGMMA_F16_HD64,
        96 => config::sm90_test_names::WGMMA_F16_HD96,
        128 => config::sm90_test_names::WGMMA_F16_HD128,
        _ => {
            return Err(Error::UnsupportedHeadDim {
                head_dim: hd,
                supported: &SM90_HEAD_DIMS,
            });
        }
    };
    if a.len() != 64 * 64 || b.len() != 64 * hd {
        return Err(Error::ShapeMismatch {
            what: format!("A must hold 64×64 and B 64×{hd}"),
        });
    }
    run_tile(rt, name, a, b, 64 * hd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_geometry() {
        for hd in SM90_HEAD_DIMS {
            for causal in [false, true] {
                for pv8 in [false, true] {
                    let name = hopper_attention_kernel_name(hd, causal, pv8, false);
                    assert_eq!(name.is_some(), !pv8 || SM90_PV8_HEAD_DIMS.contains(&hd));
                    let Some(name) = name else { continue };
                    let tail = match (causal, pv8) {
                        (false, false) => "full",
                        (true, false) => "causal",
                        (false, true) => "full_pv8",
                        (true, true) => "causal_pv8",
                    };
                    assert!(name.contains(&format!("hd{hd}_")) && name.ends_with(tail));
                }
            }
        }
        assert_eq!(hopper_attention_kernel_name(80, false, false, false), None);
        assert_eq!(hopper_attention_kernel_name(96, false, true, false), None);
        assert_eq!(
            hopper_attention_kernel_name(96, true, false, false),
            Some("sage_attn_sm90_hd96_causal")
        );
        assert_eq!(
            hopper_attention_kernel_name(96, true, false, true),
            Some("sage_attn_sm90_hd96_causal_narrow")
        );
        // 17 f16 / 8-bit entries and 6 FP8 ones, every name once.
        let names = hopper_attention_kernel_names();
        assert_eq!(names.len(), 23);
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for d in [64, 128, 256] {
            for (causal, mask) in [(false, "full"), (true, "causal")] {
                assert_eq!(
                    hopper_fp8_kernel_name(d, causal),
                    Some(format!("sage_attn_sm90_hd{d}_{mask}_fp8").as_str())
                        .filter(|n| names.contains(n))
                );
            }
        }
        assert_eq!(hopper_fp8_kernel_name(96, false), None);
        // The f16 d = 128 kernel: two warpgroups of 64 rows and 128-key tiles.
        let c = hopper_launch_config(128, (false, false), 1000, 32, 4, 0);
        assert_eq!(c.grid, (8, 32, 4));
        assert_eq!(c.threads, 256);
        let c = hopper_launch_config(64, (false, false), 1000, 32, 4, 0);
        assert_eq!((c.grid, c.threads), ((4, 32, 4), 512));
        // The 8-bit d = 128 kernel: one warpgroup of 64 rows per CTA, three CTAs per SM.
        let c = hopper_launch_config(128, (true, false), 1000, 32, 4, 0);
        assert_eq!((c.grid, c.threads), ((16, 32, 4), 128));
        let c = hopper_launch_config(64, (true, false), 1000, 32, 4, 0);
        assert_eq!((c.grid, c.threads), ((16, 32, 4), 128));
        // Causal, longest first within head chunks: pairs of a chunk in x, Q-block rank in y,
        // chunks in z.
        let c = hopper_launch_config(128, (false, false), 1000, 32, 4, 128);
        assert_eq!((c.grid, c.threads), ((128, 8, 1), 256));
        let c = hopper_launch_config(128, (false, false), 1000, 32, 4, 70);
        assert_eq!(c.grid, (70, 8, 2));
        // K and V of B = 4, H = 32, d = 128 take 48 MiB at N = 1K (f16 V): all 128 pairs in
        // 7/8 of the H200's 60 MiB L2; at 2K 70 of them (768 KiB each); 8-bit Vᵀ halves V.
        let mib = 1 << 20;
        assert_eq!(
            causal_chunk(128, (false, false), 1024, 32, 1024, 32, 4, 60 * mib),
            128
        );
        assert_eq!(
            causal_chunk(128, (false, false), 2048, 32, 2048, 32, 4, 60 * mib),
            70
        );
        assert_eq!(
            causal_chunk(128, (true, false), 2048, 32, 2048, 32, 4, 60 * mib),
            105
        );
        // GQA: 4 q heads per kv head, a chunk holds whole groups of them.
        assert_eq!(
            causal_chunk(128, (false, false), 4096, 32, 4096, 8, 4, 60 * mib),
            128
        );
        // Chunks of fewer than MIN_CAUSAL_CHUNK pairs (35 at 4K, 8 at 16K): the old order,
        // unless the chunk holds every pair.
        assert_eq!(
            causal_chunk(128, (false, false), 4096, 32, 4096, 32, 4, 60 * mib),
            0
        );
        assert_eq!(
            causal_chunk(128, (false, false), 16384, 32, 16384, 32, 4, 60 * mib),
            0
        );
        assert_eq!(
            causal_chunk(128, (false, false), 16384, 8, 16384, 8, 1, 60 * mib),
            8
        );
        // Not one kv head fits, or too many chunks or Q blocks for the grid: the old order.
        assert_eq!(
            causal_chunk(128, (false, false), 1 << 20, 1, 1 << 20, 1, 1, 60 * mib),
            0
        );
        assert_eq!(
            causal_chunk(128, (false, false), 192 * 65_536, 1, 8, 1, 1, 60 * mib),
            0
        );
        let c = hopper_launch_config(96, (false, false), 1000, 32, 4, 0);
        assert_eq!((c.grid, c.threads), ((6, 32, 4), 384));
        let c = hopper_launch_config(256, (false, false), 1000, 32, 4, 0);
        assert_eq!((c.grid, c.threads), ((8, 32, 4), 256));
        for (hd, ctas) in [(64, 4), (128, 3), (256, 2)] {
            assert_eq!(config::sm90_ctas_per_sm(hd, true, false), ctas);
            // The carveout hint for several CTAs per SM is set with the shared-memory opt-in
            // (`Kernel::raise_smem_limit`), which only kernels past 48 KiB take.
            assert!(
                sm90_smem_bytes(hd, true, false)
                    > crate::device::kernel::DEFAULT_MAX_DYNAMIC_SMEM as usize
            );
        }
        let c = hopper_launch_config(256, (true, false), 1000, 32, 4, 0);
        assert_eq!((c.grid, c.threads), ((16, 32, 4), 128));
        for hd in SM90_PV8_HEAD_DIMS {
            assert_eq!(
                config::sm90_cta_k(hd, true, false),
                crate::device_config::p8_tile(hd)
            );
        }
        // Shared memory, the module docs' table: d = 96 keeps Q and K in 128-byte rows (as
        // d = 128) and V in three 32-channel blocks; the 8-bit P·V takes 128-key tiles of INT8 K
        // and Vᵀ (3 stages at d = 64, 2 at d = 128) except at d = 256 (64-key tiles, 16 KiB of K
        // and 16 KiB of Vᵀ per stage, 2 stages).
        for (hd, pv8, smem) in [
            (64, false, 1024 + 16384 + 8 * 12288 + 128),
            (96, false, 1024 + 24576 + 8 * (8192 + 12288) + 128),
            (128, false, 1024 + 16384 + 4 * 49152 + 64),
            (256, false, 1024 + 32768 + 4 * 49152 + 64),
            (64, true, 1024 + 4096 + 3 * 16384 + 48),
            (128, true, 1024 + 8192 + 2 * 32768 + 32),
            (256, true, 1024 + 16384 + 2 * 32768 + 32),
        ] {
            assert_eq!(sm90_smem_bytes(hd, pv8, false), smem, "d={hd} pv8={pv8}");
        }
        // Every variant: `sm90_ctas_per_sm` CTAs fit an SM's 228 KiB of shared memory (1 KiB of it
        // reserved per CTA; one CTA: the 227 KiB per-block opt-in limit, d = 128 f16: 217 KiB)
        // and its 64K registers at ptxas' cap, which leaves at least 128 registers per thread.
        let variants = SM90_HEAD_DIMS
            .map(|hd| (hd, false, false))
            .into_iter()
            .chain(SM90_PV8_HEAD_DIMS.map(|hd| (hd, true, false)))
            .chain([64, 96, 128].map(|hd| (hd, false, true)));
        for (hd, pv8, narrow) in variants {
            let case = format!("d={hd} pv8={pv8} narrow={narrow}");
            let ctas = config::sm90_ctas_per_sm(hd, pv8, narrow);
            assert!(
                ctas * (sm90_smem_bytes(hd, pv8, narrow) + 1024) <= 228 * 1024,
                "{case}"
            );
            assert!(sm90_smem_bytes(hd, pv8, narrow) <= 227 * 1024, "{case}");
            let cap = 65536 / (ctas * sm90_threads(hd, pv8, narrow));
            assert!(cap >= 128, "{case}: {cap} registers");
            assert!(
                hopper_attention_kernel_name(hd, true, pv8, narrow).is_some(),
                "{case}"
            );
        }
        // The narrow f16 kernels (the module docs' table): one warpgroup, 4 / 3 / 2 CTAs per SM,
        // for causal calls up to `narrow_max_len` only.
        for (hd, ctas, smem) in [
            (64, 4, 1024 + 4096 + 4 * 12288 + 64),
            (96, 3, 1024 + 8192 + 3 * 20480 + 48),
            (128, 2, 1024 + 8192 + 4 * 24576 + 64),
        ] {
            assert_eq!(config::sm90_ctas_per_sm(hd, false, true), ctas);
            assert_eq!(sm90_smem_bytes(hd, false, true), smem);
            let c = hopper_launch_config(hd, (false, true), 1000, 32, 4, 0);
            assert_eq!((c.grid, c.threads), ((16, 32, 4), 128));
            assert!(hopper_attention_kernel_name(hd, false, false, true).is_none());
            assert!(narrow_pays(hd, false, true, 1024, 1024));
            assert!(!narrow_pays(hd, false, true, 1024, narrow_max_len(hd) + 1));
            assert!(!narrow_pays(hd, false, true, narrow_max_len(hd) + 1, 1024));
            assert!(!narrow_pays(hd, false, false, 1024, 1024));
            assert!(!narrow_pays(hd, true, true, 1024, 1024));
        }
        assert!(!narrow_pays(256, false, true, 1024, 1024));
    }
}
