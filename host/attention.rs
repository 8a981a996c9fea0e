//! The API: `sageattn` = validate → prepare (K mean, INT8 quantization of Q and K, V to f16 when
//! bf16) → attend (dispatch to the compiled variant, launch on the caller's stream). The steps are
//! the `launch` layer's, in that order; this module only strings them together.
//!
//! Causal masking is **bottom-right aligned**, as in FlashAttention ≥ 2.1: with `qo_len` queries
//! and `kv_len` keys, query `i` sees key `j` iff `j <= i + kv_len - qo_len`. (The official
//! SageAttention aligns top-left; the two agree when `qo_len == kv_len`.) A query that sees no key
//! gets a zero output row and an LSE of `-inf`.

use cudarc::driver::CudaSlice;

use crate::device::alloc::DeviceAlloc;
use crate::device::runtime::Runtime;
use crate::device::tensor::{Tensor, TensorView, TensorViewMut};
use crate::device_config::{padded_len, K_BLOCK, Q_BLOCK, V8_TILE};
use crate::launch::dispatch::select;
use crate::launch::enqueue::{enqueue_attend, enqueue_prepare, scratch_layout, Scratch};
use crate::launch::validate::{validate_inputs, validate_output, Problem};
use crate::reference::v8::{QuantizedV8, VFormat};
use crate::types::error::{CudaResultExt, Error, Result};

pub use crate::launch::dispatch::{
    attention_kernel_name, attention_kernel_names, fp8_attention_kernel_name,
    fp8_attention_kernel_names, fp8_kernel, hopper_fp8_kernel, portable_pv8_kernel,
    pv8_attention_kernel_name, selected_kernel, SelectedKernel, FP8_MIN_CC,
};
pub use crate::types::options::{Backend, Options, PvAccum, PvPrecision};

/// Result of [`sageattn`]: the output (dtype of Q, layout of [`Options::layout`]) and the LSE.
pub struct Output {
    /// Attention output, logical shape `[batch, q_heads, qo_len, head_dim]`.
    pub o: Tensor,
    /// Natural-log LSE per query row, `[batch][q_heads][qo_len]` contiguous, when requested.
    pub lse: Option<CudaSlice<f32>>,
}

/// Runs SageAttention and allocates the output (and LSE when requested).
///
/// `q`: `[batch, q_heads, qo_len, head_dim]`, `k`/`v`: `[batch, kv_heads, kv_len, head_dim]`
/// (logical order; any strides with a contiguous last dim, see [`TensorView::validate`]);
/// f16 or bf16 (all three the same); head_dim any multiple of 8 from 8 to 256 (sizes without a
/// kernel of their own run zero-padded on the next one, see
/// [`selected_kernel`]); `q_heads % kv_heads == 0` (GQA/MQA).
/// Inputs are never modified. Work is queued on the runtime's stream; errors are reported before
/// anything is launched. Scratch memory comes from the runtime's reusable workspace.
pub fn sageattn(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    opts: &Options,
) -> Result<Output> {
    let problem = validate_inputs(rt, q, k, v, opts)?;
    let shape = [
        problem.batch,
        problem.q_heads,
        problem.qo_len,
        problem.head_dim,
    ];
    let mut o = Tensor::alloc(rt, problem.in_dtype, shape, opts.layout)?;
    let mut lse = if opts.return_lse {
        Some(rt.alloc_zeros::<f32>(problem.batch * problem.q_heads * problem.qo_len)?)
    } else {
        None
    };
    run_with_workspace(rt, q, k, v, &mut o.view_mut(), lse.as_mut(), opts, &problem)?;
    Ok(Output { o, lse })
}

/// Runs SageAttention into a caller-provided output (f16 or bf16, shape
/// `[batch, q_heads, qo_len, head_dim]`, any valid strides, not overlapping the inputs) and, when
/// given, an f32 LSE buffer of at least `batch * q_heads * qo_len` elements (`opts.return_lse` is
/// ignored: passing the buffer asks for it).
pub fn sageattn_into(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
    opts: &Options,
) -> Result<()> {
    let problem = validate_inputs(rt, q, k, v, opts)?;
    run_with_workspace(rt, q, k, v, out, lse, opts, &problem)
}

