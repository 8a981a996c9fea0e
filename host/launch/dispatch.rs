//! Which attention kernel runs: the one place that decides (the launch, the CLI and the tests
//! ask [`selected_kernel`]). The portable kernel's variants are stamped from the same list as the
//! device crate's entries (`for_each_attention_variant!`), so names cannot drift.

use crate::device::runtime::{ModuleKind, Runtime};
use crate::device_config::{
    has_f16_accum_variant, is_supported_head_dim, portable_kernel_head_dim, SUPPORTED_HEAD_DIMS,
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
    /// Whether P·V is 8-bit ([`PvPrecision::Int8`]: V is quantized to an INT8 Vᵀ).
    pub pv8: bool,
    /// The head_dim it is compiled for: the problem's, or larger when the problem is zero-padded
    /// to run on it (the next compiled size up: d = 80 on the portable d = 96 kernel, d = 96 on
    /// the d = 128 wgmma kernel, d = 160 on the portable d = 256 kernel).
    pub head_dim: usize,
}

/// The kernel `sageattn` runs for `head_dim` and `opts` on this runtime's device: on Hopper with
/// [`Backend::Auto`] the sm_90a wgmma kernel of the smallest compiled head_dim ≥ `head_dim`
/// (64 or 128; zero-padded when larger: a third more arithmetic at d = 96, still faster than the
/// portable kernel), else the portable variant of the smallest compiled head_dim ≥ `head_dim`
/// (64, 96, 128 or 256; on Hopper d in (128, 256] takes this path). `None` for an unsupported
/// head_dim, or for [`PvPrecision::Int8`] where only the sm_90a kernel has it and it does not
/// apply ([`select`] says why). The one place that decides; launches and tools call it.
pub fn selected_kernel(rt: &Runtime, head_dim: usize, opts: &Options) -> Option<SelectedKernel> {
    let portable_dim = portable_kernel_head_dim(head_dim)?;
    let pv8 = opts.pv_precision == PvPrecision::Int8;
    if opts.backend == Backend::Auto && hopper::hopper_available(rt) {
        if let Some(kernel_dim) = hopper_kernel_head_dim(head_dim, pv8) {
            if let Some(name) = hopper::hopper_attention_kernel_name(kernel_dim, opts.causal, pv8) {
                return Some(SelectedKernel {
                    module: ModuleKind::Hopper,
                    name,
                    pv_f32: true,
                    pv8,
                    head_dim: kernel_dim,
                });
            }
        }
    }
    if pv8 {
        return None;
    }
    // On Hopper the f16 accumulator is no faster than f32 for mma.sync (measured: 314 vs 341
    // TOPS at d = 96, H200), so Auto takes the f32 variant there: faster and more accurate.
    // d = 256 has only the f32 variant (config::has_f16_accum_variant).
    let f32_is_free = opts.backend == Backend::Auto && rt.compute_capability() == (9, 0);
    let pv_f32 =
        opts.pv_accum == PvAccum::F32 || f32_is_free || !has_f16_accum_variant(portable_dim);
    let name = attention_kernel_name(portable_dim, opts.causal, pv_f32)?;
    Some(SelectedKernel {
        module: ModuleKind::Portable,
        name,
        pv_f32,
        pv8: false,
        head_dim: portable_dim,
    })
}

/// The sm_90a kernel size `head_dim` runs on: the smallest of `SM90_HEAD_DIMS` at least as large.
/// With the 8-bit P·V only head_dims that are multiples of 16 qualify: its V-statistics job
/// (the `V8_STATS` job of `sage_prepare`) runs `2 · head_dim` threads, which must be whole warps.
fn hopper_kernel_head_dim(head_dim: usize, pv8: bool) -> Option<usize> {
    if pv8 && !head_dim.is_multiple_of(16) {
        return None;
    }
    hopper::SM90_HEAD_DIMS
        .iter()
        .copied()
        .filter(|&k| k >= head_dim)
        .min()
}

