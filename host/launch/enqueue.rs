//! Enqueuing one call's kernels on the runtime's stream: preparation (K mean, INT8 quantization
//! of Q and K, LSE bias, V to f16 or to the 8-bit Vᵀ) into scratch memory, as one to three
//! launches of the fused preparation kernel ([`plan_prepare`]), then the attention kernel the
//! dispatch chose (and, for a head_dim zero-padded on the sm_90a kernel, the copy of the real
//! output columns; the portable kernel stores only the caller's columns itself).

use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr};

use crate::device::runtime::{ModuleKind, Runtime};
use crate::device::tensor::{AccessGuard, TensorView, TensorViewMut};
use crate::device_config::{
    attn_smem_bytes, cta_q, k_head_smem_bytes, k_head_supported, k_head_threads, names, padded_len,
    prep_job, prep_smem_bytes, prep_threads, prep_threads_ok, pv8_cta_q, pv8_smem_bytes,
    pv8_threads, ATTN_THREADS, CONVERT_CHUNKS_PER_THREAD, CONVERT_THREADS, K_BLOCK,
    K_HEAD_MAX_KV_LEN, LOG2_E, MEAN_FOLD_MAX_SEGMENTS, MEAN_SEGMENT_ROWS, Q_BLOCK,
    V8_FOLD_MAX_SEGMENTS, V8_TILE,
};
use crate::launch::dispatch::SelectedKernel;
use crate::launch::hopper;
use crate::launch::scratch::{ScratchLayout, ScratchShape};
use crate::launch::tma::{f16_tensor_maps, pv8_tensor_maps};
use crate::launch::validate::Problem;
use crate::params::{
    AttnParams, ColumnCopyParams, ConvertParams, LseBiasParams, MeanParams, PrepareParams,
    QuantParams, TmaMapsParams, V8Params,
};
use crate::types::dtype::DType;
use crate::types::error::{Error, Result};
use crate::types::options::Options;

// SAFETY: plain-old-data `#[repr(C)]` structs of integers and floats, laid out exactly as the
// device crate (same source file) expects them.
unsafe impl DeviceRepr for AttnParams {}
unsafe impl DeviceRepr for PrepareParams {}
unsafe impl DeviceRepr for ColumnCopyParams {}
unsafe impl DeviceRepr for TmaMapsParams {}

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

/// The scratch layout of a call; `quantize_q`: whether the preparation quantizes Q (false when
/// the attention kernel is given the caller's Q, see [`SelectedKernel::quantizes_q`]).
pub(crate) fn scratch_layout(
    p: &Problem,
    opts: &Options,
    lse: bool,
    kernel: &SelectedKernel,
    quantize_q: bool,
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
        quantize_q,
        smooth_k: opts.smooth_k,
        lse_bias: opts.smooth_k && lse,
        copy_v: !kernel.pv8 && (p.in_dtype == DType::BF16 || padded),
        pad_output: padded && kernel.module == ModuleKind::Hopper,
        v8: kernel.pv8,
        tma: kernel.module == ModuleKind::Hopper && (kernel.pv8 || kernel.head_dim != 96),
    })
}

/// One launch of the fused preparation kernel (`sage_prepare`): how many CTAs run each job
/// (`prep_job` order), and the block size they share (`prep_threads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PrepLaunch {
    pub(crate) ctas: [usize; prep_job::COUNT],
    pub(crate) threads: usize,
}

impl PrepLaunch {
    fn new(threads: usize) -> Self {
        PrepLaunch {
            ctas: [0; prep_job::COUNT],
            threads,
        }
    }

    fn is_empty(&self) -> bool {
        self.ctas.iter().all(|&c| c == 0)
    }

    /// The entry that runs it: `sage_prepare_sum_k` / `sage_prepare_quant_k` when K's segment
    /// sums / K's quantization are its only job, `sage_prepare_stats8` / `sage_prepare_quant8`
    /// when it holds only the 8-bit preparation's statistics / quantization jobs (each at 64
    /// registers: more CTAs per SM than `sage_prepare`'s register bound allows), else
    /// `sage_prepare`.
    pub(crate) fn entry(&self) -> &'static str {
        use prep_job::*;
        let only = |job: usize| (0..COUNT).all(|j| (self.ctas[j] > 0) == (j == job));
        let within = |jobs: &[usize]| (0..COUNT).all(|j| self.ctas[j] == 0 || jobs.contains(&j));
        if only(SUM_K) {
            names::PREPARE_SUM_K
        } else if only(QUANT_K) {
            names::PREPARE_QUANT_K
        } else if within(&[V8_STATS, SUM_K]) {
            names::PREPARE_STATS8
        } else if within(&[QUANT_K, V8_QUANT]) {
            names::PREPARE_QUANT8
        } else {
            names::PREPARE
        }
    }

    /// The grid size.
    pub(crate) fn grid(&self) -> usize {
        self.ctas.iter().sum()
    }

    /// Dynamic shared memory: the most any of its jobs needs.
    pub(crate) fn smem_bytes(&self, head_dim: usize, kernel_head_dim: usize) -> usize {
        (0..prep_job::COUNT)
            .filter(|&j| self.ctas[j] > 0)
            .map(|j| prep_smem_bytes(j, head_dim, kernel_head_dim))
            .max()
            .unwrap_or(0)
    }

    /// `PrepareParams::ends`: each job's exclusive CTA end; `TooLarge` past the grid limit.
    fn ends(&self) -> Result<[u32; prep_job::COUNT]> {
        let mut ends = [0u32; prep_job::COUNT];
        let mut end = 0usize;
        for (e, &c) in ends.iter_mut().zip(&self.ctas) {
            end += c;
            *e = u32::try_from(end)
                .ok()
                .filter(|&x| x <= i32::MAX as u32)
                .ok_or_else(|| Error::TooLarge {
                    tensor: "q",
                    reason: format!("{} preparation blocks exceed the grid limit", self.grid()),
                })?;
        }
        Ok(ends)
    }
}

