//! Variable-length batches: [`sageattn_varlen`] and [`sageattn_varlen_into`] over sequences
//! packed into one tensor, the way FlashAttention's `flash_attn_varlen_func` and the official
//! `sageattn_varlen` take them (serving engines batch prompts of different lengths this way
//! instead of padding them to the longest).
//!
//! # Packed tensors
//!
//! Q is `[total_q, q_heads, head_dim]` and K, V are `[total_k, kv_heads, head_dim]`: the rows of
//! every sequence one after the other (NHD). A packed tensor is given as a [`TensorView`] with
//! **batch 1 and seq = total**, i.e. the logical shape `[1, heads, total, head_dim]` with the NHD
//! strides `[_, head_dim, heads * head_dim, 1]` for a contiguous buffer
//! (`TensorView::from_slice(&buf, [1, heads, total, d], Layout::Nhd)`). Any row and head
//! strides work as in the batched call (contiguous last dim, 16-byte aligned rows); a view with
//! batch ≠ 1 is [`Error::NotPacked`]. The output is packed the same way
//! (`[1, q_heads, total_q, head_dim]`; [`sageattn_varlen`] allocates it NHD, whatever
//! [`Options::layout`] says), and the LSE is f32 `[q_heads, total_q]` contiguous.
//!
//! # `cu_seqlens`
//!
//! `cu_seqlens_q` and `cu_seqlens_k` are int32 prefix sums with `batch + 1` entries: sequence `i`
//! is Q rows `cu_seqlens_q[i]..cu_seqlens_q[i + 1]` and K/V rows `cu_seqlens_k[i]..cu_seqlens_k[i +
//! 1]`. The rules, each a typed error before anything is launched (see [`VarlenBatch`]):
//! `1 <= batch <= MAX_VARLEN_BATCH`, the same batch for Q and K, first entry 0, never decreasing,
//! last entry = the packed tensor's row count, no sequence longer than `max_seqlen_q` /
//! `max_seqlen_k`. Empty sequences are allowed: no query rows produce nothing; query rows
//! without keys get 0 and LSE `-inf`, as rows that see no key do in the batched call.
//!
//! They are passed as [`CuSeqlens`]: a host slice (`&[i32]`, `&Vec<i32>`), checked on the host,
//! or a device buffer (`&CudaSlice<i32>`), which is **copied to the host synchronously** (the
//! stream is synchronized) and then checked the same way. The copy is not a shortcut around a
//! device check: this implementation needs the lengths on the host anyway, to group the
//! sequences into batched calls and cut the packed tensors into their views. A fused kernel,
//! which would not need them, would check on the device instead. [`check_varlen_inputs`] runs
//! every check that needs no GPU.
//!
//! # Semantics
//!
//! Each sequence is attention on its own, exactly as the batched [`sageattn`](crate::sageattn)
//! with batch 1: causal masking is bottom-right aligned **within each sequence** (so a chunk of
//! queries against a longer cached context, chunked prefill, masks correctly), K's mean for
//! smoothing is taken per sequence, quantization blocks start at each sequence's first row and
//! never straddle two sequences, and every [`Options`] field (GQA, bf16, LSE, `pv_accum`,
//! `pv_precision`, `backend`, `sm_scale`) means what it means there.
//!
//! # Cost
//!
//! A maximal run of consecutive sequences with the same query length and the same key length
//! (both non-zero) is, in memory, a batched problem `[sequences, heads, len, head_dim]`: each
//! sequence's rows follow the previous one's, so the batch stride is `len` rows. Such a run is
//! **one batched [`sageattn_into`] call** (its preparation launches and its attention launch),
//! which computes per batch entry exactly what it computes per sequence; a packed batch of equal
//! lengths therefore costs what the batched call with the same tokens costs, plus the varlen
//! call's host-side checks. Every other sequence with queries and keys is a run of one, its own
//! call with batch 1: a mix of different lengths pays one call's launches per sequence. A run is
//! split where sequences × query heads × the longer of its two lengths would pass 2^24, which
//! keeps each call far below the batched call's grid limit and bounds its scratch memory. With an
//! LSE, each run adds 2-d copies into the packed LSE (one per sequence or one per head, the
//! fewer: the batched call's LSE layout differs); sequences without keys are written with 2-d
//! memsets.
//!
//! **The runs of one call execute concurrently.** One short sequence fills a large GPU poorly (a
//! 300-token sequence with 32 heads is about 64 CTAs of 128 queries, on a 132-SM H200), and one
//! call after another leaves most SMs idle during every short call and every call's tail. So the
//! runs are spread over up to [`Runtime::varlen_streams`] streams (default
//! [`DEFAULT_VARLEN_STREAMS`]): the runtime's own and worker streams the runtime creates once and
//! keeps. The longest run goes first, onto the runtime's stream, and each next one onto the
//! stream with the least estimated work so far (query–key pairs attended, causal mask included,
//! plus a preparation term per row), so short runs fill the GPU beside and behind the long ones.
//! The results do not depend on the streams, bit for bit.
//!
//! From the caller's side nothing changes: the call is asynchronous as before (nothing waits on
//! the host), and it is ordered on the runtime's stream like one batched call. The worker streams
//! wait for an event recorded on the runtime's stream before their first launch, and the
//! runtime's stream waits for an event recorded on each of them before the call returns; the
//! inputs, output and LSE are accessed once, on the runtime's stream, for the whole call (for
//! views of cudarc slices: waiting there for earlier writers, and recording the accesses there
//! after the join). Work queued on the runtime's stream after the call sees its results and may
//! overwrite or free its inputs. Each worker stream has its own scratch workspace (one shared by
//! concurrent calls would race), as large as the largest batched call it ran: a call may hold up
//! to `streams` workspaces where one batched call holds one ([`Runtime::release_workspace`] frees
//! them all). With a single run, with [`Runtime::set_varlen_streams`]`(1)`, or while the
//! runtime's stream is being captured into a CUDA graph (worker streams cannot be created in a
//! capture), every run is enqueued on the runtime's stream in packed order, one after another.
//!
//! One attention launch over every run's CTAs was built and measured on the H200 (branch
//! `fused-varlen`, docs/perf-notes.md v18): no faster at d = 128 and 9% slower at d = 64, since
//! the streams already fill each launch's last wave and the fused launch has to wait for every
//! preparation first. A varlen call's time is its kernels' work (on a mix of 16 lengths up to 8K,
//! 94% attention, 5% preparation), not its launch count.
//! [`reference::attention_varlen`](crate::reference::attention_varlen) is the CPU form of its
//! results.

