//! Enqueuing one call's kernels on the runtime's stream: preparation (K mean, INT8 quantization
//! of Q and K, LSE bias, V to f16) into scratch memory, then the attention kernel the dispatch
//! chose (and, for a head_dim zero-padded on the sm_90a kernel, the copy of the real output
//! columns; the portable kernel stores only the caller's columns itself).

use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr};

use crate::device::runtime::{ModuleKind, Runtime};
use crate::device::tensor::{AccessGuard, TensorView, TensorViewMut};
use crate::device_config::{
    attn_smem_bytes, cta_q, names, padded_len, quant_smem_bytes, quant_threads, ATTN_THREADS,
    CONVERT_THREADS, K_BLOCK, LOG2_E, MEAN_SEGMENT_ROWS, MEAN_SEQ_LANES, Q_BLOCK, V8_QUANT_THREADS,
    V8_TILE,
};
use crate::launch::dispatch::SelectedKernel;
use crate::launch::hopper;
use crate::launch::scratch::{ScratchLayout, ScratchShape, V8Regions};
use crate::launch::validate::Problem;
use crate::params::{
    AttnParams, ColumnCopyParams, ConvertParams, LseBiasParams, MeanParams, PrepareParams,
    QuantParams, V8Params,
};
use crate::types::dtype::DType;
use crate::types::error::{Error, Result};
use crate::types::options::Options;

// SAFETY: plain-old-data `#[repr(C)]` structs of integers and floats, laid out exactly as the
// device crate (same source file) expects them.
unsafe impl DeviceRepr for AttnParams {}
unsafe impl DeviceRepr for QuantParams {}
unsafe impl DeviceRepr for MeanParams {}
unsafe impl DeviceRepr for ConvertParams {}
unsafe impl DeviceRepr for LseBiasParams {}
unsafe impl DeviceRepr for PrepareParams {}
unsafe impl DeviceRepr for ColumnCopyParams {}
unsafe impl DeviceRepr for V8Params {}

/// Where one call's quantized data lives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scratch {
    pub(crate) base: u64,
    pub(crate) layout: ScratchLayout,
}

impl Scratch {
    pub(crate) fn at(&self, offset: usize) -> u64 {
        self.base + offset as u64
    }
}

pub(crate) fn scratch_layout(
    p: &Problem,
    opts: &Options,
    lse: bool,
    kernel: &SelectedKernel,
) -> Result<ScratchLayout> {
    // A zero-padded problem reads V copied `kernel.head_dim` wide; only the sm_90a kernels also
    // need a padded output (the portable kernel stores the caller's columns itself).
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
        copy_v: !kernel.pv8 && (p.in_dtype == DType::BF16 || padded),
        pad_output: padded && kernel.module == ModuleKind::Hopper,
        v8: kernel.pv8,
    })
}

/// Enqueues K mean, Q/K quantization, LSE bias and the V conversion (to f16, or for the 8-bit
/// P·V to the INT8 Vᵀ) into `scratch`.
pub(crate) fn enqueue_prepare(
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
            // The fused launch runs q_threads (2·head_dim rounded up to whole warps); the sums'
            // extra threads, if any, stay idle.
            debug_assert!(
                sum_threads <= q_threads,
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
            let smem = quant_smem_bytes(q_threads as usize) as u32;
            launch(rt, names::QUANTIZE, grid, q_threads, smem, &q_params)?;
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
    let k_threads = quant_threads(K_BLOCK, p.head_dim);
    launch(
        rt,
        names::QUANTIZE,
        grid,
        k_threads as u32,
        quant_smem_bytes(k_threads) as u32,
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
    if let Some(v8) = l.v8 {
        enqueue_v8(rt, v, p, kernel.head_dim, scratch, &v8)?;
    }
    Ok(())
}

/// The three launches of the 8-bit V (`kernels-gpu/src/v8.rs`): segment statistics, per-channel
/// mean and scales, then the INT8 Vᵀ with `kernel_head_dim` rows per head.
fn enqueue_v8(
    rt: &Runtime,
    v: &TensorView,
    p: &Problem,
    kernel_head_dim: usize,
    scratch: &Scratch,
    regions: &V8Regions,
) -> Result<()> {
    let (v_ptr, _v_guard) = v.device_ptr(rt.stream());
    let vs = v.strides();
    let params = V8Params {
        v: v_ptr,
        partials: scratch.at(regions.partials),
        mean: scratch.at(regions.mean),
        scale: scratch.at(regions.scale),
        out: scratch.at(regions.vt),
        v_stride: [vs[0], vs[1], vs[2]],
        seq: p.kv_len as u32,
        heads: p.kv_heads as u32,
        head_dim: p.head_dim as u32,
        in_bf16: u32::from(p.in_dtype == DType::BF16),
        out_head_dim: kernel_head_dim as u32,
        _pad: 0,
    };
    let (heads, batch) = (p.kv_heads as u32, p.batch as u32);
    let segments = p.kv_len.div_ceil(MEAN_SEGMENT_ROWS) as u32;
    let stats_threads = (p.head_dim / 8 * MEAN_SEQ_LANES) as u32;
    launch(
        rt,
        names::V8_STATS,
        (segments, heads, batch),
        stats_threads,
        0,
        &params,
    )?;
    let finalize_threads = kernel_head_dim as u32;
    launch(
        rt,
        names::V8_FINALIZE,
        (heads, batch, 1),
        finalize_threads,
        0,
        &params,
    )?;
    let tiles = (padded_len(p.kv_len, V8_TILE) / V8_TILE) as u32;
    launch(
        rt,
        names::V8_QUANTIZE,
        (tiles, heads, batch),
        V8_QUANT_THREADS as u32,
        0,
        &params,
    )
}

/// Enqueues the attention kernel `kernel` on prepared scratch data. When the kernel's head_dim is
/// larger than the problem's (zero-padded), the portable kernel stores the caller's columns
/// directly; the sm_90a kernel writes a padded output in scratch memory and a copy kernel moves
/// the real columns into `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn enqueue_attend(
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
        // The INT8 Vᵀ's layout is fixed ([batch][kv_heads][hd][padded kv_len]).
        _ if l.v8.is_some() => (l.v8.map_or(0, |r| scratch.at(r.vt)), [0; 3], None),
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
        v_scale: l.v8.map_or(0, |r| scratch.at(r.scale)),
        v_mean: l.v8.map_or(0, |r| scratch.at(r.mean)),
        v_stride,
        o_stride: kernel_o_stride,
        qo_len: p.qo_len as u32,
        kv_len: p.kv_len as u32,
        q_heads: p.q_heads as u32,
        kv_heads: p.kv_heads as u32,
        out_bf16,
        head_dim: p.head_dim as u32,
    };
    if kernel.module == ModuleKind::Hopper {
        // SAFETY: `params` is the AttnParams the sm_90a kernels take (same semantics and buffers
        // as the portable kernel's, `hd`-wide), validated and allocated as above; the guards live
        // until after the launch.
        unsafe {
            hopper::launch_hopper_attention(rt, kernel.name, hd, kernel.pv8, p.batch, &params)?
        };
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

/// Launches a kernel of the portable module with one by-value parameter struct.
pub(crate) fn launch<P: DeviceRepr>(
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