/// The preparation's launches, in stream order, and whether the consumers of the K mean and of
/// the 8-bit V scales reduce the segment statistics themselves (`PrepareParams::fold_k`,
/// `fold_v8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrepPlan {
    /// CTAs of the one-CTA-per-(batch, kv head) K preparation (`sage_prepare_k_head`: K's segment
    /// sums, mean and INT8 K in one launch, before `launches`); 0 when the `SUM_K` / `QUANT_K`
    /// jobs of `launches` prepare K ([`use_k_head`]).
    pub(crate) k_head: usize,
    pub(crate) launches: Vec<PrepLaunch>,
    pub(crate) fold_k: bool,
    pub(crate) fold_v8: bool,
}

/// What the preparation does for a problem of this shape (pure: tested on the CPU). Every launch
/// has `prep_threads(head_dim)` threads per CTA (`head_dim/8 × 16`, the segment jobs' geometry):
///
/// 1. Q quantization, K segment sums (smoothing), 8-bit V statistics, V to f16 — and K
///    quantization when K is not smoothed;
/// 2. the K mean when K has more than `MEAN_FOLD_MAX_SEGMENTS` segments (kv_len > 1024), the
///    8-bit V scales when V has more than `V8_FOLD_MAX_SEGMENTS` (kv_len > 1024); one CTA per
///    (batch, kv head) each; no launch when neither applies;
/// 3. K quantization (smoothing), the 8-bit Vᵀ and the LSE bias; each CTA folds in the mean or
///    scales that step 2 did not compute.
///
/// So 2 launches for f16 up to kv_len 1024 (1 without smoothing) and for the 8-bit P·V up to 1024;
/// 3 beyond.
///
/// When [`use_k_head`] says so (short smoothed K, enough (batch, kv head) pairs to fill the
/// `sm_count` SMs), K is instead prepared by one `sage_prepare_k_head` launch, one CTA per pair,
/// first; the other jobs (Q quantization, V to f16, LSE bias from the mean that launch
/// published) share one launch after it.
pub(crate) fn plan_prepare(s: &ScratchShape, sm_count: usize) -> PrepPlan {
    use prep_job::*;
    let hd = s.head_dim;
    if use_k_head(s, sm_count) {
        let threads = prep_threads(hd);
        let mut rest = PrepLaunch::new(threads);
        if s.quantize_q {
            rest.ctas[QUANT_Q] = s.qo_len.div_ceil(Q_BLOCK) * s.q_heads * s.batch;
        }
        if s.copy_v {
            let chunks = s.batch * s.kv_heads * s.kv_len * s.kernel_head_dim / 8;
            rest.ctas[CONVERT_V] = chunks.div_ceil(threads * CONVERT_CHUNKS_PER_THREAD);
        }
        if s.lse_bias {
            rest.ctas[LSE_BIAS] = s.qo_len.div_ceil(threads) * s.q_heads * s.batch;
        }
        return PrepPlan {
            k_head: s.batch * s.kv_heads,
            launches: if rest.is_empty() { vec![] } else { vec![rest] },
            // The LSE bias reads the mean the head CTAs stored.
            fold_k: false,
            fold_v8: false,
        };
    }
    let segments = s.kv_len.div_ceil(MEAN_SEGMENT_ROWS);
    let kv = s.batch * s.kv_heads;
    let fold_k = segments <= MEAN_FOLD_MAX_SEGMENTS;
    let fold_v8 = segments <= V8_FOLD_MAX_SEGMENTS;
    let threads = prep_threads(hd);
    let k_blocks = s.kv_len.div_ceil(K_BLOCK) * kv;

    let mut first = PrepLaunch::new(threads);
    let mut last = PrepLaunch::new(threads);
    if s.quantize_q {
        first.ctas[QUANT_Q] = s.qo_len.div_ceil(Q_BLOCK) * s.q_heads * s.batch;
    }
    if s.smooth_k {
        first.ctas[SUM_K] = segments * kv;
        last.ctas[QUANT_K] = k_blocks;
    } else {
        first.ctas[QUANT_K] = k_blocks;
    }
    if s.lse_bias {
        last.ctas[LSE_BIAS] = s.qo_len.div_ceil(threads) * s.q_heads * s.batch;
    }
    if s.copy_v {
        let chunks = kv * s.kv_len * s.kernel_head_dim / 8;
        first.ctas[CONVERT_V] = chunks.div_ceil(threads * CONVERT_CHUNKS_PER_THREAD);
    }
    if s.v8 {
        first.ctas[V8_STATS] = segments * kv;
        last.ctas[V8_QUANT] = padded_len(s.kv_len, V8_TILE) / V8_TILE * kv;
    }
    let mut launches = vec![first];
    let mut finalize = PrepLaunch::new(threads);
    if s.smooth_k && !fold_k {
        finalize.ctas[K_MEAN] = kv;
    }
    if s.v8 && !fold_v8 {
        finalize.ctas[V8_FINALIZE] = kv;
    }
    if !finalize.is_empty() {
        launches.push(finalize);
    }
    if !last.is_empty() {
        launches.push(last);
    }
    for l in &launches {
        for j in (0..COUNT).filter(|&j| l.ctas[j] > 0) {
            debug_assert!(
                prep_threads_ok(j, l.threads, hd),
                "job {j} cannot run with {} threads at head_dim {hd}",
                l.threads
            );
        }
    }
    PrepPlan {
        k_head: 0,
        launches,
        fold_k,
        fold_v8,
    }
}

