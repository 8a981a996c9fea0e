//! The library call: `sageattn` = validate → prepare (K mean, INT8 quantization of Q and K, V to
//! f16 when bf16) → attend (dispatch to the compiled variant, launch on the caller's stream).
//!
//! Causal masking is **bottom-right aligned**, as in FlashAttention ≥ 2.1: with `qo_len` queries
//! and `kv_len` keys, query `i` sees key `j` iff `j <= i + kv_len - qo_len`. (The official
//! SageAttention aligns top-left; the two agree when `qo_len == kv_len`.) A query that sees no key
//! gets a zero output row and an LSE of `-inf`.

use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr};

use crate::device_config::{
    attn_smem_bytes, cta_q, names, padded_len, quant_threads, ATTN_THREADS, CONVERT_THREADS,
    K_BLOCK, LOG2_E, MEAN_SEGMENT_ROWS, MEAN_SEQ_LANES, Q_BLOCK, SUPPORTED_HEAD_DIMS,
};
use crate::error::{CudaResultExt, Error, Result};
use crate::hopper;
use crate::params::{
    AttnParams, ColumnCopyParams, ConvertParams, LseBiasParams, MeanParams, PrepareParams,
    QuantParams,
};
use crate::runtime::{ModuleKind, Runtime};
use crate::scratch::{DeviceAlloc, ScratchLayout, ScratchShape};
use crate::tensor::{AccessGuard, DType, Layout, Tensor, TensorView, TensorViewMut};

// SAFETY: plain-old-data `#[repr(C)]` structs of integers and floats, laid out exactly as the
// device crate (same source file) expects them.
unsafe impl DeviceRepr for AttnParams {}
unsafe impl DeviceRepr for QuantParams {}
unsafe impl DeviceRepr for MeanParams {}
unsafe impl DeviceRepr for ConvertParams {}
unsafe impl DeviceRepr for LseBiasParams {}
unsafe impl DeviceRepr for PrepareParams {}
unsafe impl DeviceRepr for ColumnCopyParams {}

/// How P·V accumulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PvAccum {
    /// f16 accumulator within each 64-key tile, summed into an f32 running output (SageAttention's
    /// default; fastest).
    #[default]
    F16,
    /// f32 accumulator throughout (slower, slightly more accurate).
    F32,
}

/// Which attention kernel runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The fastest kernel for the device: on Hopper (sm_90) the wgmma kernel for head_dim 64 and
    /// 128 and the portable kernel's f32-accumulator variant for head_dim 96 (an f16 accumulator is
    /// not faster on Hopper, so [`PvAccum::F16`] gets the more accurate f32 result there);
    /// elsewhere the portable kernel as [`PvAccum`] asks.
    #[default]
    Auto,
    /// The portable mma.sync kernel (sm_80+), which honours [`PvAccum`] on every device.
    Portable,
}

/// Options of [`sageattn`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Causal mask, bottom-right aligned (see the module docs).
    pub causal: bool,
    /// Subtract K's mean over the sequence before quantizing (default on): exact for softmax,
    /// and much smaller INT8 error when K has channel-wise offsets.
    pub smooth_k: bool,
    /// Softmax scale; `None` = `1/sqrt(head_dim)`.
    pub sm_scale: Option<f32>,
    /// Memory layout of the output [`sageattn`] allocates.
    pub layout: Layout,
    /// P·V accumulation.
    pub pv_accum: PvAccum,
    /// Also return the log-sum-exp (natural log) of each query row, f32 `[batch, q_heads, qo_len]`.
    pub return_lse: bool,
    /// Kernel selection (default: the fastest for the device).
    pub backend: Backend,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            causal: false,
            smooth_k: true,
            sm_scale: None,
            layout: Layout::Hnd,
            pv_accum: PvAccum::F16,
            return_lse: false,
            backend: Backend::Auto,
        }
    }
}

/// Result of [`sageattn`]: the output (dtype of Q, layout of [`Options::layout`]) and the LSE.
pub struct Output {
    /// Attention output, logical shape `[batch, q_heads, qo_len, head_dim]`.
    pub o: Tensor,
    /// Natural-log LSE per query row, `[batch][q_heads][qo_len]` contiguous, when requested.
    pub lse: Option<CudaSlice<f32>>,
}

