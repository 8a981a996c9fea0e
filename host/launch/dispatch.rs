//! Which attention kernel runs: the one place that decides (the launch, the CLI and the tests
//! ask [`selected_kernel`]). The portable kernel's variants are stamped from the same list as the
//! device crate's entries (`for_each_attention_variant!`), so names cannot drift.

use crate::device::runtime::{ModuleKind, Runtime};
use crate::device_config::SUPPORTED_HEAD_DIMS;
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
    /// to run on it (d = 96 on the d = 128 wgmma kernel).
    pub head_dim: usize,
}

/// The kernel `sageattn` runs for `head_dim` and `opts` on this runtime's device: on Hopper with
/// [`Backend::Auto`] the sm_90a wgmma kernel (d = 96 zero-padded to the d = 128 one: a third more
/// arithmetic, still faster than the portable kernel), else the portable variant — for
/// [`PvPrecision::Int8`] the portable 8-bit P·V kernel ([`portable_pv8_kernel`], any sm_80+
/// device). `None` for an unsupported head_dim. The one place that decides; launches and tools
/// call it.
pub fn selected_kernel(rt: &Runtime, head_dim: usize, opts: &Options) -> Option<SelectedKernel> {
    if !SUPPORTED_HEAD_DIMS.contains(&head_dim) {
        return None;
    }
    let pv8 = opts.pv_precision == PvPrecision::Int8;
    if opts.backend == Backend::Auto && hopper::hopper_available(rt) {
        let kernel_dim = if head_dim == 96 { 128 } else { head_dim };
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
    if pv8 {
        return portable_pv8_kernel(head_dim, opts.causal);
    }
    // On Hopper the f16 accumulator is no faster than f32 for mma.sync (measured: 314 vs 341
    // TOPS at d = 96, H200), so Auto takes the f32 variant there: faster and more accurate.
    let f32_is_free = opts.backend == Backend::Auto && rt.compute_capability() == (9, 0);
    let pv_f32 = opts.pv_accum == PvAccum::F32 || f32_is_free;
    let name = attention_kernel_name(head_dim, opts.causal, pv_f32)?;
    Some(SelectedKernel {
        module: ModuleKind::Portable,
        name,
        pv_f32,
        pv8: false,
        head_dim,
    })
}

/// The portable 8-bit P·V kernel (`kernels-gpu/src/attention_pv8/`: mma.sync u8·s8, sm_80+) for
/// this head_dim and mask: what [`PvPrecision::Int8`] runs with [`Backend::Portable`], and with
/// [`Backend::Auto`] on any device but Hopper. Its P·V accumulates exactly per 128-key tile, then
/// in f32 (`pv_f32`); its Q, K and Vᵀ are `head_dim` wide (no padding, d = 96 included).
pub fn portable_pv8_kernel(head_dim: usize, causal: bool) -> Option<SelectedKernel> {
    Some(SelectedKernel {
        module: ModuleKind::Portable,
        name: pv8_attention_kernel_name(head_dim, causal)?,
        pv_f32: true,
        pv8: true,
        head_dim,
    })
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

/// Every attention entry point of the portable module (f16 and 8-bit P·V), for resource checks.
pub fn attention_kernel_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! push {
        ($name:literal, $hd:literal, $causal:literal, $pv_f32:literal) => {
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
    if !SUPPORTED_HEAD_DIMS.contains(&p.head_dim) {
        return Err(Error::UnsupportedHeadDim {
            head_dim: p.head_dim,
            supported: &SUPPORTED_HEAD_DIMS,
        });
    }
    // Every supported head_dim has a kernel for both P·V precisions (the portable ones run on any
    // sm_80+ device); this is a guard against a variant list missing one.
    selected_kernel(rt, p.head_dim, opts).ok_or_else(|| Error::PvPrecisionUnavailable {
        precision: match opts.pv_precision {
            PvPrecision::F16 => "F16",
            PvPrecision::Int8 => "Int8",
        },
        reason: format!(
            "no compiled kernel for head_dim {} (causal: {})",
            p.head_dim, opts.causal
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_cover_every_supported_variant() {
        for hd in SUPPORTED_HEAD_DIMS {
            for causal in [false, true] {
                for pv_f32 in [false, true] {
                    let name = attention_kernel_name(hd, causal, pv_f32).unwrap();
                    assert!(name.contains(&format!("hd{hd}_")));
                }
            }
        }
        assert_eq!(attention_kernel_name(80, false, false), None);
        for hd in SUPPORTED_HEAD_DIMS {
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
        assert_eq!(portable_pv8_kernel(80, false), None);
        let names = attention_kernel_names();
        assert_eq!(names.len(), 18);
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