/// Whether K's smoothed preparation runs as one `sage_prepare_k_head` launch, one CTA per
/// (batch, kv head) (docs/perf-notes.md, "Preparation v6"): smoothing on, the f16 P·V (the 8-bit
/// one keeps its jobs, which share launches with V's), kv_len ≤ `K_HEAD_MAX_KV_LEN`, a head_dim
/// whose groups are whole warps (`k_head_supported`), and enough pairs that the CTA waves fill
/// the `sm_count` SMs at least to 3/4 (`pairs ≥ 0.75 · waves · sm_count`: 128 pairs on 132 SMs
/// yes, 64 or 140 no). Each CTA takes one SM (up to 1024 threads), so a part-empty wave leaves
/// SMs idle while the two-launch path's small CTAs would spread over all of them.
pub(crate) fn use_k_head(s: &ScratchShape, sm_count: usize) -> bool {
    let pairs = s.batch * s.kv_heads;
    if !s.smooth_k || s.v8 || s.kv_len > K_HEAD_MAX_KV_LEN || !k_head_supported(s.head_dim) {
        return false;
    }
    if sm_count == 0 || pairs == 0 {
        return false;
    }
    let waves = pairs.div_ceil(sm_count);
    4 * pairs >= 3 * waves * sm_count
}

/// The shape [`plan_prepare`] reads, from the problem and the scratch layout that was sized for it.
fn prep_shape(p: &Problem, kernel_head_dim: usize, l: &ScratchLayout) -> ScratchShape {
    ScratchShape {
        batch: p.batch,
        q_heads: p.q_heads,
        kv_heads: p.kv_heads,
        qo_len: p.qo_len,
        kv_len: p.kv_len,
        head_dim: p.head_dim,
        kernel_head_dim,
        quantize_q: l.q.is_some(),
        smooth_k: l.k_mean.is_some(),
        lse_bias: l.lse_bias.is_some(),
        copy_v: l.v_f16.is_some(),
        pad_output: l.o_pad.is_some(),
        v8: l.v8.is_some(),
        tma: l.tma.is_some(),
    }
}