use std::borrow::Cow;

use cudarc::driver::{CudaSlice, DevicePtrMut};

use crate::attention::{sageattn_into, Output};
use crate::device::runtime::Runtime;
use crate::device::tensor::{Tensor, TensorView, TensorViewMut};
use crate::launch::validate::validate_output;
use crate::launch::varlen::{
    check_varlen, copy_lse_run, equal_length_runs, fill_rows_without_keys, schedule_runs,
    validate_varlen, Seqlens, VarlenProblem,
};
use crate::types::dtype::Layout;
use crate::types::error::{CudaResultExt, Error, Result};
use crate::types::options::Options;

pub use crate::device::runtime::{DEFAULT_VARLEN_STREAMS, MAX_VARLEN_STREAMS};
pub use crate::types::varlen::{VarlenBatch, VarlenSequence, MAX_VARLEN_BATCH};

/// `cu_seqlens` prefix sums (int32, `batch + 1` entries), on the host or on the device.
#[derive(Clone, Copy, Debug)]
pub enum CuSeqlens<'a> {
    /// A host copy: checked on the host, nothing is copied.
    Host(&'a [i32]),
    /// A device buffer of the runtime's device: copied to the host synchronously, then checked.
    Device(&'a CudaSlice<i32>),
}

impl<'a> From<&'a [i32]> for CuSeqlens<'a> {
    fn from(s: &'a [i32]) -> Self {
        CuSeqlens::Host(s)
    }
}

impl<'a> From<&'a Vec<i32>> for CuSeqlens<'a> {
    fn from(s: &'a Vec<i32>) -> Self {
        CuSeqlens::Host(s)
    }
}

impl<'a, const N: usize> From<&'a [i32; N]> for CuSeqlens<'a> {
    fn from(s: &'a [i32; N]) -> Self {
        CuSeqlens::Host(s)
    }
}

impl<'a> From<&'a CudaSlice<i32>> for CuSeqlens<'a> {
    fn from(s: &'a CudaSlice<i32>) -> Self {
        CuSeqlens::Device(s)
    }
}

