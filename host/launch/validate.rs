//! Everything checked before anything is launched: the pure checks of shapes, dtypes, strides and
//! options ([`check_problem`], testable without a GPU), then the driver-level ones (device, memory
//! kind) and the output's (shape, dtype, no overlap with the inputs).

use cudarc::driver::CudaSlice;

use crate::device::runtime::Runtime;
use crate::device::tensor::{TensorView, TensorViewMut};
use crate::device_config::{is_supported_head_dim, SUPPORTED_HEAD_DIMS};
use crate::types::dtype::DType;
use crate::types::error::{Error, Result};
use crate::types::options::Options;

/// The checked geometry of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Problem {
    pub(crate) batch: usize,
    pub(crate) q_heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) qo_len: usize,
    pub(crate) kv_len: usize,
    pub(crate) head_dim: usize,
    pub(crate) in_dtype: DType,
    pub(crate) sm_scale: f32,
}

/// Largest sequence length: the kernels index rows with 32-bit integers and pad to 128.
const MAX_SEQ: usize = (i32::MAX as usize) - 1024;
/// Largest batch and head count: CUDA's grid y/z limit.
const MAX_GRID_YZ: usize = 65_535;

/// Checks the inputs against the device: compute capability and that every view is memory of the
/// runtime's device. Then the pure checks of [`check_problem`].
pub(crate) fn validate_inputs(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    opts: &Options,
) -> Result<Problem> {
    let problem = check_problem(q, k, v, opts)?;
    check_on_device(rt, q, k, v)?;
    Ok(problem)
}

/// The driver-level half of [`validate_inputs`]: compute capability, and every view is memory
/// of the runtime's device.
pub(crate) fn check_on_device(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
) -> Result<()> {
    rt.require_sm80()?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        t.check_device_memory(name, rt)?;
    }
    Ok(())
}

/// Everything about the inputs and options that needs no driver call; returns the geometry.
pub(crate) fn check_problem(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    opts: &Options,
) -> Result<Problem> {
    // head_dim first: 0 (an empty tensor otherwise), above 256 or not a multiple of 8 is named
    // as such, with the supported set.
    for t in [q, k, v] {
        let head_dim = t.shape()[3];
        if !is_supported_head_dim(head_dim) {
            return Err(Error::UnsupportedHeadDim {
                head_dim,
                supported: &SUPPORTED_HEAD_DIMS,
            });
        }
    }
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        t.validate(name)?;
        if !matches!(t.dtype(), DType::F16 | DType::BF16) {
            return Err(Error::UnsupportedDType {
                tensor: name,
                dtype: t.dtype(),
                supported: &[DType::F16, DType::BF16],
            });
        }
    }
    for (name, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            return Err(Error::DTypeMismatch {
                tensor: name,
                expected: q.dtype(),
                got: t.dtype(),
            });
        }
    }
    let [batch, q_heads, qo_len, head_dim] = q.shape();
    let [kb, kv_heads, kv_len, kd] = k.shape();
    if kb != batch || kd != head_dim {
        return Err(Error::ShapeMismatch {
            what: format!(
                "k {:?} must have q's batch {batch} and head_dim {head_dim} (q is {:?})",
                k.shape(),
                q.shape()
            ),
        });
    }
    if v.shape() != k.shape() {
        return Err(Error::ShapeMismatch {
            what: format!("v {:?} must have k's shape {:?}", v.shape(), k.shape()),
        });
    }
    if q_heads % kv_heads != 0 {
        return Err(Error::HeadsNotDivisible { q_heads, kv_heads });
    }
    for (name, len) in [("q", qo_len), ("k", kv_len)] {
        if len > MAX_SEQ {
            return Err(Error::TooLarge {
                tensor: name,
                reason: format!("sequence length {len} exceeds {MAX_SEQ}"),
            });
        }
    }
    if batch > MAX_GRID_YZ || q_heads > MAX_GRID_YZ {
        return Err(Error::TooLarge {
            tensor: "q",
            reason: format!("batch {batch} and heads {q_heads} must each be at most {MAX_GRID_YZ}"),
        });
    }
    let sm_scale = opts.sm_scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    if !sm_scale.is_finite() || sm_scale == 0.0 {
        return Err(Error::InvalidOption(format!(
            "sm_scale must be finite and non-zero, got {sm_scale}"
        )));
    }
    Ok(Problem {
        batch,
        q_heads,
        kv_heads,
        qo_len,
        kv_len,
        head_dim,
        in_dtype: q.dtype(),
        sm_scale,
    })
}

