//! The launch-layer half of the varlen call (`crate::varlen`): the checks of packed inputs
//! ([`check_varlen`], pure, testable without a GPU) and the two device operations the
//! per-sequence path needs besides the batched call: placing one sequence's LSE into the packed
//! LSE ([`copy_lse_rows`]) and writing the rows of a sequence that has no keys
//! ([`fill_rows_without_keys`]).

use std::ops::Range;

use cudarc::driver::{sys, CudaSlice, DevicePtr, DevicePtrMut};

use super::dispatch::select;
use super::validate::{check_on_device, check_problem, Problem};
use crate::device::runtime::Runtime;
use crate::device::tensor::{TensorView, TensorViewMut};
use crate::types::error::{CudaResultExt, Error, Result};
use crate::types::options::Options;
use crate::types::varlen::VarlenBatch;

/// The checked geometry of one varlen call: the packed problem (batch 1, `qo_len = total_q`,
/// `kv_len = total_k`) and its sequences.
#[derive(Clone, Debug)]
pub(crate) struct VarlenProblem {
    pub(crate) packed: Problem,
    pub(crate) batch: VarlenBatch,
}

/// The prefix sums and maximum lengths of a varlen call, as the caller gave them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seqlens<'a> {
    pub(crate) cu_q: &'a [i32],
    pub(crate) cu_k: &'a [i32],
    pub(crate) max_q: usize,
    pub(crate) max_k: usize,
}

/// Everything about packed inputs that needs no driver call, in this order: each of q, k, v is a
/// packed view (batch 1, [`Error::NotPacked`]); the batched call's checks of the packed views
/// (dtype, head_dim, strides, alignment, GQA, sizes, options); the prefix sums against the packed
/// row counts and the maximum lengths ([`VarlenBatch::new`]).
pub(crate) fn check_varlen(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    seqlens: Seqlens,
    opts: &Options,
) -> Result<VarlenProblem> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.batch() != 1 {
            return Err(Error::NotPacked {
                tensor: name,
                shape: t.shape(),
            });
        }
    }
    let packed = check_problem(q, k, v, opts)?;
    let batch = VarlenBatch::new(
        seqlens.cu_q,
        seqlens.cu_k,
        (packed.qo_len, packed.kv_len),
        (seqlens.max_q, seqlens.max_k),
    )?;
    Ok(VarlenProblem { packed, batch })
}

/// [`check_varlen`], then the driver-level checks of the batched call (compute capability, the
/// inputs are memory of the runtime's device) and its kernel choice, which depends on the device,
/// head_dim and options only (so an unavailable P·V precision is refused before any sequence
/// runs).
pub(crate) fn validate_varlen(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    seqlens: Seqlens,
    opts: &Options,
) -> Result<VarlenProblem> {
    let problem = check_varlen(q, k, v, seqlens, opts)?;
    check_on_device(rt, q, k, v)?;
    select(rt, &problem.packed, opts)?;
    Ok(problem)
}

/// Copies one sequence's LSE, `[heads][rows.len()]` contiguous at the start of `src` (what the
/// batched call writes for batch 1), into the packed LSE `dst`, `[heads][total]`, at columns
/// `rows`: one 2-d copy (`heads` rows of `rows.len()` floats) on the runtime's stream.
pub(crate) fn copy_lse_rows(
    rt: &Runtime,
    src: &CudaSlice<f32>,
    dst: &mut CudaSlice<f32>,
    heads: usize,
    rows: Range<usize>,
    total: usize,
) -> Result<()> {
    const F32: usize = std::mem::size_of::<f32>();
    debug_assert!(src.len() >= heads * rows.len() && dst.len() >= heads * total);
    rt.bind()?;
    let stream = rt.stream();
    let (src_ptr, _src_guard) = src.device_ptr(stream);
    let (dst_ptr, _dst_guard) = dst.device_ptr_mut(stream);
    let copy = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: src_ptr,
        srcArray: std::ptr::null_mut(),
        srcPitch: rows.len() * F32,
        dstXInBytes: rows.start * F32,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst_ptr,
        dstArray: std::ptr::null_mut(),
        dstPitch: total * F32,
        WidthInBytes: rows.len() * F32,
        Height: heads,
    };
    // SAFETY: the source holds `heads` rows of `rows.len()` floats from its start, the
    // destination `heads` rows of `total >= rows.end` floats (checked by the caller's
    // validation); both are device memory of the runtime's context, bound above, and the guards
    // order the copy with other users of the two slices.
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }
        .result()
        .with_op(|| {
            format!(
                "copying the LSE of rows {rows:?} ({heads} heads) into the packed LSE of {total} rows"
            )
        })
}

/// Writes what the batched call writes for query rows that see no key, for a sequence whose K is
/// empty (which the batched call, refusing empty tensors, cannot be asked for): zeros into
/// `out` (that sequence's rows of the packed output, `[1, heads, len, head_dim]`) and `-inf` into
/// the packed LSE `[heads][total]` at columns `rows` when given. 2-d memsets on the runtime's
/// stream, one per head for the output.
pub(crate) fn fill_rows_without_keys(
    rt: &Runtime,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
    rows: Range<usize>,
    total: usize,
) -> Result<()> {
    const F32: usize = std::mem::size_of::<f32>();
    rt.bind()?;
    let stream = rt.stream();
    let [_, heads, len, head_dim] = out.shape();
    let [_, head_stride, row_stride, _] = out.strides();
    let elem = out.dtype().size_bytes();
    // Strides are non-negative (validated); a pitch only matters with more than one row.
    let pitch = if len > 1 {
        row_stride as usize * elem
    } else {
        head_dim * elem
    };
    let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
    for h in 0..heads {
        let ptr = out_ptr + (h * head_stride as usize * elem) as u64;
        // SAFETY: rows `0..len` of head `h` of the validated output view, `head_dim` 2-byte
        // elements each, `pitch` bytes apart; all-zero bits are +0.0 in f16 and bf16.
        unsafe { sys::cuMemsetD2D16Async(ptr, pitch, 0, head_dim, len, stream.cu_stream()) }
            .result()
            .with_op(|| {
                format!("zeroing {len} output rows of head {h} (a sequence without keys)")
            })?;
    }
    if let Some(lse) = lse {
        let (lse_ptr, _lse_guard) = lse.device_ptr_mut(stream);
        let ptr = lse_ptr + (rows.start * F32) as u64;
        // SAFETY: `heads` rows of the packed LSE, `total` floats apart, columns `rows` (inside
        // the buffer, validated to hold `heads * total` floats).
        unsafe {
            sys::cuMemsetD2D32Async(
                ptr,
                total * F32,
                f32::NEG_INFINITY.to_bits(),
                rows.len(),
                heads,
                stream.cu_stream(),
            )
        }
        .result()
        .with_op(|| format!("writing -inf into the LSE of rows {rows:?}"))?;
    }
    Ok(())
}
