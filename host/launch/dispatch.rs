//! Which attention kernel runs: the one place that decides (the launch, the CLI and the tests
//! ask [`selected_kernel`]). The portable kernel's variants are stamped from the same list as the
//! device crate's entries (`for_each_attention_variant!`), so names cannot drift.

use crate::device::runtime::{ModuleKind, Runtime, CTA_RESERVED_SMEM};
use crate::device_config::{
    attn_smem_bytes, has_compact_variant, has_f16_accum_variant, is_supported_head_dim,
    portable_kernel_head_dim, PV8_KERNEL_HEAD_DIMS, SUPPORTED_HEAD_DIMS,
};
use crate::launch::hopper;
use crate::launch::validate::Problem;
use crate::types::error::{Error, Result};
use crate::types::options::{Backend, Options, PvAccum, PvPrecision};

/// The attention kernel a call runs (see [`selected_kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectedKernel {
    /// The module holding it.
    pub module: ModuleKind,
    /// Its entry name.
    pub name: &'static str,
    /// Whether P·V accumulates in f32 (always on the Hopper kernel).
    pub pv_f32: bool,
    /// Whether P·V is 8-bit ([`PvPrecision::Int8`]: V is quantized to an INT8 Vᵀ; or
    /// [`PvPrecision::Fp8`]: an e4m3 Vᵀ of the same layout).
    pub pv8: bool,
    /// Whether the 8-bit P·V is e4m3 ([`PvPrecision::Fp8`]): its V is prepared by the FP8 module
    /// ([`ModuleKind::AdaFp8`]), whichever module runs the attention kernel (that one, or on
    /// Hopper the sm_90a wgmma kernel).
    pub fp8: bool,
    /// Whether it applies the causal mask.
    pub causal: bool,
    /// Whether it is the portable kernel's compact variant (32-key tiles, two CTAs on an SM of
    /// 100 KiB: `dispatch::compact_pays`).
    pub compact: bool,
    /// The head_dim it is compiled for: the problem's, or larger when the problem is zero-padded
    /// to run on it (the next compiled size up: d = 80 on the portable or the wgmma d = 96
    /// kernel, d = 96 with the 8-bit P·V on the d = 128 wgmma kernel, d = 160 on d = 256).
    pub head_dim: usize,
}

impl SelectedKernel {
    /// Whether the kernel can quantize the caller's Q itself (the sm_90a kernels, bit for bit as
    /// the preparation: `kernels-gpu/src/hopper/q_tile.rs`). `sageattn` then leaves Q out of the
    /// preparation; a [`Prepared`](crate::Prepared) still quantizes it (it keeps no Q).
    pub fn quantizes_q(&self) -> bool {
        self.module == ModuleKind::Hopper
    }

    /// The entry a launch over `qo_len` queries and `kv_len` keys runs, and whether it is the
    /// narrow sm_90a variant: `name`, except for the causal f16 sm_90a kernels where
    /// [`hopper::narrow_pays`] (one-warpgroup CTAs for short sequences).
    pub fn entry(&self, qo_len: usize, kv_len: usize) -> (&'static str, bool) {
        let narrow = self.module == ModuleKind::Hopper
            && hopper::narrow_pays(self.head_dim, self.pv8, self.causal, qo_len, kv_len);
        narrow
            .then(|| {
                hopper::hopper_attention_kernel_name(self.head_dim, self.causal, self.pv8, true)
            })
            .flatten()
            .map_or((self.name, false), |n| (n, true))
    }
}

