//! `sageattention._native`: the extension module behind the Python package `sageattention`.
//!
//! The Python front (`python/sageattention/`) owns everything torch: it allocates the output with
//! torch, reads pointers, shapes, strides and torch's current stream, and registers the torch
//! custom op. This module turns those numbers into the library's raw tensor views, checks them
//! (the library's validation, with its messages), and runs the call on the device's runtime,
//! fenced with torch's stream (see [`device`]). It never imports torch.
//!
//! Read order: [`attention`] (and [`attention_varlen`], packed batches) → `args` (what crosses from Python) → `device` (runtime per GPU,
//! stream fencing, graph capture) → `errors` (library error → Python exception).

mod args;
mod device;
mod errors;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::args::{CallOptions, TensorArg};
use crate::device::{Call, VarlenCall};
use crate::errors::{no_panic, Failure};

/// The keyword arguments of a call (`tensor_layout`, `is_causal`, `sm_scale`, `smooth_k`,
/// `pv_accum`, `pv_precision`, `backend`, `stream`; all required).
fn call_options(options: Option<&Bound<'_, PyDict>>) -> PyResult<CallOptions> {
    match options {
        // A missing item is a KeyError from the extraction: report every failure as TypeError.
        Some(d) => d
            .extract()
            .map_err(|e| PyTypeError::new_err(format!("keyword arguments: {e}"))),
        None => Err(PyTypeError::new_err(
            "missing keyword arguments: tensor_layout, is_causal, sm_scale, smooth_k, pv_accum, \
             pv_precision, backend, stream",
        )),
    }
}

/// Parses one call's arguments (no driver call).
fn parse_call(
    [q, k, v, out]: [&TensorArg; 4],
    lse: Option<&TensorArg>,
    options: &CallOptions,
) -> Result<Call, Failure> {
    let layout = args::layout(&options.tensor_layout)?;
    let q = args::tensor("q", q, layout)?;
    let lse = lse.map(|l| args::lse(l, q.shape)).transpose()?;
    Ok(Call {
        q,
        k: args::tensor("k", k, layout)?,
        v: args::tensor("v", v, layout)?,
        out: args::tensor("out", out, layout)?,
        lse,
        opts: args::options(options, layout)?,
        stream: options.stream,
    })
}

/// Runs SageAttention on torch tensors given as `(data_ptr, dtype, shape, strides,
/// device_index)`, writing `out` (and `lse`, float32 `[batch, q_heads, qo_len]`, when given), on
/// the device of `q`, ordered with `stream` (torch's current stream there). Shapes and strides are
/// in `tensor_layout` order ("HND" or "NHD"). Keyword arguments: see [`call_options`]. Raises
/// TypeError, ValueError or RuntimeError with the library's message; releases the GIL while it
/// runs.
#[pyfunction]
#[pyo3(signature = (q, k, v, out, lse, **options))]
fn attention(
    py: Python<'_>,
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    out: TensorArg,
    lse: Option<TensorArg>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let options = call_options(options)?;
    let call = no_panic(|| parse_call([&q, &k, &v, &out], lse.as_ref(), &options))?;
    py.detach(|| no_panic(|| device::device(call.q.ordinal)?.run(&call)))?;
    Ok(())
}

/// Parses one varlen call's arguments and checks them as far as no driver is needed (the packed
/// views, then the prefix sums by the library's rules).
fn parse_varlen_call(
    [q, k, v, out]: [&TensorArg; 4],
    lse: Option<&TensorArg>,
    (cu_seqlens_q, cu_seqlens_k): (Vec<i32>, Vec<i32>),
    (max_seqlen_q, max_seqlen_k): (i64, i64),
    options: &CallOptions,
) -> Result<VarlenCall, Failure> {
    let q = args::packed("q", q)?;
    let lse = lse.map(|l| args::packed_lse(l, q.shape)).transpose()?;
    let call = VarlenCall {
        call: Call {
            q,
            k: args::packed("k", k)?,
            v: args::packed("v", v)?,
            out: args::packed("out", out)?,
            lse,
            opts: args::options(options, sageattention::Layout::Nhd)?,
            stream: options.stream,
        },
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q: args::max_seqlen("max_seqlen_q", max_seqlen_q)?,
        max_seqlen_k: args::max_seqlen("max_seqlen_k", max_seqlen_k)?,
    };
    call.check()?;
    Ok(call)
}