/// Enqueues the preparation into `scratch` (K mean, Q/K quantization, LSE bias and V to f16 or,
/// for the 8-bit P·V, to the INT8 Vᵀ): the launches of [`plan_prepare`].
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
    let hd = kernel.head_dim;
    let plan = plan_prepare(&prep_shape(p, hd, l), rt.sm_count() as usize);
    let in_bf16 = u32::from(p.in_dtype == DType::BF16);
    let (q_ptr, _q_guard) = q.device_ptr(stream);
    let (k_ptr, _k_guard) = k.device_ptr(stream);
    // V is read here only when it is converted or quantized.
    let (v_ptr, _v_guard) = if l.v_f16.is_some() || l.v8.is_some() {
        let (ptr, guard) = v.device_ptr(stream);
        (ptr, Some(guard))
    } else {
        (0, None)
    };
    let (qs, ks, vs) = (q.strides(), k.strides(), v.strides());
    let mean_ptr = l.k_mean.map_or(0, |off| scratch.at(off));

    let q_params = QuantParams {
        x: q_ptr,
        mean: 0,
        out: l.q.map_or(0, |r| scratch.at(r.i8)),
        scale: l.q.map_or(0, |r| scratch.at(r.scale)),
        x_stride: [qs[0], qs[1], qs[2]],
        mult: p.sm_scale * LOG2_E,
        block: Q_BLOCK as u32,
        seq: p.qo_len as u32,
        heads: p.q_heads as u32,
        head_dim: p.head_dim as u32,
        in_bf16,
        out_head_dim: hd as u32,
        _pad: 0,
    };
    let mut params = PrepareParams {
        q: q_params,
        k: QuantParams {
            x: k_ptr,
            mean: mean_ptr,
            out: scratch.at(l.k_i8),
            scale: scratch.at(l.k_scale),
            x_stride: [ks[0], ks[1], ks[2]],
            mult: 1.0,
            block: K_BLOCK as u32,
            seq: p.kv_len as u32,
            heads: p.kv_heads as u32,
            ..q_params
        },
        mean: MeanParams {
            k: k_ptr,
            partials: l.k_partials.map_or(0, |off| scratch.at(off)),
            mean: mean_ptr,
            k_stride: [ks[0], ks[1], ks[2]],
            seq: p.kv_len as u32,
            heads: p.kv_heads as u32,
            head_dim: p.head_dim as u32,
            in_bf16,
        },
        convert: ConvertParams {
            x: v_ptr,
            out: l.v_f16.map_or(0, |off| scratch.at(off)),
            x_stride: [vs[0], vs[1], vs[2]],
            seq: p.kv_len as u32,
            heads: p.kv_heads as u32,
            head_dim: p.head_dim as u32,
            batch: p.batch as u32,
            out_head_dim: hd as u32,
            in_bf16,
        },
        v8: V8Params {
            v: v_ptr,
            partials: l.v8.map_or(0, |r| scratch.at(r.partials)),
            mean: l.v8.map_or(0, |r| scratch.at(r.mean)),
            scale: l.v8.map_or(0, |r| scratch.at(r.scale)),
            out: l.v8.map_or(0, |r| scratch.at(r.vt)),
            v_stride: [vs[0], vs[1], vs[2]],
            seq: p.kv_len as u32,
            heads: p.kv_heads as u32,
            head_dim: p.head_dim as u32,
            in_bf16,
            out_head_dim: hd as u32,
            _pad: 0,
        },
        lse: LseBiasParams {
            q: q_ptr,
            bias: l.lse_bias.map_or(0, |off| scratch.at(off)),
            q_stride: [qs[0], qs[1], qs[2]],
            sm_scale: p.sm_scale,
            seq: p.qo_len as u32,
            heads: p.q_heads as u32,
            kv_heads: p.kv_heads as u32,
            head_dim: p.head_dim as u32,
            in_bf16,
            batch: p.batch as u32,
            _pad: 0,
        },
        ends: [0; prep_job::COUNT],
        fold_k: u32::from(plan.fold_k),
        fold_v8: u32::from(plan.fold_v8),
        _pad: 0,
    };
    // The FP8 module's preparation kernel is the portable one but for its 8-bit V job, which
    // writes the e4m3 Vᵀ (kernels-gpu/src/v8.rs): the FP8 P·V's, whichever module attends.
    let prep_module = if kernel.fp8 {
        ModuleKind::AdaFp8
    } else {
        ModuleKind::Portable
    };
    if plan.k_head > 0 {
        launch_in(
            rt,
            prep_module,
            names::PREPARE_K_HEAD,
            (plan.k_head as u32, 1, 1),
            k_head_threads(p.head_dim) as u32,
            k_head_smem_bytes(p.head_dim, p.kv_len) as u32,
            &params,
        )?;
    }
    for launch_spec in &plan.launches {
        params.ends = launch_spec.ends()?;
        launch_in(
            rt,
            prep_module,
            launch_spec.entry(),
            (launch_spec.grid() as u32, 1, 1),
            launch_spec.threads as u32,
            launch_spec.smem_bytes(p.head_dim, hd) as u32,
            &params,
        )?;
    }
    Ok(())
}

