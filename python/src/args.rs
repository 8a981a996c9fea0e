//! Arguments as the Python front passes them, checked and turned into the library's types.
//!
//! A tensor crosses as `(data_ptr, dtype, shape, strides, device_index)`: torch's own numbers
//! (`t.data_ptr()`, `str(t.dtype)`, `t.shape`, `t.stride()`, `t.device.index`, or -1 for a tensor
//! that is not on a CUDA device), nothing copied. Shapes and strides arrive in the tensor's memory
//! order (`tensor_layout`) and leave in the library's logical order `[batch, heads, seq, head_dim]`.
//! Packed (variable-length) tensors `[total, heads, head_dim]` leave as the library's packed view
//! `[1, heads, total, head_dim]`.

use pyo3::FromPyObject;
use sageattention::{Backend, DType, Layout, Options, PvAccum, PvPrecision};

use crate::errors::Failure;

/// `(data_ptr, dtype, shape, strides, device_index)` of one tensor.
pub(crate) type TensorArg = (u64, String, Vec<i64>, Vec<i64>, i64);

/// One tensor, in the library's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    pub ptr: u64,
    pub dtype: DType,
    /// Logical `[batch, heads, seq, head_dim]`.
    pub shape: [usize; 4],
    /// Elements, logical order.
    pub strides: [i64; 4],
    pub ordinal: usize,
}

/// `"HND"` or `"NHD"` (the official spelling; lower case accepted).
pub(crate) fn layout(s: &str) -> Result<Layout, Failure> {
    match s {
        "HND" | "hnd" => Ok(Layout::Hnd),
        "NHD" | "nhd" => Ok(Layout::Nhd),
        _ => Err(Failure::Value(format!(
            "tensor_layout must be \"HND\" or \"NHD\", got {s:?}"
        ))),
    }
}

/// `pv_accum`: `"f16"` (default, SageAttention's FP16 accumulator per key tile) or `"f32"`.
pub(crate) fn pv_accum(s: &str) -> Result<PvAccum, Failure> {
    match s {
        "f16" | "fp16" | "float16" => Ok(PvAccum::F16),
        "f32" | "fp32" | "float32" => Ok(PvAccum::F32),
        _ => Err(Failure::Value(format!(
            "pv_accum must be \"f16\" or \"f32\", got {s:?}"
        ))),
    }
}

/// `pv_precision`: `"f16"` (default, P and V in f16), `"int8"` (the library's 8-bit P·V: u8 P ×
/// s8 V on the INT8 tensor cores, SageAttention2's class of speed; any sm_80+ GPU) or `"fp8"`
/// (e4m3 P × e4m3 V, compute capability 8.9+, less accurate than `"int8"`).
pub(crate) fn pv_precision(s: &str) -> Result<PvPrecision, Failure> {
    match s {
        "f16" | "fp16" | "float16" => Ok(PvPrecision::F16),
        "int8" | "i8" => Ok(PvPrecision::Int8),
        "fp8" | "e4m3" => Ok(PvPrecision::Fp8),
        _ => Err(Failure::Value(format!(
            "pv_precision must be \"f16\", \"int8\" (8-bit P·V: u8 P × s8 V) or \"fp8\" (e4m3 P × \
             e4m3 V), got {s:?}"
        ))),
    }
}

/// `backend`: `"auto"` (fastest kernel for the device) or `"portable"` (the mma.sync kernel).
pub(crate) fn backend(s: &str) -> Result<Backend, Failure> {
    match s {
        "auto" => Ok(Backend::Auto),
        "portable" => Ok(Backend::Portable),
        _ => Err(Failure::Value(format!(
            "backend must be \"auto\" or \"portable\", got {s:?}"
        ))),
    }
}