/// The entry point compiled for this variant (the device crate stamps them from the same list).
pub fn attention_kernel_name(head_dim: usize, causal: bool, pv_f32: bool) -> Option<&'static str> {
    macro_rules! find {
        ($name:literal, $hd:literal, $causal:literal, $pv_f32:literal) => {
            if head_dim == $hd && causal == $causal && pv_f32 == $pv_f32 {
                return Some($name);
            }
        };
    }
    crate::for_each_attention_variant!(find);
    None
}

/// Every attention entry point, for resource checks.
pub fn attention_kernel_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! push {
        ($name:literal, $hd:literal, $causal:literal, $pv_f32:literal) => {
            v.push($name);
        };
    }
    crate::for_each_attention_variant!(push);
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
    selected_kernel(rt, p.head_dim, opts).ok_or_else(|| {
        let (major, minor) = rt.compute_capability();
        Error::PvPrecisionUnavailable {
            precision: "Int8",
            reason: if opts.backend != Backend::Auto {
                "the 8-bit P·V kernel needs Backend::Auto".into()
            } else if !hopper::hopper_available(rt) {
                format!(
                    "the 8-bit P·V kernel needs compute capability 9.0 (sm_90a); this device is \
                     {major}.{minor}"
                )
            } else {
                int8_head_dim_reason(p.head_dim)
            },
        }
    })
}

/// Why the 8-bit P·V has no kernel for `head_dim` on a device that has the sm_90a kernels.
fn int8_head_dim_reason(head_dim: usize) -> String {
    let largest = hopper::SM90_HEAD_DIMS.iter().copied().max().unwrap_or(0);
    if head_dim > largest {
        format!(
            "the 8-bit P·V kernel exists for head_dim up to {largest}; head_dim {head_dim} runs \
             with PvPrecision::F16 only"
        )
    } else {
        format!(
            "the 8-bit P·V path needs head_dim a multiple of 16 (its V statistics run 2·head_dim \
             threads in whole warps); head_dim {head_dim} runs with PvPrecision::F16 only"
        )
    }
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
                    let name = attention_kernel_name(hd, causal, pv_f32);
                    if pv_f32 || has_f16_accum_variant(hd) {
                        assert!(name.unwrap().contains(&format!("hd{hd}_")));
                    } else {
                        assert_eq!(name, None);
                    }
                }
            }
        }
        assert_eq!(attention_kernel_name(80, false, false), None);
        assert_eq!(attention_kernel_names().len(), 14);
    }

    #[test]
    fn every_supported_head_dim_has_a_portable_kernel_at_most_one_size_up() {
        for d in SUPPORTED_HEAD_DIMS {
            let k = portable_kernel_head_dim(d).unwrap();
            assert!(k >= d && KERNEL_HEAD_DIMS.contains(&k), "{d} -> {k}");
            // No compiled size lies between d and the kernel chosen for it.
            assert!(!KERNEL_HEAD_DIMS.iter().any(|&c| c >= d && c < k), "{d}");
            assert!(attention_kernel_name(k, true, true).is_some());
        }
        assert_eq!(portable_kernel_head_dim(80), Some(96));
        assert_eq!(portable_kernel_head_dim(160), Some(256));
        assert_eq!(portable_kernel_head_dim(32), Some(64));
        for bad in [0, 4, 12, 100, 264, 512] {
            assert_eq!(portable_kernel_head_dim(bad), None, "{bad}");
        }
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
            let want8 = want.filter(|_| d.is_multiple_of(16));
            assert_eq!(hopper_kernel_head_dim(d, true), want8, "{d}");
        }
        assert_eq!(hopper_kernel_head_dim(40, true), None);
        assert!(int8_head_dim_reason(264).contains("up to"));
        assert!(int8_head_dim_reason(40).contains("multiple of 16"));
    }
}