#[allow(clippy::too_many_arguments)]
fn run_with_workspace(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
    opts: &Options,
    problem: &Problem,
) -> Result<()> {
    validate_output(
        rt,
        problem,
        out,
        lse.as_deref(),
        &[("q", q), ("k", k), ("v", v)],
    )?;
    let kernel = select(rt, problem, opts)?;
    // The sm_90a kernels quantize Q themselves: no Q job in the preparation.
    let layout = scratch_layout(problem, opts, lse.is_some(), &kernel, !kernel.quantizes_q())?;
    rt.with_workspace(layout.bytes, |base| {
        let scratch = Scratch { base, layout };
        enqueue_prepare(rt, q, k, v, problem, &kernel, &scratch)?;
        enqueue_attend(rt, problem, &kernel, &scratch, Some(q), v, out, lse)
    })
}

/// Q and K quantized (and V converted to f16 when it is bf16): the first half of [`sageattn`].
/// [`Prepared::attend_into`] runs the attention kernel alone, which is what "kernel only" timings
/// measure and what repeated attention over the same Q/K can reuse. Owns its device memory.
pub struct Prepared {
    problem: Problem,
    opts: Options,
    kernel: SelectedKernel,
    scratch: Scratch,
    _memory: DeviceAlloc,
}

impl Prepared {
    /// Validates the inputs and runs smoothing, quantization and (for bf16) the V conversion.
    /// With `opts.return_lse` and smoothing on, it also prepares the LSE correction.
    pub fn new(
        rt: &Runtime,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &Options,
    ) -> Result<Self> {
        let problem = validate_inputs(rt, q, k, v, opts)?;
        let kernel = select(rt, &problem, opts)?;
        // Q is quantized here whatever the kernel: the attention runs later, without it.
        let layout = scratch_layout(&problem, opts, opts.return_lse, &kernel, true)?;
        let memory = DeviceAlloc::new(rt.stream(), layout.bytes)?;
        let scratch = Scratch {
            base: memory.ptr(),
            layout,
        };
        enqueue_prepare(rt, q, k, v, &problem, &kernel, &scratch)?;
        Ok(Prepared {
            problem,
            opts: *opts,
            kernel,
            scratch,
            _memory: memory,
        })
    }