/// The kernel `sageattn` runs for `head_dim` and `opts` on this runtime's device: on Hopper with
/// [`Backend::Auto`] the sm_90a wgmma kernel of the smallest compiled head_dim ≥ `head_dim`
/// (64, 96, 128 or 256, the 8-bit P·V 64, 128 or 256; zero-padded when larger: a third more
/// arithmetic for the 8-bit P·V at d = 96, still faster than the portable kernel), else the
/// portable variant of the smallest
/// compiled head_dim ≥ `head_dim` (64, 96, 128 or 256) — for
/// [`PvPrecision::Int8`] the portable 8-bit P·V kernel ([`portable_pv8_kernel`]: 64, 96, 128 or
/// 256, any sm_80+ device). `None` for an unsupported head_dim, or for [`PvPrecision::Int8`] with a
/// head_dim no 8-bit kernel takes (`select` says why). The one place that decides; launches and
/// tools call it.
pub fn selected_kernel(rt: &Runtime, head_dim: usize, opts: &Options) -> Option<SelectedKernel> {
    let portable_dim = portable_kernel_head_dim(head_dim)?;
    if opts.pv_precision == PvPrecision::Fp8 {
        if rt.compute_capability() < FP8_MIN_CC {
            return None;
        }
        if opts.backend == Backend::Auto && hopper::hopper_available(rt) {
            if let Some(k) = hopper_fp8_kernel(head_dim, opts.causal) {
                return Some(k);
            }
        }
        return fp8_kernel(head_dim, opts.causal, opts.pv_accum == PvAccum::F16);
    }
    let pv8 = opts.pv_precision == PvPrecision::Int8;
    if opts.backend == Backend::Auto && hopper::hopper_available(rt) {
        if let Some(kernel_dim) = hopper_kernel_head_dim(head_dim, pv8) {
            if let Some(name) =
                hopper::hopper_attention_kernel_name(kernel_dim, opts.causal, pv8, false)
            {
                return Some(SelectedKernel {
                    module: ModuleKind::Hopper,
                    name,
                    pv_f32: true,
                    pv8,
                    fp8: false,
                    causal: opts.causal,
                    compact: false,
                    head_dim: kernel_dim,
                });
            }
        }
    }
    if pv8 {
        return portable_pv8_kernel(head_dim, opts.causal);
    }
    // On Hopper the f16 accumulator is no faster than f32 for mma.sync (measured: 314 vs 341
    // TOPS at d = 96, H200), so Auto takes the f32 variant there: faster and more accurate.
    // d = 256 has only the f32 variant (config::has_f16_accum_variant).
    let f32_is_free = opts.backend == Backend::Auto && rt.compute_capability() == (9, 0);
    let pv_f32 =
        opts.pv_accum == PvAccum::F32 || f32_is_free || !has_f16_accum_variant(portable_dim);
    let compact = rt.compact_allowed() && compact_pays(portable_dim, pv_f32, rt.smem_per_sm());
    let name = attention_kernel_name(portable_dim, opts.causal, pv_f32, compact)?;
    Some(SelectedKernel {
        module: ModuleKind::Portable,
        name,
        pv_f32,
        pv8: false,
        fp8: false,
        causal: opts.causal,
        compact,
        head_dim: portable_dim,
    })
}

/// The sm_90a kernel size `head_dim` runs on: the smallest of `SM90_HEAD_DIMS` (8-bit P·V:
/// `SM90_PV8_HEAD_DIMS`) at least as large. With the 8-bit P·V only head_dims that are multiples
/// of 16 qualify: its V-statistics job (the `V8_STATS` job of `sage_prepare`) runs
/// `2 · head_dim` threads, which must be whole warps.
fn hopper_kernel_head_dim(head_dim: usize, pv8: bool) -> Option<usize> {
    if pv8 && !head_dim.is_multiple_of(16) {
        return None;
    }
    let sizes: &[usize] = if pv8 {
        &hopper::SM90_PV8_HEAD_DIMS
    } else {
        &hopper::SM90_HEAD_DIMS
    };
    sizes.iter().copied().filter(|&k| k >= head_dim).min()
}