/// Enqueues the attention kernel `kernel` on prepared scratch data. When the kernel's head_dim is
/// larger than the problem's (zero-padded), the portable kernel stores the caller's columns
/// directly; the sm_90a kernel writes a padded output in scratch memory and a copy kernel moves
/// the real columns into `out`. `q` is the caller's Q, which the kernel quantizes itself when the
/// scratch holds no prepared Q (it must then be given; it is ignored otherwise).
#[allow(clippy::too_many_arguments)]
pub(crate) fn enqueue_attend(
    rt: &Runtime,
    p: &Problem,
    kernel: &SelectedKernel,
    scratch: &Scratch,
    q: Option<&TensorView>,
    v: &TensorView,
    out: &mut TensorViewMut,
    lse: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    let stream = rt.stream();
    let l = &scratch.layout;
    let hd = kernel.head_dim;
    let (q_raw, q_stride, _q_guard) = match (l.q, q) {
        (Some(_), _) => (0, [0; 3], None),
        (None, Some(q)) if kernel.quantizes_q() => {
            let (ptr, guard) = q.device_ptr(stream);
            let qs = q.strides();
            (ptr, [qs[0], qs[1], qs[2]], Some(guard))
        }
        (None, _) => {
            return Err(Error::InvalidOption(format!(
                "{} needs a prepared Q or the caller's Q to quantize",
                kernel.name
            )))
        }
    };
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
        q: l.q.map_or(0, |r| scratch.at(r.i8)),
        q_raw,
        k: scratch.at(l.k_i8),
        v: v_ptr,
        o: kernel_o,
        lse: lse_ptr.as_ref().map_or(0, |(ptr, _)| *ptr),
        lse_bias: l.lse_bias.map_or(0, |off| scratch.at(off)),
        q_scale: l.q.map_or(0, |r| scratch.at(r.scale)),
        k_scale: scratch.at(l.k_scale),
        v_scale: l.v8.map_or(0, |r| scratch.at(r.scale)),
        v_mean: l.v8.map_or(0, |r| scratch.at(r.mean)),
        v_stride,
        o_stride: kernel_o_stride,
        q_stride,
        qo_len: p.qo_len as u32,
        kv_len: p.kv_len as u32,
        q_heads: p.q_heads as u32,
        kv_heads: p.kv_heads as u32,
        out_bf16,
        head_dim: p.head_dim as u32,
        q_mult: p.sm_scale * LOG2_E,
        q_bf16: u32::from(p.in_dtype == DType::BF16),
        causal_chunk: 0,
        batch: p.batch as u32,
        tma: 0,
    };
    // The sm_90a kernels' K/V descriptors, when the layout has their region: always with the
    // 8-bit P·V; with f16 P·V when TMA can describe the caller's V (else the kernel copies with
    // cp.async and `params.tma` stays 0).
    let padded_k = padded_len(p.kv_len, K_BLOCK);
    let maps = match l.tma {
        Some(off) if kernel.module == ModuleKind::Hopper => {
            let maps = if kernel.pv8 {
                Some(pv8_tensor_maps(
                    params.k,
                    params.v,
                    p.batch * p.kv_heads,
                    padded_k,
                    hd,
                )?)
            } else {
                f16_tensor_maps(
                    params.k,
                    params.v,
                    params.v_stride,
                    p.batch,
                    p.kv_heads,
                    p.kv_len,
                    padded_k,
                    hd,
                )
            };
            maps.map(|maps| (scratch.at(off), maps))
        }
        _ => None,
    };
    let params = match maps {
        Some((dst, maps)) => {
            // Written by a kernel from its parameters, not copied from host memory: a CUDA graph
            // captures a kernel's parameters by value, but a host-to-device copy by its host
            // address, which would be replayed from a dead stack frame (an invalid descriptor:
            // the TMA load faults with an illegal instruction).
            launch(
                rt,
                names::STORE_TMA_MAPS,
                (1, 1, 1),
                1,
                0,
                &TmaMapsParams { dst, words: maps },
            )?;
            AttnParams { tma: dst, ..params }
        }
        None => params,
    };
    if kernel.module == ModuleKind::Hopper {
        let (name, narrow) = kernel.entry(p.qo_len, p.kv_len);
        // SAFETY: `params` is the AttnParams the sm_90a kernels take (same semantics and buffers
        // as the portable kernel's, `hd`-wide), validated and allocated as above; the guards live
        // until after the launch.
        unsafe {
            hopper::launch_hopper_attention(
                rt,
                name,
                kernel.head_dim,
                (kernel.pv8, narrow),
                kernel.causal,
                p.batch,
                &params,
            )?
        };
    } else {
        let (rows, threads, smem) = if kernel.pv8 {
            // The 8-bit P·V kernel (`attention_pv8/`, INT8 or FP8): 128-row CTAs of 8 warps,
            // 64-row CTAs of 4 above head_dim 128.
            (pv8_cta_q(hd), pv8_threads(hd), pv8_smem_bytes(hd))
        } else {
            (
                cta_q(hd, kernel.pv_f32),
                ATTN_THREADS,
                rt.occupancy_smem(attn_smem_bytes(hd, kernel.pv_f32, kernel.compact) as u32)
                    as usize,
            )
        };
        let grid = (
            p.qo_len.div_ceil(rows) as u32,
            p.q_heads as u32,
            p.batch as u32,
        );
        launch_in(
            rt,
            kernel.module,
            kernel.name,
            grid,
            threads as u32,
            smem as u32,
            &params,
        )?;
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
    launch_in(rt, ModuleKind::Portable, name, grid, threads, smem, params)
}