/// Checks the output view and LSE buffer against the problem.
pub(crate) fn validate_output(
    rt: &Runtime,
    p: &Problem,
    out: &TensorViewMut,
    lse: Option<&CudaSlice<f32>>,
    inputs: &[(&'static str, &TensorView)],
) -> Result<()> {
    out.validate("out")?;
    if !matches!(out.dtype(), DType::F16 | DType::BF16) {
        return Err(Error::UnsupportedDType {
            tensor: "out",
            dtype: out.dtype(),
            supported: &[DType::F16, DType::BF16],
        });
    }
    let expected = [p.batch, p.q_heads, p.qo_len, p.head_dim];
    if out.shape() != expected {
        return Err(Error::ShapeMismatch {
            what: format!("out is {:?}, expected {expected:?}", out.shape()),
        });
    }
    out.check_device_memory("out", rt)?;
    check_no_overlap(out, inputs)?;
    if let Some(lse) = lse {
        let need = p.batch * p.q_heads * p.qo_len;
        if lse.len() < need {
            return Err(Error::ShapeMismatch {
                what: format!("lse holds {} f32, needs {need}", lse.len()),
            });
        }
        if lse.context().cu_device() != rt.context().cu_device() {
            return Err(Error::WrongDevice {
                tensor: "lse",
                expected: rt.ordinal(),
                got: lse.context().ordinal(),
            });
        }
    }
    Ok(())
}

/// Refuses an output whose bytes overlap an input's: the inputs are never modified.
pub(crate) fn check_no_overlap(
    out: &TensorViewMut,
    inputs: &[(&'static str, &TensorView)],
) -> Result<()> {
    let Some((o0, o1)) = out.byte_range() else {
        return Ok(());
    };
    for &(name, t) in inputs {
        if let Some((i0, i1)) = t.byte_range() {
            if o0 < i1 && i0 < o1 {
                return Err(Error::InvalidOption(format!(
                    "the output (bytes {o0:#x}..{o1:#x}) overlaps input `{name}` ({i0:#x}..{i1:#x}); \
                     inputs are never overwritten"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::dtype::Layout;

    /// A raw view at a fake, aligned address: the pure checks never dereference it.
    fn view(dtype: DType, shape: [usize; 4], layout: Layout, base: u64) -> TensorView<'static> {
        // SAFETY: only `check_problem` sees these views; it reads the geometry, never the memory.
        unsafe { TensorView::from_raw(base, dtype, shape, layout.contiguous_strides(shape), 0) }
    }

    fn qkv(dq: DType, dk: DType, dv: DType, q: [usize; 4], kv: [usize; 4]) -> Result<Problem> {
        let (qv, kv_, vv) = (
            view(dq, q, Layout::Hnd, 1 << 20),
            view(dk, kv, Layout::Nhd, 1 << 32),
            view(dv, kv, Layout::Hnd, 1 << 40),
        );
        check_problem(&qv, &kv_, &vv, &Options::default())
    }

    #[test]
    fn accepts_gqa_and_unequal_lengths() {
        let p = qkv(
            DType::BF16,
            DType::BF16,
            DType::BF16,
            [2, 8, 100, 128],
            [2, 2, 333, 128],
        )
        .unwrap();
        assert_eq!(
            (p.q_heads, p.kv_heads, p.qo_len, p.kv_len),
            (8, 2, 100, 333)
        );
        assert!((p.sm_scale - 1.0 / 128f32.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn rejects_each_misuse_with_its_error() {
        let f16 = DType::F16;
        let e = qkv(f16, DType::BF16, f16, [1, 2, 64, 64], [1, 2, 64, 64]).unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { tensor: "k", .. }), "{e}");
        let e = qkv(
            DType::F32,
            DType::F32,
            DType::F32,
            [1, 2, 64, 64],
            [1, 2, 64, 64],
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedDType { tensor: "q", .. }),
            "{e}"
        );
        for bad in [0, 4, 36, 100, 264, 512] {
            let e = qkv(f16, f16, f16, [1, 2, 64, bad], [1, 2, 64, bad]).unwrap_err();
            assert!(
                matches!(e, Error::UnsupportedHeadDim { head_dim, supported }
                    if head_dim == bad && supported == SUPPORTED_HEAD_DIMS),
                "{e}"
            );
            assert!(
                e.to_string().contains("every multiple of 8 from 8 to 256"),
                "{e}"
            );
        }
        for good in [8, 32, 40, 80, 160, 200, 248, 256] {
            let p = qkv(f16, f16, f16, [1, 2, 64, good], [1, 1, 64, good]).unwrap();
            assert_eq!(p.head_dim, good);
            assert!((p.sm_scale - 1.0 / (good as f32).sqrt()).abs() < 1e-9);
        }
        let e = qkv(f16, f16, f16, [1, 3, 64, 64], [1, 2, 64, 64]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::HeadsNotDivisible {
                    q_heads: 3,
                    kv_heads: 2
                }
            ),
            "{e}"
        );
        let e = qkv(f16, f16, f16, [2, 2, 64, 64], [1, 2, 64, 64]).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        let e = qkv(f16, f16, f16, [1, 2, 0, 64], [1, 2, 64, 64]).unwrap_err();
        assert!(matches!(e, Error::EmptyTensor { tensor: "q", .. }), "{e}");
        let e = qkv(f16, f16, f16, [1, 70_000, 4, 64], [1, 70_000, 4, 64]).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        // v shaped differently from k
        let (q, k, v) = (
            view(f16, [1, 2, 64, 64], Layout::Hnd, 1 << 20),
            view(f16, [1, 2, 64, 64], Layout::Hnd, 1 << 32),
            view(f16, [1, 2, 65, 64], Layout::Hnd, 1 << 40),
        );
        let e = check_problem(&q, &k, &v, &Options::default()).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        // misaligned base pointer
        let q = view(f16, [1, 2, 64, 64], Layout::Hnd, (1 << 20) + 2);
        let e = check_problem(&q, &k, &k, &Options::default()).unwrap_err();
        assert!(matches!(e, Error::Misaligned { tensor: "q", .. }), "{e}");
        // bad options
        let q = view(f16, [1, 2, 64, 64], Layout::Hnd, 1 << 20);
        for bad in [f32::NAN, f32::INFINITY, 0.0] {
            let e = check_problem(
                &q,
                &k,
                &k,
                &Options {
                    sm_scale: Some(bad),
                    ..Options::default()
                },
            )
            .unwrap_err();
            assert!(matches!(e, Error::InvalidOption(_)), "{e}");
        }
    }
}