/// The portable 8-bit P·V kernel (`kernels-gpu/src/attention_pv8/`: mma.sync u8·s8, sm_80+) for
/// `head_dim` and the mask: what [`PvPrecision::Int8`] runs with [`Backend::Portable`], and with
/// [`Backend::Auto`] on any device but Hopper. Compiled for head_dim 64, 96, 128 and 256 (Q, K
/// and Vᵀ that wide: d = 96 is not padded); another head_dim runs zero-padded on the smallest of
/// them at least as large, if it is a multiple of 16 (the V statistics run `2 · head_dim` threads
/// in whole warps, as for the sm_90a kernel). Its P·V accumulates exactly per key tile
/// (`config::p8_tile`: 128 keys, 64 at d = 256), then in f32.
pub fn portable_pv8_kernel(head_dim: usize, causal: bool) -> Option<SelectedKernel> {
    if !is_supported_head_dim(head_dim) || !head_dim.is_multiple_of(16) {
        return None;
    }
    let kernel_dim = PV8_KERNEL_HEAD_DIMS
        .iter()
        .copied()
        .filter(|&k| k >= head_dim)
        .min()?;
    Some(SelectedKernel {
        module: ModuleKind::Portable,
        name: pv8_attention_kernel_name(kernel_dim, causal)?,
        pv_f32: true,
        pv8: true,
        fp8: false,
        causal,
        compact: false,
        head_dim: kernel_dim,
    })
}

/// The oldest compute capability with e4m3 `mma.sync` (Ada).
pub const FP8_MIN_CC: (i32, i32) = (8, 9);

/// The FP8 P·V kernel (`kernels-gpu/src/attention_pv8/` with e4m3 P and Vᵀ, the sm_89 module) for
/// `head_dim`, the mask and the accumulator of each tile's product: what [`PvPrecision::Fp8`]
/// runs on a device of compute capability [`FP8_MIN_CC`] or newer, with either [`Backend`]. The
/// same head_dims and zero-padding as [`portable_pv8_kernel`] (the same kernel, CTA and V layout).
pub fn fp8_kernel(head_dim: usize, causal: bool, f16_accum: bool) -> Option<SelectedKernel> {
    let int8 = portable_pv8_kernel(head_dim, causal)?;
    Some(SelectedKernel {
        module: ModuleKind::AdaFp8,
        name: fp8_attention_kernel_name(int8.head_dim, causal, f16_accum)?,
        pv_f32: !f16_accum,
        fp8: true,
        ..int8
    })
}

/// The sm_90a FP8 P·V kernel (the 8-bit wgmma kernel with e4m3 P and Vᵀ, `wgmma
/// m64nNk32.f32.e4m3.e4m3`) for `head_dim` and the mask: what [`PvPrecision::Fp8`] runs on Hopper
/// with [`Backend::Auto`]. The 8-bit sm_90a kernels' sizes and padding; each tile's product
/// accumulates in f32 whichever [`PvAccum`] (an f16 accumulator is no faster on Hopper), i.e. the
/// sm_89 kernel's `PvAccum::F32` arithmetic. Its V comes from the FP8 module's preparation.
pub fn hopper_fp8_kernel(head_dim: usize, causal: bool) -> Option<SelectedKernel> {
    let kernel_dim = hopper_kernel_head_dim(head_dim, true)?;
    Some(SelectedKernel {
        module: ModuleKind::Hopper,
        name: hopper::hopper_fp8_kernel_name(kernel_dim, causal)?,
        pv_f32: true,
        pv8: true,
        fp8: true,
        causal,
        compact: false,
        head_dim: kernel_dim,
    })
}

/// The FP8 P·V entry compiled for this head_dim, mask and accumulator (stamped from
/// `for_each_fp8_attention_variant!`, as the device crate's entries).
pub fn fp8_attention_kernel_name(
    head_dim: usize,
    causal: bool,
    f16_accum: bool,
) -> Option<&'static str> {
    macro_rules! find {
        ($name:literal, $hd:literal, $causal:literal, $f16acc:literal) => {
            if head_dim == $hd && causal == $causal && f16_accum == $f16acc {
                return Some($name);
            }
        };
    }
    crate::for_each_fp8_attention_variant!(find);
    None
}