/// [`launch`] for a kernel of module `module` (the FP8 module shares the portable kernels'
/// parameter structs).
pub(crate) fn launch_in<P: DeviceRepr>(
    rt: &Runtime,
    module: ModuleKind,
    name: &str,
    grid: (u32, u32, u32),
    threads: u32,
    smem: u32,
    params: &P,
) -> Result<()> {
    let kernel = rt.function(module, name)?;
    // SAFETY: `params` is the struct the named kernel takes (both sides include params.rs); every
    // pointer in it was validated (inputs/outputs) or allocated (scratch) for the extents the
    // kernel accesses with this grid, and the callers keep their access guards alive until this
    // returns.
    unsafe { rt.launch(&kernel, grid, (threads, 1, 1), smem, params) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_config::{
        k_head_groups, portable_kernel_head_dim, K_HEAD_MAX_THREADS, SUPPORTED_HEAD_DIMS,
    };

    /// The H200's SM count (the shapes of `shape` have 32 (batch, kv head) pairs: too few for the
    /// one-CTA-per-head K preparation there).
    const SMS: usize = 132;

    /// The 8-bit P·V's head dims: multiples of 16 (up to 256, both kernels).
    fn has_v8(head_dim: usize) -> bool {
        head_dim.is_multiple_of(16) && head_dim <= 256
    }

    /// A problem at `head_dim` on the kernel the dispatch would pick: the sm_90a one (64, 128 or
    /// 256) for the 8-bit P·V, else the portable one (64, 96, 128 or 256); zero-padded when
    /// larger.
    fn shape(kv_len: usize, head_dim: usize, smooth_k: bool, lse: bool, v8: bool) -> ScratchShape {
        let kernel_head_dim = if v8 {
            assert!(has_v8(head_dim));
            [64, 128, 256].into_iter().find(|&k| k >= head_dim).unwrap()
        } else {
            portable_kernel_head_dim(head_dim).unwrap()
        };
        ScratchShape {
            batch: 4,
            q_heads: 32,
            kv_heads: 8,
            qo_len: kv_len + 3,
            kv_len,
            head_dim,
            kernel_head_dim,
            quantize_q: true,
            smooth_k,
            lse_bias: smooth_k && lse,
            copy_v: !v8 && kernel_head_dim != head_dim,
            pad_output: v8 && kernel_head_dim != head_dim,
            v8,
            tma: false,
        }
    }

    /// Short sequences: 2 launches on both P·V paths (1 with nothing to wait for); past a fold
    /// limit (1024 keys for K and the 8-bit V) a finalize launch comes between.
    #[test]
    fn launch_counts() {
        let k_limit = MEAN_FOLD_MAX_SEGMENTS * MEAN_SEGMENT_ROWS;
        let v_limit = V8_FOLD_MAX_SEGMENTS * MEAN_SEGMENT_ROWS;
        assert!(v_limit <= k_limit);
        for hd in [8, 40, 64, 96, 128, 200, 256] {
            for kv_len in [1, 1024, v_limit, v_limit + 1, k_limit, k_limit + 1, 20_000] {
                let (fold_k, fold_v8) = (kv_len <= k_limit, kv_len <= v_limit);
                let count = |smooth, lse, v8| {
                    let s = shape(kv_len, hd, smooth, lse, v8);
                    let plan = plan_prepare(&s, SMS);
                    assert_eq!((plan.fold_k, plan.fold_v8), (fold_k, fold_v8));
                    // Q quantized in the kernel: the same launches, one job less.
                    let without_q = plan_prepare(
                        &ScratchShape {
                            quantize_q: false,
                            ..s
                        },
                        SMS,
                    );
                    assert_eq!(without_q.launches.len(), plan.launches.len());
                    plan.launches.len()
                };
                let what = format!("d{hd} N{kv_len}");
                let f16 = 2 + usize::from(!fold_k);
                assert_eq!(count(true, false, false), f16, "f16 {what}");
                assert_eq!(count(true, true, false), f16, "f16 + LSE {what}");
                assert_eq!(count(false, false, false), 1, "f16 unsmoothed {what}");
                if !has_v8(hd) {
                    continue;
                }
                let int8 = 2 + usize::from(!fold_k || !fold_v8);
                assert_eq!(count(true, true, true), int8, "int8 {what}");
                let int8_unsmoothed = 2 + usize::from(!fold_v8);
                assert_eq!(
                    count(false, false, true),
                    int8_unsmoothed,
                    "int8 unsmoothed {what}"
                );
            }
        }
        assert_eq!(std::mem::size_of::<PrepareParams>() % 8, 0);
    }

    /// The single-job entries take exactly the launches whose one job is theirs: the f16 P·V's
    /// smoothed two-launch path (Q quantized by the attention kernel, no V copy, no LSE) is one
    /// `SUM_K` and one `QUANT_K` launch; a launch with two jobs always runs `sage_prepare`.
    #[test]
    fn single_job_entries_only_for_their_job_alone() {
        let s = ScratchShape {
            quantize_q: false,
            ..shape(4096, 128, true, false, false)
        };
        let entries: Vec<_> = plan_prepare(&s, SMS)
            .launches
            .iter()
            .map(PrepLaunch::entry)
            .collect();
        assert_eq!(
            entries,
            [names::PREPARE_SUM_K, names::PREPARE, names::PREPARE_QUANT_K]
        );
        for hd in SUPPORTED_HEAD_DIMS {
            for kv_len in [1, 1000, 4096, 20_000] {
                for (smooth, lse, v8, quantize_q) in [
                    (true, false, false, true),
                    (true, false, false, false),
                    (true, true, false, false),
                    (false, false, false, false),
                    (true, true, true, false),
                ] {
                    if v8 && !has_v8(hd) {
                        continue;
                    }
                    let s = ScratchShape {
                        quantize_q,
                        ..shape(kv_len, hd, smooth, lse, v8)
                    };
                    for l in &plan_prepare(&s, SMS).launches {
                        let jobs: Vec<usize> =
                            (0..prep_job::COUNT).filter(|&j| l.ctas[j] > 0).collect();
                        use prep_job::*;
                        let want = match jobs[..] {
                            [SUM_K] => names::PREPARE_SUM_K,
                            [QUANT_K] => names::PREPARE_QUANT_K,
                            [V8_STATS] | [V8_STATS, SUM_K] => names::PREPARE_STATS8,
                            [V8_QUANT] | [QUANT_K, V8_QUANT] => names::PREPARE_QUANT8,
                            _ => names::PREPARE,
                        };
                        assert_eq!(l.entry(), want, "{l:?}");
                    }
                }
            }
        }
    }

    /// Every job runs exactly once over the launches, with its full CTA count, after the jobs it
    /// reads, with a block size it accepts and shared memory that fits, at every supported
    /// head_dim (the 8-bit P·V at the ones it takes).
    #[test]
    fn every_job_once_in_order_with_a_valid_geometry() {
        use prep_job::*;
        for hd in SUPPORTED_HEAD_DIMS {
            for kv_len in [1, 63, 65, 1000, 2048, 2049, 4096, 4097, 20_000] {
                for (smooth, lse, v8) in [
                    (true, false, false),
                    (true, true, false),
                    (false, false, false),
                    (true, true, true),
                    (false, false, true),
                ] {
                    if v8 && !has_v8(hd) {
                        continue;
                    }
                    for quantize_q in [true, false] {
                        let s = ScratchShape {
                            quantize_q,
                            ..shape(kv_len, hd, smooth, lse, v8)
                        };
                        let plan = plan_prepare(&s, SMS);
                        let launch_of = |j: usize| {
                            let at: Vec<usize> = (0..plan.launches.len())
                                .filter(|&i| plan.launches[i].ctas[j] > 0)
                                .collect();
                            assert!(at.len() <= 1, "job {j} in launches {at:?}");
                            at.first().copied()
                        };
                        let kv = s.batch * s.kv_heads;
                        let segments = kv_len.div_ceil(MEAN_SEGMENT_ROWS);
                        let total =
                            |j: usize| plan.launches.iter().map(|l| l.ctas[j]).sum::<usize>();
                        let q_ctas = if quantize_q {
                            s.qo_len.div_ceil(Q_BLOCK) * 128
                        } else {
                            0
                        };
                        assert_eq!(total(QUANT_Q), q_ctas);
                        assert_eq!(total(QUANT_K), kv_len.div_ceil(K_BLOCK) * kv);
                        assert_eq!(total(SUM_K), if smooth { segments * kv } else { 0 });
                        assert_eq!(total(V8_STATS), if v8 { segments * kv } else { 0 });
                        assert_eq!(
                            total(V8_QUANT),
                            if v8 { kv_len.div_ceil(64) * kv } else { 0 }
                        );
                        assert_eq!(total(LSE_BIAS) > 0, smooth && lse);
                        assert_eq!(total(CONVERT_V) > 0, s.copy_v);
                        assert_eq!(total(K_MEAN) > 0, smooth && !plan.fold_k);
                        assert_eq!(total(V8_FINALIZE) > 0, v8 && !plan.fold_v8);
                        // Readers after writers.
                        let before = |w: usize, r: usize| match (launch_of(w), launch_of(r)) {
                            (Some(w), Some(r)) => assert!(w < r, "job {w} not before job {r}"),
                            (None, Some(_)) => panic!("job {r} without job {w}"),
                            _ => {}
                        };
                        if smooth {
                            before(SUM_K, QUANT_K);
                            if plan.fold_k {
                                before(SUM_K, LSE_BIAS);
                            } else {
                                before(SUM_K, K_MEAN);
                                before(K_MEAN, QUANT_K);
                                before(K_MEAN, LSE_BIAS);
                            }
                        }
                        if v8 {
                            before(V8_STATS, V8_QUANT);
                            if !plan.fold_v8 {
                                before(V8_STATS, V8_FINALIZE);
                                before(V8_FINALIZE, V8_QUANT);
                            }
                        }
                        for l in &plan.launches {
                            assert!(!l.is_empty());
                            assert_eq!(l.threads, prep_threads(hd));
                            for j in (0..COUNT).filter(|&j| l.ctas[j] > 0) {
                                assert!(prep_threads_ok(j, l.threads, hd), "job {j}, {l:?}");
                            }
                            assert!(l.smem_bytes(hd, s.kernel_head_dim) <= 48 * 1024);
                            let ends = l.ends().unwrap();
                            assert_eq!(ends[COUNT - 1] as usize, l.grid());
                        }
                    }
                }
            }
        }
    }

    /// The one-CTA-per-head K preparation: chosen exactly for short smoothed K on the f16 P·V
    /// with enough (batch, kv head) pairs to fill the SMs, at head_dims whose groups are whole
    /// warps.
    #[test]
    fn k_head_selection() {
        let with =
            |batch: usize, kv_heads: usize, kv_len: usize, hd: usize, v8: bool| ScratchShape {
                batch,
                kv_heads,
                q_heads: 2 * kv_heads,
                ..shape(kv_len, hd, true, false, v8)
            };
        // B = 4, H = 32 on an H200: 128 pairs, one wave at 97%.
        for kv_len in [1, 63, 64, 1000, 1024, 2048] {
            for hd in [16, 32, 64, 96, 128, 256] {
                assert!(
                    use_k_head(&with(4, 32, kv_len, hd, false), SMS),
                    "N{kv_len} d{hd}"
                );
            }
            // Odd head_dim / 8: a group is not whole warps.
            for hd in [8, 24, 40, 200] {
                assert!(!use_k_head(&with(4, 32, kv_len, hd, false), SMS), "d{hd}");
            }
            // The 8-bit P·V keeps its launches.
            assert!(!use_k_head(&with(4, 32, kv_len, 128, true), SMS));
            // Without smoothing there is no mean.
            let unsmoothed = ScratchShape {
                smooth_k: false,
                ..with(4, 32, kv_len, 128, false)
            };
            assert!(!use_k_head(&unsmoothed, SMS));
        }
        assert!(!use_k_head(
            &with(4, 32, K_HEAD_MAX_KV_LEN + 1, 128, false),
            SMS
        ));
        // Pairs against SMs: 99 of 132 is 3/4 of a wave; 98 not; 140 = 1.06 waves; 256 = 2 full.
        assert!(use_k_head(&with(1, 99, 512, 128, false), SMS));
        assert!(!use_k_head(&with(1, 98, 512, 128, false), SMS));
        assert!(!use_k_head(&with(2, 70, 512, 128, false), SMS));
        assert!(use_k_head(&with(8, 32, 512, 128, false), SMS));
        assert!(!use_k_head(&with(4, 32, 512, 128, false), 0));
        // GQA with few kv heads: 4 × 8 pairs.
        assert!(!use_k_head(&with(4, 8, 512, 128, false), SMS));
    }

    /// With the one-CTA-per-head K preparation: no K job in the `sage_prepare` launches, which
    /// are at most one (Q, V copy, LSE bias from the published mean), and the head launch's
    /// geometry fits (threads, shared memory, named barriers).
    #[test]
    fn k_head_plan_and_geometry() {
        use prep_job::*;
        for hd in SUPPORTED_HEAD_DIMS
            .into_iter()
            .filter(|&d| k_head_supported(d))
        {
            let threads = k_head_threads(hd);
            assert!(threads <= K_HEAD_MAX_THREADS && threads.is_multiple_of(32));
            assert!((1..=8).contains(&k_head_groups(hd)));
            assert!(
                k_head_smem_bytes(hd, K_HEAD_MAX_KV_LEN) <= 48 * 1024,
                "d{hd}"
            );
            for kv_len in [1, 255, 256, 1000, 2048] {
                for (lse, quantize_q) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let s = ScratchShape {
                        batch: 4,
                        kv_heads: 32,
                        q_heads: 32,
                        quantize_q,
                        ..shape(kv_len, hd, true, lse, false)
                    };
                    let plan = plan_prepare(&s, SMS);
                    assert_eq!(plan.k_head, 128);
                    assert!(!plan.fold_k);
                    assert!(plan.launches.len() <= 1);
                    let total = |j: usize| plan.launches.iter().map(|l| l.ctas[j]).sum::<usize>();
                    for j in [SUM_K, K_MEAN, QUANT_K, V8_STATS, V8_FINALIZE, V8_QUANT] {
                        assert_eq!(total(j), 0, "job {j}");
                    }
                    assert_eq!(total(LSE_BIAS) > 0, lse);
                    assert_eq!(total(QUANT_Q) > 0, quantize_q);
                    assert_eq!(total(CONVERT_V) > 0, s.copy_v);
                    assert_eq!(plan.launches.is_empty(), !lse && !quantize_q && !s.copy_v);
                    for l in &plan.launches {
                        for j in (0..COUNT).filter(|&j| l.ctas[j] > 0) {
                            assert!(prep_threads_ok(j, l.threads, hd), "job {j}, {l:?}");
                        }
                    }
                }
            }
        }
    }
}