/// The options of one call, passed as keyword arguments (our own options are strings, parsed
/// here so that the accepted values are listed once).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub(crate) struct CallOptions {
    pub tensor_layout: String,
    pub is_causal: bool,
    pub sm_scale: Option<f64>,
    pub smooth_k: bool,
    pub pv_accum: String,
    pub pv_precision: String,
    pub backend: String,
    /// torch's current stream on the device (`torch.cuda.current_stream(device).cuda_stream`).
    pub stream: u64,
}

/// The library's options for `o`, whose `tensor_layout` parsed as `layout`.
pub(crate) fn options(o: &CallOptions, layout: Layout) -> Result<Options, Failure> {
    Ok(Options {
        causal: o.is_causal,
        smooth_k: o.smooth_k,
        // Out-of-range values become ±inf, which the library rejects with its own message.
        sm_scale: o.sm_scale.map(|s| s as f32),
        layout,
        pv_accum: pv_accum(&o.pv_accum)?,
        pv_precision: pv_precision(&o.pv_precision)?,
        backend: backend(&o.backend)?,
        ..Options::default()
    })
}

/// torch's dtype names (`str(torch.float16)` is `"torch.float16"`).
fn dtype(name: &str, s: &str) -> Result<DType, Failure> {
    match s.strip_prefix("torch.").unwrap_or(s) {
        "float16" | "half" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        // The library names what it supports.
        "float32" | "float" => Ok(DType::F32),
        _ => Err(Failure::Type(format!(
            "tensor `{name}` has dtype {s}; supported: torch.float16, torch.bfloat16"
        ))),
    }
}

fn device(name: &str, index: i64) -> Result<usize, Failure> {
    usize::try_from(index).map_err(|_| {
        Failure::Value(format!(
            "tensor `{name}` is not on a CUDA device (device index {index})"
        ))
    })
}

fn four<'a>(name: &str, what: &str, xs: &'a [i64]) -> Result<&'a [i64; 4], Failure> {
    xs.try_into().map_err(|_| {
        Failure::Value(format!(
            "tensor `{name}` must be 4-d, got {what} {xs:?} ({} dimensions)",
            xs.len()
        ))
    })
}

/// Memory order → logical order `[batch, heads, seq, head_dim]`.
fn logical<T: Copy>(layout: Layout, [a, b, c, d]: [T; 4]) -> [T; 4] {
    match layout {
        Layout::Hnd => [a, b, c, d],
        Layout::Nhd => [a, c, b, d],
    }
}

/// A q/k/v/out tensor in `layout`.
pub(crate) fn tensor(name: &str, arg: &TensorArg, layout: Layout) -> Result<Raw, Failure> {
    let (ptr, dtype_name, shape, strides, index) = arg;
    let shape4 = four(name, "shape", shape)?;
    let strides4 = four(name, "strides", strides)?;
    let mut dims = [0usize; 4];
    for (d, &n) in dims.iter_mut().zip(shape4) {
        *d = usize::try_from(n).map_err(|_| {
            Failure::Value(format!("tensor `{name}` has a negative size: {shape:?}"))
        })?;
    }
    Ok(Raw {
        ptr: *ptr,
        dtype: dtype(name, dtype_name)?,
        shape: logical(layout, dims),
        strides: logical(layout, *strides4),
        ordinal: device(name, *index)?,
    })
}

/// A packed q/k/v/out tensor, `[total, heads, head_dim]` (rows of every sequence one after the
/// other), as the library's packed view: logical `[1, heads, total, head_dim]`.
pub(crate) fn packed(name: &str, arg: &TensorArg) -> Result<Raw, Failure> {
    let (ptr, dtype_name, shape, strides, index) = arg;
    let three = |what: &str, xs: &[i64]| -> Result<[i64; 3], Failure> {
        xs.try_into().map_err(|_| {
            Failure::Value(format!(
                "tensor `{name}` must be 3-d, [total, heads, head_dim], got {what} {xs:?} ({} \
                 dimensions)",
                xs.len()
            ))
        })
    };
    let [total, heads, dim] = three("shape", shape)?;
    let [s_row, s_head, s_dim] = three("strides", strides)?;
    let size = |n: i64| {
        usize::try_from(n)
            .map_err(|_| Failure::Value(format!("tensor `{name}` has a negative size: {shape:?}")))
    };
    let dims = [1, size(heads)?, size(total)?, size(dim)?];
    Ok(Raw {
        ptr: *ptr,
        dtype: dtype(name, dtype_name)?,
        shape: dims,
        // The batch stride of a batch of one is never used; the whole extent keeps it valid.
        strides: [s_row.saturating_mul(total.max(1)), s_head, s_row, s_dim],
        ordinal: device(name, *index)?,
    })
}