/// Every entry of the FP8 module's attention kernels, for resource checks.
pub fn fp8_attention_kernel_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! push {
        ($name:literal, $hd:literal, $causal:literal, $f16acc:literal) => {
            v.push($name);
        };
    }
    crate::for_each_fp8_attention_variant!(push);
    v
}

/// The portable 8-bit P·V entry compiled for this head_dim and mask (stamped from
/// `for_each_pv8_attention_variant!`, as the device crate's entries).
pub fn pv8_attention_kernel_name(head_dim: usize, causal: bool) -> Option<&'static str> {
    macro_rules! find {
        ($name:literal, $hd:literal, $causal:literal) => {
            if head_dim == $hd && causal == $causal {
                return Some($name);
            }
        };
    }
    crate::for_each_pv8_attention_variant!(find);
    None
}

/// Whether the portable f16 kernel for `head_dim` (a compiled size) and accumulator runs its
/// compact variant on SMs of `smem_per_sm` bytes of shared memory: when it has one
/// (`config::has_compact_variant`) and two CTAs of the 64-key variant do not fit (100 KiB SMs:
/// sm_86, sm_89), so that two of the compact one do. On A100 (164 KiB) and Hopper (228 KiB) two
/// or more CTAs of the 64-key variant fit, and it keeps the tiles it was measured with.
pub fn compact_pays(head_dim: usize, pv_f32: bool, smem_per_sm: u32) -> bool {
    let wide_cta = attn_smem_bytes(head_dim, pv_f32, false) as u32 + CTA_RESERVED_SMEM;
    has_compact_variant(head_dim, pv_f32) && 2 * wide_cta > smem_per_sm
}

/// The entry point compiled for this variant (the device crate stamps them from the same list).
pub fn attention_kernel_name(
    head_dim: usize,
    causal: bool,
    pv_f32: bool,
    compact: bool,
) -> Option<&'static str> {
    macro_rules! find {
        ($name:literal, $hd:literal, $causal:literal, $pv_f32:literal, $compact:literal) => {
            if head_dim == $hd && causal == $causal && pv_f32 == $pv_f32 && compact == $compact {
                return Some($name);
            }
        };
    }
    crate::for_each_attention_variant!(find);
    None
}

/// Every attention entry point of the portable module (f16 and 8-bit P·V), for resource checks.
pub fn attention_kernel_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! push {
        ($name:literal, $hd:literal, $causal:literal, $pv_f32:literal, $compact:literal) => {
            v.push($name);
        };
    }
    crate::for_each_attention_variant!(push);
    macro_rules! push_pv8 {
        ($name:literal, $hd:literal, $causal:literal) => {
            v.push($name);
        };
    }
    crate::for_each_pv8_attention_variant!(push_pv8);
    v
}

/// The kernel for this problem, or the typed error when none exists.
pub(crate) fn select(rt: &Runtime, p: &Problem, opts: &Options) -> Result<SelectedKernel> {
    if !is_supported_head_dim(p.head_dim) {
        return Err(Error::UnsupportedHeadDim {
            head_dim: p.head_dim,
            supported: &SUPPORTED_HEAD_DIMS,
        });
    }
    // Every supported head_dim has an f16 P·V kernel; the 8-bit P·V exists for multiples of 16
    // (up to 256, on both 8-bit kernels).
    selected_kernel(rt, p.head_dim, opts).ok_or_else(|| Error::PvPrecisionUnavailable {
        precision: opts.pv_precision.name(),
        reason: match (opts.pv_precision, rt.compute_capability()) {
            (PvPrecision::Fp8, cc) if cc < FP8_MIN_CC => fp8_device_reason(cc),
            _ => int8_head_dim_reason(p.head_dim),
        },
    })
}