/// Runs SageAttention over a packed batch of sequences: `q` `[total_q, q_heads, head_dim]`, `k`,
/// `v` `[total_k, kv_heads, head_dim]` and `out` (like `q`), as `(data_ptr, dtype, shape,
/// strides, device_index)`; the prefix sums as lists of ints on the host; `lse`, when given,
/// float32 `[q_heads, total_q]`. Keyword arguments as [`attention`] (`tensor_layout` is ignored:
/// packed tensors are NHD). Raises TypeError, ValueError (bad `cu_seqlens` included, before any
/// driver call) or RuntimeError; releases the GIL while it runs.
#[pyfunction]
#[pyo3(signature = (q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options))]
#[allow(clippy::too_many_arguments)]
fn attention_varlen(
    py: Python<'_>,
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    out: TensorArg,
    lse: Option<TensorArg>,
    cu_seqlens_q: Vec<i32>,
    cu_seqlens_k: Vec<i32>,
    max_seqlen_q: i64,
    max_seqlen_k: i64,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let options = call_options(options)?;
    let call = no_panic(|| {
        parse_varlen_call(
            [&q, &k, &v, &out],
            lse.as_ref(),
            (cu_seqlens_q, cu_seqlens_k),
            (max_seqlen_q, max_seqlen_k),
            &options,
        )
    })?;
    py.detach(|| no_panic(|| device::device(call.call.q.ordinal)?.run_varlen(&call)))?;
    Ok(())
}

/// The baseline of the overhead benchmark: times `iters` calls of the library's `sageattn_into`
/// issued from Rust (no Python in the loop) on the same tensors, after `warmup` untimed calls.
/// Returns (GPU milliseconds per call, host microseconds per call). Synchronizes.
#[pyfunction]
#[pyo3(signature = (q, k, v, out, warmup, iters, **options))]
#[allow(clippy::too_many_arguments)]
fn time_library_call(
    py: Python<'_>,
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    out: TensorArg,
    warmup: usize,
    iters: usize,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<(f64, f64)> {
    let options = call_options(options)?;
    let call = no_panic(|| parse_call([&q, &k, &v, &out], None, &options))?;
    let timed = py.detach(|| {
        no_panic(|| device::device(call.q.ordinal)?.time_library_call(&call, warmup, iters))
    })?;
    Ok(timed)
}

/// Frees the scratch workspace kept between calls on device `index` (stream-ordered), if that
/// device was used.
#[pyfunction]
fn release_workspace(py: Python<'_>, index: usize) -> PyResult<()> {
    py.detach(|| {
        no_panic(|| {
            if let Some(d) = device::opened(index) {
                d.release_workspace();
            }
            Ok(())
        })
    })?;
    Ok(())
}

/// Compute capability `(major, minor)` of device `index`, as the library sees it.
#[pyfunction]
fn compute_capability(py: Python<'_>, index: usize) -> PyResult<(i32, i32)> {
    let cc = py.detach(|| no_panic(|| Ok(device::device(index)?.compute_capability())))?;
    Ok(cc)
}

/// Whether the CUDA driver library can be loaded (no device is opened).
#[pyfunction]
fn driver_available() -> bool {
    device::driver_present()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "SUPPORTED_HEAD_DIMS",
        PyTuple::new(m.py(), sageattention::device_config::SUPPORTED_HEAD_DIMS)?,
    )?;
    m.add_function(wrap_pyfunction!(attention, m)?)?;
    m.add_function(wrap_pyfunction!(attention_varlen, m)?)?;
    m.add_function(wrap_pyfunction!(time_library_call, m)?)?;
    m.add_function(wrap_pyfunction!(release_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(compute_capability, m)?)?;
    m.add_function(wrap_pyfunction!(driver_available, m)?)?;
    Ok(())
}