impl<'a> CuSeqlens<'a> {
    /// The prefix sums on the host (a synchronous copy for a device buffer). `name` is used in
    /// errors.
    fn to_host(self, rt: &Runtime, name: &'static str) -> Result<Cow<'a, [i32]>> {
        match self {
            CuSeqlens::Host(s) => Ok(Cow::Borrowed(s)),
            CuSeqlens::Device(s) => {
                if s.ordinal() != rt.ordinal() {
                    return Err(Error::WrongDevice {
                        tensor: name,
                        expected: rt.ordinal(),
                        got: s.ordinal(),
                    });
                }
                rt.bind()?;
                let host = rt
                    .stream()
                    .clone_dtoh(s)
                    .with_op(|| format!("copying `{name}` ({} entries) to the host", s.len()))?;
                rt.synchronize()?;
                Ok(Cow::Owned(host))
            }
        }
    }
}

/// Every check of [`sageattn_varlen`] that needs no GPU, on host prefix sums: the packed views
/// (batch 1, then the batched call's dtype, head_dim, stride, alignment, GQA and option checks),
/// then the prefix sums (see the module's rules). Returns the sequences.
#[allow(clippy::too_many_arguments)]
pub fn check_varlen_inputs(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    cu_seqlens_q: &[i32],
    cu_seqlens_k: &[i32],
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    opts: &Options,
) -> Result<VarlenBatch> {
    let seqlens = Seqlens {
        cu_q: cu_seqlens_q,
        cu_k: cu_seqlens_k,
        max_q: max_seqlen_q,
        max_k: max_seqlen_k,
    };
    Ok(check_varlen(q, k, v, seqlens, opts)?.batch)
}

/// How many streams [`sageattn_varlen`] runs `batch` (with `q_heads` query heads) on with `rt`
/// outside a graph capture: one per run of equal lengths (see the [module](self)'s cost), at most
/// [`Runtime::varlen_streams`], at least 1.
pub fn streams_used(rt: &Runtime, batch: &VarlenBatch, q_heads: usize) -> usize {
    let runs = equal_length_runs(batch, q_heads).len();
    runs.clamp(1, rt.varlen_streams())
}

/// Runs SageAttention over a packed batch of sequences and allocates the packed output
/// (`[1, q_heads, total_q, head_dim]`, NHD memory, Q's dtype) and, with `opts.return_lse`, the
/// LSE (`[q_heads, total_q]`). See the [module](self) for the packed format, the `cu_seqlens`
/// rules, the semantics and the cost. Errors are reported before anything is launched.
#[allow(clippy::too_many_arguments)]
pub fn sageattn_varlen<'c>(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    cu_seqlens_q: impl Into<CuSeqlens<'c>>,
    cu_seqlens_k: impl Into<CuSeqlens<'c>>,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    opts: &Options,
) -> Result<Output> {
    let problem = validate_call(
        rt,
        (q, k, v),
        (cu_seqlens_q.into(), cu_seqlens_k.into()),
        (max_seqlen_q, max_seqlen_k),
        opts,
    )?;
    let p = &problem.packed;
    let shape = [1, p.q_heads, p.qo_len, p.head_dim];
    let mut o = Tensor::alloc(rt, p.in_dtype, shape, Layout::Nhd)?;
    let mut lse = if opts.return_lse {
        Some(rt.alloc_zeros::<f32>(p.q_heads * p.qo_len)?)
    } else {
        None
    };
    run_batched(rt, q, k, v, &problem, &mut o.view_mut(), lse.as_mut(), opts)?;
    Ok(Output { o, lse })
}

/// Runs SageAttention over a packed batch into a caller-provided packed output (f16 or bf16,
/// `[1, q_heads, total_q, head_dim]`, any valid strides, not overlapping the inputs) and, when
/// given, an f32 LSE buffer of at least `q_heads * total_q` elements, written as
/// `[q_heads][total_q]` (`opts.return_lse` is ignored: passing the buffer asks for it). See the
/// [module](self).
#[allow(clippy::too_many_arguments)]
pub fn sageattn_varlen_into<'c>(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    cu_seqlens_q: impl Into<CuSeqlens<'c>>,
    cu_seqlens_k: impl Into<CuSeqlens<'c>>,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
    opts: &Options,
) -> Result<()> {
    let problem = validate_call(
        rt,
        (q, k, v),
        (cu_seqlens_q.into(), cu_seqlens_k.into()),
        (max_seqlen_q, max_seqlen_k),
        opts,
    )?;
    run_batched(rt, q, k, v, &problem, out, lse, opts)
}

/// The prefix sums on the host (copied when on the device), then every check of the call.
fn validate_call(
    rt: &Runtime,
    (q, k, v): (&TensorView, &TensorView, &TensorView),
    (cu_q, cu_k): (CuSeqlens, CuSeqlens),
    (max_q, max_k): (usize, usize),
    opts: &Options,
) -> Result<VarlenProblem> {
    let cu_q = cu_q.to_host(rt, "cu_seqlens_q")?;
    let cu_k = cu_k.to_host(rt, "cu_seqlens_k")?;
    let seqlens = Seqlens {
        cu_q: &cu_q,
        cu_k: &cu_k,
        max_q,
        max_k,
    };
    validate_varlen(rt, q, k, v, seqlens, opts)
}