/// Why the FP8 P·V has no kernel on a device of compute capability `cc`.
fn fp8_device_reason((major, minor): (i32, i32)) -> String {
    format!(
        "the FP8 P·V (mma.sync e4m3) needs compute capability 8.9 or newer (Ada, Hopper); the \
         device has {major}.{minor}: use PvPrecision::Int8 (same speed class, more accurate)"
    )
}

/// Why the 8-bit P·V has no kernel for `head_dim` (a supported one: both 8-bit kernels go up to
/// the largest, and need multiples of 16).
fn int8_head_dim_reason(head_dim: usize) -> String {
    let largest = PV8_KERNEL_HEAD_DIMS.iter().copied().max().unwrap_or(0);
    format!(
        "the 8-bit P·V path needs head_dim a multiple of 16 up to {largest} (its V statistics run \
         2·head_dim threads in whole warps); head_dim {head_dim} runs with PvPrecision::F16 only"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_config::KERNEL_HEAD_DIMS;

    #[test]
    fn kernel_names_cover_every_supported_variant() {
        for hd in KERNEL_HEAD_DIMS {
            for causal in [false, true] {
                for pv_f32 in [false, true] {
                    let name = attention_kernel_name(hd, causal, pv_f32, false);
                    if pv_f32 || has_f16_accum_variant(hd) {
                        assert!(name.unwrap().contains(&format!("hd{hd}_")));
                    } else {
                        assert_eq!(name, None);
                    }
                    let compact = attention_kernel_name(hd, causal, pv_f32, true);
                    assert_eq!(
                        compact.is_some(),
                        has_compact_variant(hd, pv_f32),
                        "hd{hd} {pv_f32}"
                    );
                    if let Some(c) = compact {
                        assert!(c.ends_with("_compact") && c.contains(&format!("hd{hd}_")));
                    }
                }
            }
        }
        assert_eq!(attention_kernel_name(80, false, false, false), None);
        let names = attention_kernel_names();
        assert_eq!(names.len(), 28);
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    /// Compact variants run where two 64-key CTAs do not fit an SM: on 100 KiB SMs (sm_86,
    /// sm_89) for d = 96 and d = 128 with the f16 accumulator, never on A100 or Hopper; and two
    /// compact CTAs fit there.
    #[test]
    fn compact_variants_run_on_100_kib_sms_only() {
        const KIB: u32 = 1024;
        for (hd, pv_f32, on_ada) in [
            (64, false, false),
            (64, true, false),
            (96, false, true),
            (96, true, true),
            (128, false, true),
            (128, true, false),
            (256, true, false),
        ] {
            assert_eq!(
                compact_pays(hd, pv_f32, 100 * KIB),
                on_ada,
                "hd{hd} {pv_f32}"
            );
            assert!(!compact_pays(hd, pv_f32, 164 * KIB), "hd{hd} {pv_f32}");
            assert!(!compact_pays(hd, pv_f32, 228 * KIB), "hd{hd} {pv_f32}");
            if on_ada {
                let cta = attn_smem_bytes(hd, pv_f32, true) as u32 + CTA_RESERVED_SMEM;
                assert!(2 * cta <= 100 * KIB, "hd{hd} {pv_f32}: {cta}");
            }
        }
    }

    #[test]
    fn portable_pv8_sizes_pad_to_the_next_8bit_kernel() {
        for hd in PV8_KERNEL_HEAD_DIMS {
            for causal in [false, true] {
                let k = portable_pv8_kernel(hd, causal).unwrap();
                let mask = if causal { "causal" } else { "full" };
                assert_eq!(k.name, format!("sage_attn_pv8_hd{hd}_{mask}"));
                assert_eq!(
                    (k.module, k.pv8, k.pv_f32, k.head_dim),
                    (ModuleKind::Portable, true, true, hd)
                );
            }
        }
        for d in SUPPORTED_HEAD_DIMS {
            let want = PV8_KERNEL_HEAD_DIMS
                .iter()
                .copied()
                .filter(|&k| k >= d && d.is_multiple_of(16))
                .min();
            assert_eq!(
                portable_pv8_kernel(d, false).map(|k| k.head_dim),
                want,
                "{d}"
            );
        }
        assert_eq!(portable_pv8_kernel(80, true).unwrap().head_dim, 96);
        assert_eq!(portable_pv8_kernel(32, false).unwrap().head_dim, 64);
        assert_eq!(portable_pv8_kernel(160, true).unwrap().head_dim, 256);
        assert_eq!(portable_pv8_kernel(256, false).unwrap().head_dim, 256);
        for bad in [0, 40, 100, 136, 264] {
            assert_eq!(portable_pv8_kernel(bad, false), None, "{bad}");
        }
        // Both 8-bit kernels take the same head_dims: every multiple of 16 up to 256.
        for d in SUPPORTED_HEAD_DIMS {
            assert_eq!(
                hopper_kernel_head_dim(d, true).is_some(),
                portable_pv8_kernel(d, false).is_some(),
                "{d}"
            );
        }
    }

    #[test]
    fn fp8_kernels_take_the_8bit_sizes_in_the_sm89_module() {
        for d in SUPPORTED_HEAD_DIMS {
            for causal in [false, true] {
                for f16_accum in [false, true] {
                    let int8 = portable_pv8_kernel(d, causal);
                    let fp8 = fp8_kernel(d, causal, f16_accum);
                    assert_eq!(int8.map(|k| k.head_dim), fp8.map(|k| k.head_dim), "{d}");
                    let Some(k) = fp8 else { continue };
                    let mask = if causal { "causal" } else { "full" };
                    let acc = if f16_accum { "f16acc" } else { "f32acc" };
                    assert_eq!(
                        k.name,
                        format!("sage_attn_fp8_hd{}_{mask}_{acc}", k.head_dim)
                    );
                    assert_eq!(
                        (k.module, k.pv8, k.pv_f32, k.causal),
                        (ModuleKind::AdaFp8, true, !f16_accum, causal)
                    );
                }
            }
        }
        let names = fp8_attention_kernel_names();
        assert_eq!(names.len(), 16);
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(fp8_device_reason((8, 6)).contains("8.9 or newer"));
        assert!(fp8_device_reason((8, 6)).contains("8.6"));
    }

    /// The sm_90a FP8 kernel takes the 8-bit sm_90a sizes, always f32-accumulating, and marks its
    /// V as e4m3 (the FP8 module's preparation).
    #[test]
    fn hopper_fp8_kernels_take_the_sm90_8bit_sizes() {
        for d in SUPPORTED_HEAD_DIMS {
            for causal in [false, true] {
                let k = hopper_fp8_kernel(d, causal);
                assert_eq!(
                    k.map(|k| k.head_dim),
                    hopper_kernel_head_dim(d, true),
                    "{d}"
                );
                let Some(k) = k else { continue };
                let mask = if causal { "causal" } else { "full" };
                assert_eq!(
                    k.name,
                    format!("sage_attn_sm90_hd{}_{mask}_fp8", k.head_dim)
                );
                assert_eq!(
                    (k.module, k.pv8, k.fp8, k.pv_f32, k.causal),
                    (ModuleKind::Hopper, true, true, true, causal)
                );
                assert_eq!(k.entry(64, 64), (k.name, false));
            }
        }
    }

    #[test]
    fn every_supported_head_dim_has_a_portable_kernel_at_most_one_size_up() {
        for d in SUPPORTED_HEAD_DIMS {
            let k = portable_kernel_head_dim(d).unwrap();
            assert!(k >= d && KERNEL_HEAD_DIMS.contains(&k), "{d} -> {k}");
            // No compiled size lies between d and the kernel chosen for it.
            assert!(!KERNEL_HEAD_DIMS.iter().any(|&c| c >= d && c < k), "{d}");
            assert!(attention_kernel_name(k, true, true, false).is_some());
        }
        assert_eq!(portable_kernel_head_dim(80), Some(96));
        assert_eq!(portable_kernel_head_dim(160), Some(256));
        assert_eq!(portable_kernel_head_dim(32), Some(64));
        for bad in [0, 4, 12, 100, 264, 512] {
            assert_eq!(portable_kernel_head_dim(bad), None, "{bad}");
        }
    }

    /// The entry a launch runs: the narrow sm_90a variant only for short causal f16 calls, the
    /// selected name otherwise (and always off Hopper).
    #[test]
    fn entry_takes_the_narrow_variant_for_short_causal_calls() {
        let wide = |head_dim: usize, causal: bool, pv8: bool| SelectedKernel {
            module: ModuleKind::Hopper,
            name: hopper::hopper_attention_kernel_name(head_dim, causal, pv8, false).unwrap(),
            pv_f32: true,
            pv8,
            fp8: false,
            causal,
            compact: false,
            head_dim,
        };
        for d in [64, 96, 128] {
            let k = wide(d, true, false);
            let max = hopper::narrow_max_len(d);
            let narrow = hopper::hopper_attention_kernel_name(d, true, false, true).unwrap();
            assert_eq!(k.entry(max, max), (narrow, true), "d{d}");
            assert_eq!(k.entry(max + 1, max), (k.name, false), "d{d}");
            assert_eq!(k.entry(max, max + 1), (k.name, false), "d{d}");
            let full = wide(d, false, false);
            assert_eq!(full.entry(64, 64), (full.name, false), "d{d}");
        }
        for k in [wide(256, true, false), wide(128, true, true)] {
            assert_eq!(k.entry(64, 64), (k.name, false));
        }
        let portable = SelectedKernel {
            module: ModuleKind::Portable,
            ..wide(128, true, false)
        };
        assert_eq!(portable.entry(64, 64), (portable.name, false));
    }

    #[test]
    fn hopper_sizes_pad_to_the_next_wgmma_kernel() {
        for d in SUPPORTED_HEAD_DIMS {
            let want = hopper::SM90_HEAD_DIMS
                .iter()
                .copied()
                .filter(|&k| k >= d)
                .min();
            assert_eq!(hopper_kernel_head_dim(d, false), want, "{d}");
            let want8 = hopper::SM90_PV8_HEAD_DIMS
                .iter()
                .copied()
                .filter(|&k| k >= d && d.is_multiple_of(16))
                .min();
            assert_eq!(hopper_kernel_head_dim(d, true), want8, "{d}");
        }
        // Native d = 96 (f16 P·V) for 65..=96; the 8-bit P·V stays on 64/128.
        for d in [72, 80, 88, 96] {
            assert_eq!(hopper_kernel_head_dim(d, false), Some(96), "{d}");
        }
        assert_eq!(hopper_kernel_head_dim(104, false), Some(128));
        assert_eq!(hopper_kernel_head_dim(96, true), Some(128));
        assert_eq!(hopper_kernel_head_dim(80, true), Some(128));
        assert_eq!(hopper_kernel_head_dim(40, true), None);
        assert_eq!(hopper_kernel_head_dim(144, true), Some(256));
        assert_eq!(hopper_kernel_head_dim(256, true), Some(256));
        assert_eq!(hopper_kernel_head_dim(200, true), None);
        assert!(int8_head_dim_reason(40).contains("multiple of 16 up to 256"));
        // The two 8-bit kernels cover the same sizes.
        assert_eq!(
            PV8_KERNEL_HEAD_DIMS.iter().max(),
            hopper::SM90_PV8_HEAD_DIMS.iter().max()
        );
    }
}