    /// Runs the attention kernel alone on the prepared Q/K and `v` (the same V the preparation
    /// saw: shape and dtype are checked) into `out`, and the LSE into `lse` when given (which
    /// needs `return_lse` at preparation when smoothing is on).
    pub fn attend_into(
        &self,
        rt: &Runtime,
        v: &TensorView,
        out: &mut TensorViewMut,
        lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let p = &self.problem;
        v.validate("v")?;
        v.check_device_memory("v", rt)?;
        if v.shape() != [p.batch, p.kv_heads, p.kv_len, p.head_dim] || v.dtype() != p.in_dtype {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "v is {:?} {} but was prepared as {:?} {}",
                    v.shape(),
                    v.dtype(),
                    [p.batch, p.kv_heads, p.kv_len, p.head_dim],
                    p.in_dtype
                ),
            });
        }
        if lse.is_some() && self.opts.smooth_k && self.scratch.layout.lse_bias.is_none() {
            return Err(Error::InvalidOption(
                "the LSE of smoothed attention needs `return_lse: true` when preparing".into(),
            ));
        }
        validate_output(rt, p, out, lse.as_deref(), &[("v", v)])?;
        enqueue_attend(rt, p, &self.kernel, &self.scratch, None, v, out, lse)
    }

    /// Copies the quantized Q (`[batch][q_heads][padded_qo][head_dim]`, padded to 128 rows) and
    /// its per-token scales (`[batch][q_heads][padded_qo]`, 0 on padding rows) to the host, for
    /// inspection and tests.
    pub fn q_quantized_to_host(&self, rt: &Runtime) -> Result<(Vec<i8>, Vec<f32>)> {
        let (p, l) = (&self.problem, &self.scratch.layout);
        let padded = padded_len(p.qo_len, Q_BLOCK);
        self.quantized_to_host(
            rt,
            // A Prepared always quantizes Q (scratch_layout above).
            l.q.map(|r| (r.i8, r.scale)).ok_or_else(|| {
                Error::InvalidOption("this preparation holds no quantized Q".into())
            })?,
            p.q_heads,
            p.qo_len,
            Q_BLOCK,
            padded,
        )
    }

    /// Copies the quantized K (padded to 64 rows) and its scales to the host.
    pub fn k_quantized_to_host(&self, rt: &Runtime) -> Result<(Vec<i8>, Vec<f32>)> {
        let (p, l) = (&self.problem, &self.scratch.layout);
        let blocks = p.kv_len.div_ceil(K_BLOCK);
        self.quantized_to_host(
            rt,
            (l.k_i8, l.k_scale),
            p.kv_heads,
            p.kv_len,
            K_BLOCK,
            blocks,
        )
    }

    /// Values and scales of one quantized tensor (`heads` heads of `seq` rows padded to whole
    /// `block`-row blocks, `scales_per_head` scales per head).
    fn quantized_to_host(
        &self,
        rt: &Runtime,
        (values, scales): (usize, usize),
        heads: usize,
        seq: usize,
        block: usize,
        scales_per_head: usize,
    ) -> Result<(Vec<i8>, Vec<f32>)> {
        let p = &self.problem;
        let rows = p.batch * heads;
        let width = self.kernel.head_dim;
        let stored = download::<i8>(
            rt,
            self.scratch.at(values),
            rows * padded_len(seq, block) * width,
        )?;
        // Rows are stored `width` wide (zero past head_dim when a wider kernel runs): return
        // head_dim-wide rows.
        let values = stored
            .chunks(width)
            .flat_map(|row| &row[..p.head_dim])
            .copied()
            .collect();
        let scales = download::<f32>(rt, self.scratch.at(scales), rows * scales_per_head)?;
        Ok((values, scales))
    }

    /// Copies K's mean over the sequence (`[batch][kv_heads][head_dim]`) to the host, when
    /// smoothing is on.
    pub fn k_mean_to_host(&self, rt: &Runtime) -> Result<Option<Vec<f32>>> {
        let p = &self.problem;
        match self.scratch.layout.k_mean {
            Some(off) => Ok(Some(download::<f32>(
                rt,
                self.scratch.at(off),
                p.batch * p.kv_heads * p.head_dim,
            )?)),
            None => Ok(None),
        }
    }
    /// Copies the 8-bit P·V's V (INT8 or e4m3 Vᵀ, per-channel mean and scales, `kernel head_dim`
    /// channels) to the host, when this call prepared it ([`PvPrecision::Int8`],
    /// [`PvPrecision::Fp8`]); in the layout of
    /// [`reference::v8::QuantizedV8`](crate::reference::v8::QuantizedV8).
    pub fn v8_to_host(&self, rt: &Runtime) -> Result<Option<QuantizedV8>> {
        let (p, hd) = (&self.problem, self.kernel.head_dim);
        let Some(r) = self.scratch.layout.v8 else {
            return Ok(None);
        };
        let heads = p.batch * p.kv_heads;
        let padded_seq = padded_len(p.kv_len, V8_TILE);
        Ok(Some(QuantizedV8 {
            data: download::<i8>(rt, self.scratch.at(r.vt), heads * hd * padded_seq)?,
            format: if self.kernel.fp8 {
                VFormat::E4m3
            } else {
                VFormat::Int8
            },
            mean: download::<f32>(rt, self.scratch.at(r.mean), heads * hd)?,
            scale: download::<f32>(rt, self.scratch.at(r.scale), heads * 2 * hd)?,
            batch: p.batch,
            heads: p.kv_heads,
            seq: p.kv_len,
            head_dim: p.head_dim,
            out_head_dim: hd,
            padded_seq,
        }))
    }
}

/// Synchronous copy of `len` elements of scratch memory to the host.
fn download<T: Copy + Default>(rt: &Runtime, ptr: u64, len: usize) -> Result<Vec<T>> {
    let mut host = vec![T::default(); len];
    rt.bind()?;
    // SAFETY: `ptr` is inside this call's scratch allocation, which holds `len` elements of T at
    // that offset (see ScratchLayout); the copy is ordered after the kernels that wrote it, and we
    // wait for it before returning the buffer.
    let copied = unsafe {
        cudarc::driver::result::memcpy_dtoh_async(&mut host, ptr, rt.stream().cu_stream())
    };
    copied.op("copying scratch memory to the host")?;
    rt.synchronize()?;
    Ok(host)
}