/// Checks the packed output, then runs [`sageattn_into`] once per run of equal-length sequences
/// ([`equal_length_runs`]; a sequence of its own lengths is a run of one) on the run's rows of the
/// packed tensors viewed as a batch, spread over the runtime's worker streams
/// ([`schedule_runs`]), and writes the rows of sequences without keys. With an LSE, each run's
/// goes to its stream's staging buffer first: the batched call writes
/// `[batch][q_heads][qo_len]` contiguous, while a run's columns of the packed LSE are `q_heads`
/// strided rows.
#[allow(clippy::too_many_arguments)]
fn run_batched(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    problem: &VarlenProblem,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
    opts: &Options,
) -> Result<()> {
    let p = &problem.packed;
    validate_output(rt, p, out, lse.as_deref(), &[("q", q), ("k", k), ("v", v)])?;
    let runs = equal_length_runs(&problem.batch, p.q_heads);
    // A capture stays on the runtime's stream: worker streams would have to join the capture,
    // and creating them is not capturable.
    let streams = match rt.varlen_streams() {
        n if n > 1 && runs.len() > 1 && !rt.is_capturing() => n,
        _ => 1,
    };
    let schedule = schedule_runs(&runs, opts.causal, streams);
    // Allocated on the runtime's stream before the fork and freed there after the join (dropped
    // last), so every stream's use of its own buffer lies between the two.
    let mut staging = Vec::with_capacity(schedule.streams);
    if lse.is_some() {
        for &rows in &schedule.rows {
            staging.push(Some(rt.alloc_zeros::<f32>(p.q_heads * rows.max(1))?));
        }
    } else {
        staging.resize_with(schedule.streams, || None);
    }
    rt.bind()?;
    let stream = rt.stream();
    // The call takes each caller buffer's access once, on the runtime's stream, and the streams
    // work through untracked views of it: per-buffer events would chain the streams behind one
    // another (a write waits for the previous writer), and a buffer's one read event could only
    // remember the last stream that read it. The guards are declared before the fork, so they
    // drop after the join, whatever happens: they then record the accesses on the runtime's
    // stream, after all of the streams' work.
    // SAFETY: every launch through these views goes to a stream of `fork`, joined into
    // `stream` before the guards drop (on success by `join`, on an early return by the fork's
    // drop, which runs first).
    let (q, _q_access) = unsafe { q.detach(stream) };
    let (k, _k_access) = unsafe { k.detach(stream) };
    let (v, _v_access) = unsafe { v.detach(stream) };
    let (mut out, _out_access) = unsafe { out.detach_mut(stream) };
    let (lse, _lse_access) = match lse {
        Some(l) => {
            let (ptr, guard) = l.device_ptr_mut(stream);
            (Some(ptr), Some(guard))
        }
        None => (None, None),
    };
    let fork = rt.fork(schedule.streams)?;
    let total_q = p.qo_len;
    for &(i, lane) in &schedule.order {
        let (run, lane_rt) = (&runs[i], fork.lane(lane));
        let (rows, keys) = (run.q_rows(), run.k_rows());
        let mut run_out = out.narrow_mut(2, rows.start, rows.len())?;
        sageattn_into(
            lane_rt,
            &q.narrow(2, rows.start, rows.len())?.split_seq(run.q_len)?,
            &k.narrow(2, keys.start, keys.len())?.split_seq(run.k_len)?,
            &v.narrow(2, keys.start, keys.len())?.split_seq(run.k_len)?,
            &mut run_out.split_seq_mut(run.q_len)?,
            staging[lane].as_mut(),
            opts,
        )?;
        if let (Some(src), Some(dst)) = (&staging[lane], lse) {
            // SAFETY: `dst` is the packed LSE, validated to hold `q_heads * total_q` floats,
            // whose access is held on the runtime's stream until `fork` is joined.
            unsafe { copy_lse_run(lane_rt, src, dst, p.q_heads, run, total_q)? };
        }
    }
    for seq in problem.batch.sequences() {
        if !seq.q.is_empty() && seq.k.is_empty() {
            let mut o = out.narrow_mut(2, seq.q.start, seq.q.len())?;
            // SAFETY: as for the LSE copies above.
            unsafe { fill_rows_without_keys(rt, &mut o, lse, seq.q.clone(), total_q)? };
        }
    }
    fork.join()
}