/// The checked geometry of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Problem {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    qo_len: usize,
    kv_len: usize,
    head_dim: usize,
    in_dtype: DType,
    sm_scale: f32,
}

/// Largest sequence length: the kernels index rows with 32-bit integers and pad to 128.
const MAX_SEQ: usize = (i32::MAX as usize) - 1024;
/// Largest batch and head count: CUDA's grid y/z limit.
const MAX_GRID_YZ: usize = 65_535;

/// Runs SageAttention and allocates the output (and LSE when requested).
///
/// `q`: `[batch, q_heads, qo_len, head_dim]`, `k`/`v`: `[batch, kv_heads, kv_len, head_dim]`
/// (logical order; any strides with a contiguous last dim, see [`TensorView::validate`]);
/// f16 or bf16 (all three the same); head_dim 64, 96 or 128; `q_heads % kv_heads == 0` (GQA/MQA).
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
    let layout = scratch_layout(problem, opts, lse.is_some(), &kernel)?;
    rt.with_workspace(layout.bytes, |base| {
        let scratch = Scratch { base, layout };
        enqueue_prepare(rt, q, k, v, problem, &kernel, &scratch)?;
        enqueue_attend(rt, problem, &kernel, &scratch, v, out, lse)
    })
}

/// Where one call's quantized data lives.
#[derive(Clone, Copy, Debug)]
struct Scratch {
    base: u64,
    layout: ScratchLayout,
}

impl Scratch {
    fn at(&self, offset: usize) -> u64 {
        self.base + offset as u64
    }
}

fn scratch_layout(
    p: &Problem,
    opts: &Options,
    lse: bool,
    kernel: &SelectedKernel,
) -> Result<ScratchLayout> {
    let padded = kernel.head_dim != p.head_dim;
    ScratchLayout::new(ScratchShape {
        batch: p.batch,
        q_heads: p.q_heads,
        kv_heads: p.kv_heads,
        qo_len: p.qo_len,
        kv_len: p.kv_len,
        head_dim: p.head_dim,
        kernel_head_dim: kernel.head_dim,
        smooth_k: opts.smooth_k,
        lse_bias: opts.smooth_k && lse,
        copy_v: p.in_dtype == DType::BF16 || padded,
        pad_output: padded,
    })
}

