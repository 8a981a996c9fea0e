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
/// arithmetic, still faster than the portable kernel), else the portable variant. `None` for an
/// unsupported head_dim, or for [`PvPrecision::Int8`] where only the sm_90a kernel has it and it
/// does not apply. The one place that decides; launches and tools call it.
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
        return None;
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
    if !SUPPORTED_HEAD_DIMS.contains(&p.head_dim) {
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
            } else {
                format!(
                    "the 8-bit P·V kernel needs compute capability 9.0 (sm_90a); this device is \
                     {major}.{minor}"
                )
            },
        }
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
        assert_eq!(attention_kernel_names().len(), 12);
    }
}