/// A `max_seqlen` argument: a non-negative int.
pub(crate) fn max_seqlen(name: &str, value: i64) -> Result<usize, Failure> {
    usize::try_from(value).map_err(|_| Failure::Value(format!("{name} must be >= 0, got {value}")))
}

/// The packed LSE output: float32, contiguous `[q_heads, total_q]` for the packed `q` (logical
/// `[1, q_heads, total_q, d]`). Returns its pointer, element count and device.
pub(crate) fn packed_lse(
    arg: &TensorArg,
    q_shape: [usize; 4],
) -> Result<(u64, usize, usize), Failure> {
    let (ptr, dtype_name, shape, strides, index) = arg;
    if dtype("lse", dtype_name)? != DType::F32 {
        return Err(Failure::Type(format!(
            "tensor `lse` has dtype {dtype_name}, expected torch.float32"
        )));
    }
    let [_, h, n, _] = q_shape;
    let want = [h, n].map(|x| i64::try_from(x).unwrap_or(i64::MAX));
    let dims_ok = shape.as_slice() == want.as_slice();
    let strides_ok = strides.len() == 2
        && (want[0] == 1 || strides[0] == want[1])
        && (want[1] == 1 || strides[1] == 1);
    if !dims_ok || !strides_ok {
        return Err(Failure::Value(format!(
            "tensor `lse` must be a contiguous [q_heads, total_q] = {want:?} tensor, got shape \
             {shape:?} strides {strides:?}"
        )));
    }
    let len = h
        .checked_mul(n)
        .ok_or_else(|| Failure::Value(format!("tensor `lse` of shape {want:?} is too large")))?;
    Ok((*ptr, len, device("lse", *index)?))
}

/// The LSE output: float32, contiguous `[batch, q_heads, qo_len]` for `q_shape` (logical).
/// Returns its pointer, element count and device.
pub(crate) fn lse(arg: &TensorArg, q_shape: [usize; 4]) -> Result<(u64, usize, usize), Failure> {
    let (ptr, dtype_name, shape, strides, index) = arg;
    if dtype("lse", dtype_name)? != DType::F32 {
        return Err(Failure::Type(format!(
            "tensor `lse` has dtype {dtype_name}, expected torch.float32"
        )));
    }
    let [b, h, n, _] = q_shape;
    let want = [b, h, n].map(|x| i64::try_from(x).unwrap_or(i64::MAX));
    let contiguous = [want[1].saturating_mul(want[2]), want[2], 1];
    let dims_ok = shape.as_slice() == want.as_slice();
    // Strides of size-1 dimensions do not matter.
    let strides_ok =
        strides.len() == 3 && (0..3).all(|i| want[i] == 1 || strides[i] == contiguous[i]);
    if !dims_ok || !strides_ok {
        return Err(Failure::Value(format!(
            "tensor `lse` must be a contiguous [batch, q_heads, qo_len] = {want:?} tensor, got \
             shape {shape:?} strides {strides:?}"
        )));
    }
    let len = b
        .checked_mul(h)
        .and_then(|x| x.checked_mul(n))
        .ok_or_else(|| Failure::Value(format!("tensor `lse` of shape {want:?} is too large")))?;
    Ok((*ptr, len, device("lse", *index)?))
}