/// The kernel for this problem, or the typed error when none exists.
fn select(rt: &Runtime, p: &Problem, opts: &Options) -> Result<SelectedKernel> {
    selected_kernel(rt, p.head_dim, opts).ok_or(Error::UnsupportedHeadDim {
        head_dim: p.head_dim,
        supported: &SUPPORTED_HEAD_DIMS,
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
        let layout = scratch_layout(&problem, opts, opts.return_lse, &kernel)?;
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
        enqueue_attend(rt, p, &self.kernel, &self.scratch, v, out, lse)
    }

    /// Copies the quantized Q (`[batch][q_heads][padded_qo][head_dim]`, padded to 128 rows) and
    /// its scales (`[batch][q_heads][q_blocks]`) to the host, for inspection and tests.
    pub fn q_quantized_to_host(&self, rt: &Runtime) -> Result<(Vec<i8>, Vec<f32>)> {
        let (p, l) = (&self.problem, &self.scratch.layout);
        self.quantized_to_host(rt, (l.q_i8, l.q_scale), p.q_heads, p.qo_len, Q_BLOCK)
    }

    /// Copies the quantized K (padded to 64 rows) and its scales to the host.
    pub fn k_quantized_to_host(&self, rt: &Runtime) -> Result<(Vec<i8>, Vec<f32>)> {
        let (p, l) = (&self.problem, &self.scratch.layout);
        self.quantized_to_host(rt, (l.k_i8, l.k_scale), p.kv_heads, p.kv_len, K_BLOCK)
    }

    /// Values and scales of one quantized tensor (`heads` heads of `seq` rows in `block`-row blocks).
    fn quantized_to_host(
        &self,
        rt: &Runtime,
        (values, scales): (usize, usize),
        heads: usize,
        seq: usize,
        block: usize,
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
        let scales = download::<f32>(rt, self.scratch.at(scales), rows * seq.div_ceil(block))?;
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

/// Enqueues K mean, Q/K quantization, LSE bias and the V conversion into `scratch`.
fn enqueue_prepare(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    p: &Problem,
    kernel: &SelectedKernel,
    scratch: &Scratch,
) -> Result<()> {
    let stream = rt.stream();
    let l = &scratch.layout;
    let q_blocks = p.qo_len.div_ceil(Q_BLOCK);
    let k_blocks = p.kv_len.div_ceil(K_BLOCK);
    let in_bf16 = u32::from(p.in_dtype == DType::BF16);
    let (q_ptr, _q_guard) = q.device_ptr(stream);
    let (k_ptr, _k_guard) = k.device_ptr(stream);
    let qs = q.strides();
    let ks = k.strides();
    let mean_ptr = l.k_mean.map(|off| scratch.at(off));

    let q_params = QuantParams {
        x: q_ptr,
        mean: 0,
        out: scratch.at(l.q_i8),
        scale: scratch.at(l.q_scale),
        x_stride: [qs[0], qs[1], qs[2]],
        mult: p.sm_scale * LOG2_E,
        block: Q_BLOCK as u32,
        seq: p.qo_len as u32,
        heads: p.q_heads as u32,
        head_dim: p.head_dim as u32,
        in_bf16,
        out_head_dim: kernel.head_dim as u32,
        _pad: 0,
    };
    let q_threads = quant_threads(Q_BLOCK, p.head_dim) as u32;
    match (mean_ptr, l.k_partials) {
        (Some(mean), Some(partials)) => {
            // Q quantization and the K segment sums are independent: one launch for both.
            let mean_params = MeanParams {
                k: k_ptr,
                partials: scratch.at(partials),
                mean,
                k_stride: [ks[0], ks[1], ks[2]],
                seq: p.kv_len as u32,
                heads: p.kv_heads as u32,
                head_dim: p.head_dim as u32,
                in_bf16,
            };
            let sum_threads = (p.head_dim / 8 * MEAN_SEQ_LANES) as u32;
            debug_assert_eq!(
                sum_threads, q_threads,
                "the fused launch needs one block size"
            );
            let q_ctas = q_blocks * p.q_heads * p.batch;
            let sum_ctas = p.kv_len.div_ceil(MEAN_SEGMENT_ROWS) * p.kv_heads * p.batch;
            let ctas = u32::try_from(q_ctas + sum_ctas)
                .ok()
                .filter(|&c| c <= i32::MAX as u32)
                .ok_or_else(|| Error::TooLarge {
                    tensor: "q",
                    reason: format!("{} blocks exceed the grid limit", q_ctas + sum_ctas),
                })?;
            let params = PrepareParams {
                quant: q_params,
                mean: mean_params,
                q_ctas: q_ctas as u32,
                _pad: 0,
            };
            let smem = (MEAN_SEQ_LANES * p.head_dim * 4) as u32;
            launch(
                rt,
                names::QUANTIZE_Q_AND_SUM_K,
                (ctas, 1, 1),
                q_threads,
                smem,
                &params,
            )?;
            let grid = (p.kv_heads as u32, p.batch as u32, 1);
            launch(rt, names::K_MEAN, grid, p.head_dim as u32, 0, &mean_params)?;
        }
        _ => {
            let grid = (q_blocks as u32, p.q_heads as u32, p.batch as u32);
            launch(rt, names::QUANTIZE, grid, q_threads, 32, &q_params)?;
        }
    }

    let k_params = QuantParams {
        x: k_ptr,
        mean: mean_ptr.unwrap_or(0),
        out: scratch.at(l.k_i8),
        scale: scratch.at(l.k_scale),
        x_stride: [ks[0], ks[1], ks[2]],
        mult: 1.0,
        block: K_BLOCK as u32,
        seq: p.kv_len as u32,
        heads: p.kv_heads as u32,
        ..q_params
    };
    let grid = (k_blocks as u32, p.kv_heads as u32, p.batch as u32);
    launch(
        rt,
        names::QUANTIZE,
        grid,
        quant_threads(K_BLOCK, p.head_dim) as u32,
        32,
        &k_params,
    )?;

    if let (Some(mean), Some(bias)) = (mean_ptr, l.lse_bias) {
        let rows = p.batch * p.q_heads * p.qo_len;
        let params = LseBiasParams {
            q: q_ptr,
            mean,
            bias: scratch.at(bias),
            q_stride: [qs[0], qs[1], qs[2]],
            sm_scale: p.sm_scale,
            seq: p.qo_len as u32,
            heads: p.q_heads as u32,
            kv_heads: p.kv_heads as u32,
            head_dim: p.head_dim as u32,
            in_bf16,
            batch: p.batch as u32,
            _pad: 0,
        };
        let blocks = rows.div_ceil(256).min(1 << 16) as u32;
        launch(rt, names::LSE_BIAS, (blocks, 1, 1), 256, 0, &params)?;
    }

    if let Some(v_f16) = l.v_f16 {
        let (v_ptr, _v_guard) = v.device_ptr(stream);
        let vs = v.strides();
        let params = ConvertParams {
            x: v_ptr,
            out: scratch.at(v_f16),
            x_stride: [vs[0], vs[1], vs[2]],
            seq: p.kv_len as u32,
            heads: p.kv_heads as u32,
            head_dim: p.head_dim as u32,
            batch: p.batch as u32,
            out_head_dim: kernel.head_dim as u32,
            in_bf16,
        };
        let chunks = p.batch * p.kv_heads * p.kv_len * kernel.head_dim / 8;
        let blocks = chunks.div_ceil(CONVERT_THREADS).min(1 << 20) as u32;
        launch(
            rt,
            names::V_TO_F16,
            (blocks, 1, 1),
            CONVERT_THREADS as u32,
            0,
            &params,
        )?;
    }
    Ok(())
}

/// Enqueues the attention kernel `kernel` on prepared scratch data; when the kernel's head_dim is
/// larger than the problem's (d = 96 on the d = 128 wgmma kernel, zero-padded), it writes a padded
/// output in scratch memory and a copy kernel moves the real columns into `out`.
#[allow(clippy::too_many_arguments)]
fn enqueue_attend(
    rt: &Runtime,
    p: &Problem,
    kernel: &SelectedKernel,
    scratch: &Scratch,
    v: &TensorView,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    let stream = rt.stream();
    let l = &scratch.layout;
    let hd = kernel.head_dim;
    let (v_ptr, v_stride, _v_guard): (u64, [i64; 3], Option<AccessGuard>) = match l.v_f16 {
        Some(off) => (
            scratch.at(off),
            contiguous_strides(p.kv_heads, p.kv_len, hd),
            None,
        ),
        None => {
            let (ptr, guard) = v.device_ptr(stream);
            let vs = v.strides();
            (ptr, [vs[0], vs[1], vs[2]], Some(guard))
        }
    };
    let os = out.strides();
    let out_bf16 = u32::from(out.dtype() == DType::BF16);
    let (o_ptr, _o_guard) = out.device_ptr_mut(stream);
    let (kernel_o, kernel_o_stride) = match l.o_pad {
        Some(off) => (scratch.at(off), contiguous_strides(p.q_heads, p.qo_len, hd)),
        None => (o_ptr, [os[0], os[1], os[2]]),
    };
    let lse_ptr = lse.map(|l| l.device_ptr_mut(stream));
    let params = AttnParams {
        q: scratch.at(l.q_i8),
        k: scratch.at(l.k_i8),
        v: v_ptr,
        o: kernel_o,
        lse: lse_ptr.as_ref().map_or(0, |(ptr, _)| *ptr),
        lse_bias: l.lse_bias.map_or(0, |off| scratch.at(off)),
        q_scale: scratch.at(l.q_scale),
        k_scale: scratch.at(l.k_scale),
        v_stride,
        o_stride: kernel_o_stride,
        qo_len: p.qo_len as u32,
        kv_len: p.kv_len as u32,
        q_heads: p.q_heads as u32,
        kv_heads: p.kv_heads as u32,
        out_bf16,
        _pad: 0,
    };
    if kernel.module == ModuleKind::Hopper {
        // SAFETY: `params` is the AttnParams the sm_90a kernels take (same semantics and buffers
        // as the portable kernel's, `hd`-wide), validated and allocated as above; the guards live
        // until after the launch.
        unsafe { hopper::launch_hopper_attention(rt, kernel.name, hd, p.batch, &params)? };
    } else {
        let grid = (
            p.qo_len.div_ceil(cta_q(hd, kernel.pv_f32)) as u32,
            p.q_heads as u32,
            p.batch as u32,
        );
        let smem = attn_smem_bytes(hd, kernel.pv_f32) as u32;
        launch(rt, kernel.name, grid, ATTN_THREADS as u32, smem, &params)?;
    }
    if l.o_pad.is_some() {
        let copy = ColumnCopyParams {
            src: kernel_o,
            dst: o_ptr,
            src_stride: kernel_o_stride,
            dst_stride: [os[0], os[1], os[2]],
            batch: p.batch as u32,
            heads: p.q_heads as u32,
            seq: p.qo_len as u32,
            cols: p.head_dim as u32,
        };
        let chunks = p.batch * p.q_heads * p.qo_len * p.head_dim / 8;
        let blocks = chunks.div_ceil(CONVERT_THREADS).min(1 << 20) as u32;
        launch(
            rt,
            names::COPY_COLUMNS,
            (blocks, 1, 1),
            CONVERT_THREADS as u32,
            0,
            &copy,
        )?;
    }
    Ok(())
}

/// Element strides (batch, head, seq) of a contiguous `[b][heads][seq][width]` buffer.
fn contiguous_strides(heads: usize, seq: usize, width: usize) -> [i64; 3] {
    let (h, s, w) = (heads as i64, seq as i64, width as i64);
    [h * s * w, s * w, w]
}

/// The attention kernel a call runs (see [`selected_kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectedKernel {
    /// The module holding it.
    pub module: ModuleKind,
    /// Its entry name.
    pub name: &'static str,
    /// Whether P·V accumulates in f32 (always on the Hopper kernel).
    pub pv_f32: bool,
    /// The head_dim it is compiled for: the problem's, or larger when the problem is zero-padded
    /// to run on it (d = 96 on the d = 128 wgmma kernel).
    pub head_dim: usize,
}

/// The kernel `sageattn` runs for `head_dim` and `opts` on this runtime's device: on Hopper with
/// [`Backend::Auto`] the sm_90a wgmma kernel (d = 96 zero-padded to the d = 128 one: a third more
/// arithmetic, still faster than the portable kernel), else the portable variant. `None` for an
/// unsupported head_dim. The one place that decides; launches and tools call it.
pub fn selected_kernel(rt: &Runtime, head_dim: usize, opts: &Options) -> Option<SelectedKernel> {
    if !SUPPORTED_HEAD_DIMS.contains(&head_dim) {
        return None;
    }
    if opts.backend == Backend::Auto && hopper::hopper_available(rt) {
        let kernel_dim = if head_dim == 96 { 128 } else { head_dim };
        if let Some(name) = hopper::hopper_attention_kernel_name(kernel_dim, opts.causal) {
            return Some(SelectedKernel {
                module: ModuleKind::Hopper,
                name,
                pv_f32: true,
                head_dim: kernel_dim,
            });
        }
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

/// Launches a kernel of the portable module with one by-value parameter struct.
fn launch<P: DeviceRepr>(
    rt: &Runtime,
    name: &str,
    grid: (u32, u32, u32),
    threads: u32,
    smem: u32,
    params: &P,
) -> Result<()> {
    let kernel = rt.function(ModuleKind::Portable, name)?;
    // SAFETY: `params` is the struct the named kernel takes (both sides include params.rs); every
    // pointer in it was validated (inputs/outputs) or allocated (scratch) for the extents the
    // kernel accesses with this grid, and the callers keep their access guards alive until this
    // returns.
    unsafe { rt.launch(&kernel, grid, (threads, 1, 1), smem, params) }
}

/// Checks the inputs against the device: compute capability and that every view is memory of the
/// runtime's device. Then the pure checks of [`check_problem`].
fn validate_inputs(
    rt: &Runtime,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    opts: &Options,
) -> Result<Problem> {
    let problem = check_problem(q, k, v, opts)?;
    rt.require_sm80()?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        t.check_device_memory(name, rt)?;
    }
    Ok(problem)
}

/// Everything about the inputs and options that needs no driver call; returns the geometry.
fn check_problem(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    opts: &Options,
) -> Result<Problem> {
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
    if !SUPPORTED_HEAD_DIMS.contains(&head_dim) {
        return Err(Error::UnsupportedHeadDim {
            head_dim,
            supported: &SUPPORTED_HEAD_DIMS,
        });
    }
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
fn validate_output(
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
fn check_no_overlap(out: &TensorViewMut, inputs: &[(&'static str, &TensorView)]) -> Result<()> {
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
        let e = qkv(f16, f16, f16, [1, 2, 64, 80], [1, 2, 64, 80]).unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedHeadDim { head_dim: 80, .. }),
            "{e}"
        );
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
