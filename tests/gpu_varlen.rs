//! GPU tests of `sageattn_varlen` (packed, variable-length batches):
//!
//! * equal lengths: the packed call equals the batched call on the same memory row by row, bit
//!   for bit (output and LSE); runs of equal lengths among other lengths equal each sequence's
//!   own batch-1 call bit for bit;
//! * random length mixes (empty, single rows, hundreds; Q and K lengths independent) over the
//!   options, against the CPU emulation run per sequence, with the tolerances of
//!   `gpu_attention.rs`; outputs and LSE poisoned with NaN first;
//! * sequences without keys, the 8-bit P·V (sm_90), and prefix sums given as device buffers.
//!
//! * runs on several streams: a mix of very different lengths equals the per-sequence calls and
//!   the one-stream call bit for bit; work queued on the runtime's stream (or, through tracked
//!   buffers, on another stream) right after a call sees the finished call;
//! * `varlen_probe` (timing, prints `VARLEN_PROBE` lines): packed equal lengths against the
//!   batched call with the same tokens, and the 16-sequence mix of `bench --varlen` on one and
//!   several streams.
//!
//! Run on a GPU with `--include-ignored --test-threads=1` (add `--nocapture` for the probe).

mod common;

use common::{
    bit_differences, fresh_rng, full_call_ms, lse_max_error, median_ms, pack, prefix_sums,
    random_device_tensor_in, random_tensor, round_to, runtime,
};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use half::{bf16, f16};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use sageattention::attention::FP8_MIN_CC;
use sageattention::reference::{
    attention_fp8_emulation, attention_pv8_emulation, attention_varlen,
    attention_varlen_quantized_emulation, compare, HostTensor, RefOptions,
};
use sageattention::tensor::Element;
use sageattention::varlen::{
    check_varlen_inputs, streams_used, VarlenBatch, DEFAULT_VARLEN_STREAMS, MAX_VARLEN_STREAMS,
};
use sageattention::{
    sageattn_into, sageattn_varlen, sageattn_varlen_into, Backend, DType, Error, Layout, Options,
    PvAccum, PvPrecision, Runtime, Tensor, TensorView, TensorViewMut,
};

/// Kernel error bound against the CPU emulation (as in `gpu_attention.rs`).
const EMULATION_REL_L1: f64 = 3e-3;
/// LSE against the emulation's (natural log), absolute (as in `gpu_attention.rs`).
const LSE_TOL: f64 = 1e-3;

/// A packed input on the device in one of the two 16-bit types.
enum DeviceBuf {
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

impl DeviceBuf {
    /// Uploads the storage of `t` as it is (its strides describe the device view too).
    fn upload(rt: &Runtime, t: &HostTensor, dtype: DType) -> Self {
        fn up<T: Element + DeviceRepr>(rt: &Runtime, data: &[f32]) -> CudaSlice<T> {
            let host: Vec<T> = data.iter().map(|&x| T::from_f32(x)).collect();
            rt.stream().clone_htod(&host).unwrap()
        }
        match dtype {
            DType::F16 => DeviceBuf::F16(up(rt, &t.data)),
            DType::BF16 => DeviceBuf::BF16(up(rt, &t.data)),
            other => panic!("unsupported {other:?}"),
        }
    }

    /// A view of the buffer with `t`'s shape and strides.
    fn view(&self, shape: [usize; 4], strides: [usize; 4]) -> TensorView<'_> {
        let strides = strides.map(|s| s as i64);
        match self {
            DeviceBuf::F16(s) => TensorView::from_slice_strided(s, shape, strides),
            DeviceBuf::BF16(s) => TensorView::from_slice_strided(s, shape, strides),
        }
        .unwrap()
    }
}

#[derive(Clone, Debug)]
struct Case {
    lens: Vec<(usize, usize)>,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    causal: bool,
    smooth_k: bool,
    pv_accum: PvAccum,
    pv_precision: PvPrecision,
    sm_scale: Option<f32>,
    backend: Backend,
    row_pad: usize,
    device_cu_seqlens: bool,
}

impl Case {
    /// The default options (smoothing on, f16 P·V, `Backend::Auto`) for these sequences and
    /// heads, contiguous rows, host `cu_seqlens`.
    fn defaults(
        lens: &[(usize, usize)],
        (q_heads, kv_heads): (usize, usize),
        head_dim: usize,
        dtype: DType,
        causal: bool,
    ) -> Self {
        Case {
            lens: lens.to_vec(),
            q_heads,
            kv_heads,
            head_dim,
            dtype,
            causal,
            smooth_k: true,
            pv_accum: PvAccum::F16,
            pv_precision: PvPrecision::F16,
            sm_scale: None,
            backend: Backend::Auto,
            row_pad: 0,
            device_cu_seqlens: false,
        }
    }

    fn options(&self) -> Options {
        Options {
            causal: self.causal,
            smooth_k: self.smooth_k,
            sm_scale: self.sm_scale,
            layout: Layout::Nhd,
            pv_accum: self.pv_accum,
            pv_precision: self.pv_precision,
            return_lse: true,
            backend: self.backend,
        }
    }
}

/// The packed inputs of a case on the host.
struct Packed {
    q: HostTensor,
    k: HostTensor,
    v: HostTensor,
    cu_q: Vec<i32>,
    cu_k: Vec<i32>,
}

fn packed_inputs(case: &Case, rng: &mut StdRng) -> Packed {
    let (d, dt) = (case.head_dim, case.dtype);
    let mut parts = |heads: usize, len_of: fn(&(usize, usize)) -> usize| {
        let seqs: Vec<_> = case
            .lens
            .iter()
            .map(|l| random_tensor(rng, [1, heads, len_of(l), d], dt, 1.0, None))
            .collect();
        pack(&seqs, case.row_pad)
    };
    let q = parts(case.q_heads, |l| l.0);
    let k = parts(case.kv_heads, |l| l.1);
    let v = parts(case.kv_heads, |l| l.1);
    Packed {
        q,
        k,
        v,
        cu_q: prefix_sums(case.lens.iter().map(|l| l.0)),
        cu_k: prefix_sums(case.lens.iter().map(|l| l.1)),
    }
}

/// Runs the case on the GPU into NaN-poisoned output and LSE; returns the output in logical
/// order `[0][h][row][d]` and the LSE `[h][row]`.
fn run_varlen(case: &Case, p: &Packed) -> (Vec<f32>, Vec<f32>) {
    let rt = runtime();
    let (qd, kd, vd) = (
        DeviceBuf::upload(rt, &p.q, case.dtype),
        DeviceBuf::upload(rt, &p.k, case.dtype),
        DeviceBuf::upload(rt, &p.v, case.dtype),
    );
    let (total_q, max_q, max_k) = (
        p.q.seq(),
        case.lens.iter().map(|l| l.0).max().unwrap(),
        case.lens.iter().map(|l| l.1).max().unwrap(),
    );
    let mut out = Tensor::alloc_filled_nan(
        rt,
        case.dtype,
        [1, case.q_heads, total_q, case.head_dim],
        Layout::Nhd,
    )
    .unwrap();
    let mut lse = rt
        .stream()
        .clone_htod(&vec![f32::NAN; case.q_heads * total_q])
        .unwrap();
    let (q, k, v) = (
        qd.view(p.q.shape, p.q.strides),
        kd.view(p.k.shape, p.k.strides),
        vd.view(p.v.shape, p.v.strides),
    );
    let opts = case.options();
    if case.device_cu_seqlens {
        let cu_q = rt.stream().clone_htod(&p.cu_q).unwrap();
        let cu_k = rt.stream().clone_htod(&p.cu_k).unwrap();
        sageattn_varlen_into(
            rt,
            &q,
            &k,
            &v,
            &cu_q,
            &cu_k,
            max_q,
            max_k,
            &mut out.view_mut(),
            Some(&mut lse),
            &opts,
        )
    } else {
        sageattn_varlen_into(
            rt,
            &q,
            &k,
            &v,
            &p.cu_q,
            &p.cu_k,
            max_q,
            max_k,
            &mut out.view_mut(),
            Some(&mut lse),
            &opts,
        )
    }
    .unwrap();
    (
        out.to_host_f32(rt).unwrap(),
        rt.stream().clone_dtoh(&lse).unwrap(),
    )
}

/// The GPU result against the per-sequence CPU emulation (f16 or 8-bit P·V as the case asks).
fn check_against_emulation(case: &Case, p: &Packed) {
    let (out, lse) = run_varlen(case, p);
    assert!(
        out.iter().all(|x| x.is_finite()),
        "unwritten (NaN-poisoned) or non-finite output: {case:?}"
    );
    assert!(lse.iter().all(|x| !x.is_nan()), "unwritten LSE: {case:?}");
    let opts = RefOptions {
        causal: case.causal,
        sm_scale: case.sm_scale,
    };
    let cu = (p.cu_q.as_slice(), p.cu_k.as_slice());
    let reference = match case.pv_precision {
        PvPrecision::F16 => attention_varlen_quantized_emulation(
            &p.q,
            &p.k,
            &p.v,
            cu,
            &opts,
            case.smooth_k,
            case.pv_accum == PvAccum::F16,
        ),
        PvPrecision::Int8 => attention_varlen(&p.q, &p.k, &p.v, cu, |q, k, v| {
            attention_pv8_emulation(q, k, v, &opts, case.smooth_k)
        }),
        PvPrecision::Fp8 => attention_varlen(&p.q, &p.k, &p.v, cu, |q, k, v| {
            attention_fp8_emulation(q, k, v, &opts, case.smooth_k, case.pv_accum == PvAccum::F16)
        }),
    };
    let m = compare(&out, &reference.o);
    let lse_err = lse_max_error(&lse, &reference.lse);
    eprintln!(
        "{case:?}: rel L1 vs emulation {:.2e}, LSE {lse_err:.2e}",
        m.rel_l1
    );
    assert!(
        m.rel_l1 <= EMULATION_REL_L1,
        "rel L1 {:.2e} vs emulation: {case:?} {m:?}",
        m.rel_l1
    );
    assert!(
        lse_err <= LSE_TOL,
        "LSE error {lse_err:.2e} vs emulation: {case:?}"
    );
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 1 => Just(1usize), 4 => 2usize..=300, 1 => 301usize..=700]
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((length(), length()), 1..=6),
        prop::sample::select(vec![(1usize, 1usize), (2, 1), (4, 2), (8, 1)]),
        prop::sample::select(vec![64usize, 96, 128]),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (
            any::<bool>(),
            prop::option::of(0.02f32..0.3),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                lens,
                (q_heads, kv_heads),
                head_dim,
                (bf16, causal, smooth_k, pv_f32),
                (portable, sm_scale, padded, device_cu),
            )| Case {
                lens,
                q_heads,
                kv_heads,
                head_dim,
                dtype: if bf16 { DType::BF16 } else { DType::F16 },
                causal,
                smooth_k,
                pv_accum: if pv_f32 { PvAccum::F32 } else { PvAccum::F16 },
                pv_precision: PvPrecision::F16,
                sm_scale,
                backend: if portable {
                    Backend::Portable
                } else {
                    Backend::Auto
                },
                row_pad: if padded { 8 } else { 0 },
                device_cu_seqlens: device_cu,
            },
        )
        .prop_filter("needs at least one query and one key row", |c| {
            c.lens.iter().any(|l| l.0 > 0) && c.lens.iter().any(|l| l.1 > 0)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random length mixes over the options equal the CPU emulation run per sequence.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn random_mixes_match_the_cpu_emulation(case in arb_case(), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = packed_inputs(&case, &mut rng);
        check_against_emulation(&case, &p);
    }
}

/// Equal lengths: a batched NHD tensor `[b, h, n, d]` is, in memory, the packed `[b·n, h, d]`.
/// The varlen call on it equals the batched call on it, row by row, bit for bit (output and
/// LSE), over dtypes, head dims, GQA and causal (queries shorter than keys: chunked prefill).
#[test]
#[ignore = "needs a CUDA GPU"]
fn equal_lengths_equal_the_batched_call_row_by_row() {
    let rt = runtime();
    let mut rng = fresh_rng("equal_lengths");
    let (batch, q_heads, kv_heads, qo_len, kv_len) = (3, 4, 2, 200, 333);
    for dtype in [DType::F16, DType::BF16] {
        for head_dim in [64, 128] {
            for causal in [false, true] {
                let mut tensor = |heads, seq| {
                    HostTensor::from_fn([batch, heads, seq, head_dim], true, |_, _, _, _| {
                        round_to(dtype, StandardNormal.sample(&mut rng))
                    })
                };
                let (q, k, v) = (
                    tensor(q_heads, qo_len),
                    tensor(kv_heads, kv_len),
                    tensor(kv_heads, kv_len),
                );
                let (qd, kd, vd) = (
                    DeviceBuf::upload(rt, &q, dtype),
                    DeviceBuf::upload(rt, &k, dtype),
                    DeviceBuf::upload(rt, &v, dtype),
                );
                let packed = |t: &HostTensor| {
                    let [b, h, s, d] = t.shape;
                    ([1, h, b * s, d], [b * s * h * d, d, h * d, 1])
                };
                let opts = Options {
                    causal,
                    layout: Layout::Nhd,
                    ..Options::default()
                };
                let shape = [batch, q_heads, qo_len, head_dim];
                let mut out_b = Tensor::alloc_filled_nan(rt, dtype, shape, Layout::Nhd).unwrap();
                let mut lse_b = rt
                    .stream()
                    .clone_htod(&vec![f32::NAN; batch * q_heads * qo_len])
                    .unwrap();
                sageattn_into(
                    rt,
                    &qd.view(q.shape, q.strides),
                    &kd.view(k.shape, k.strides),
                    &vd.view(v.shape, v.strides),
                    &mut out_b.view_mut(),
                    Some(&mut lse_b),
                    &opts,
                )
                .unwrap();
                let (qs, qst) = packed(&q);
                let (ks, kst) = packed(&k);
                let cu_q = prefix_sums([qo_len; 3]);
                let cu_k = prefix_sums([kv_len; 3]);
                let varlen = sageattn_varlen(
                    rt,
                    &qd.view(qs, qst),
                    &kd.view(ks, kst),
                    &vd.view(ks, kst),
                    &cu_q,
                    &cu_k,
                    qo_len,
                    kv_len,
                    &Options {
                        return_lse: true,
                        ..opts
                    },
                )
                .unwrap();
                let (ob, ov) = (
                    out_b.to_host_f32(rt).unwrap(),
                    varlen.o.to_host_f32(rt).unwrap(),
                );
                let lb = rt.stream().clone_dtoh(&lse_b).unwrap();
                let lv = rt
                    .stream()
                    .clone_dtoh(varlen.lse.as_ref().unwrap())
                    .unwrap();
                assert!(ob.iter().all(|x| x.is_finite()), "batched output unwritten");
                for b in 0..batch {
                    for h in 0..q_heads {
                        for i in 0..qo_len {
                            let row_b = (b * q_heads + h) * qo_len + i;
                            let row_v = h * batch * qo_len + b * qo_len + i;
                            let (x, y) = (
                                &ob[row_b * head_dim..(row_b + 1) * head_dim],
                                &ov[row_v * head_dim..(row_v + 1) * head_dim],
                            );
                            assert!(
                                x.iter().zip(y).all(|(a, c)| a.to_bits() == c.to_bits()),
                                "{dtype:?} d={head_dim} causal={causal}: sequence {b} head {h} row {i}"
                            );
                            assert_eq!(
                                lb[row_b].to_bits(),
                                lv[h * batch * qo_len + b * qo_len + i].to_bits()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Sequences without keys give zero rows and LSE -inf; sequences without queries write
/// nothing; the rows around them are right (the allocating form, f16 and bf16).
#[test]
#[ignore = "needs a CUDA GPU"]
fn sequences_without_keys_or_queries() {
    for dtype in [DType::F16, DType::BF16] {
        let case = Case {
            lens: vec![(5, 0), (3, 4), (0, 7), (130, 260), (2, 0), (1, 1)],
            q_heads: 4,
            kv_heads: 2,
            head_dim: 128,
            dtype,
            causal: true,
            smooth_k: true,
            pv_accum: PvAccum::F16,
            pv_precision: PvPrecision::F16,
            sm_scale: None,
            backend: Backend::Auto,
            row_pad: 8,
            device_cu_seqlens: false,
        };
        let mut rng = fresh_rng("without_keys");
        let p = packed_inputs(&case, &mut rng);
        check_against_emulation(&case, &p);
        let (out, lse) = run_varlen(&case, &p);
        let total_q = p.q.seq();
        for (s, &(lq, lk)) in case.lens.iter().enumerate() {
            if lk > 0 {
                continue;
            }
            for h in 0..case.q_heads {
                for i in 0..lq {
                    let row = h * total_q + p.cu_q[s] as usize + i;
                    assert!(out[row * 128..(row + 1) * 128].iter().all(|&x| x == 0.0));
                    assert_eq!(lse[row], f32::NEG_INFINITY);
                }
            }
        }
    }
}

/// The 8-bit P·V per sequence equals its emulation (the sm_90a kernel on Hopper, the portable
/// mma.sync one on any other sm_80+ GPU).
#[test]
#[ignore = "needs a CUDA GPU"]
fn int8_pv_per_sequence() {
    let mut case = Case {
        lens: vec![(200, 200), (0, 3), (1, 64), (64, 700), (300, 129)],
        q_heads: 8,
        kv_heads: 2,
        head_dim: 128,
        dtype: DType::BF16,
        causal: true,
        smooth_k: true,
        pv_accum: PvAccum::F16,
        pv_precision: PvPrecision::Int8,
        sm_scale: None,
        backend: Backend::Auto,
        row_pad: 0,
        device_cu_seqlens: true,
    };
    let mut rng = fresh_rng("int8_pv");
    for head_dim in [64, 96, 128, 256] {
        case.head_dim = head_dim;
        let p = packed_inputs(&case, &mut rng);
        check_against_emulation(&case, &p);
    }
}

/// The FP8 P·V (the sm_89 module; on Hopper through the driver's JIT) per sequence equals its
/// emulation, f32 accumulator (the f16 one's rounding order is the hardware's: `gpu_fp8.rs`
/// checks it with a wider bound), both backends.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_pv_per_sequence() {
    if runtime().compute_capability() < FP8_MIN_CC {
        eprintln!("compute capability below 8.9: no e4m3 mma.sync, skipped");
        return;
    }
    let mut case = Case {
        lens: vec![(200, 200), (0, 3), (1, 64), (64, 700), (300, 129)],
        q_heads: 8,
        kv_heads: 2,
        head_dim: 128,
        dtype: DType::F16,
        causal: true,
        smooth_k: true,
        pv_accum: PvAccum::F32,
        pv_precision: PvPrecision::Fp8,
        sm_scale: None,
        backend: Backend::Auto,
        row_pad: 0,
        device_cu_seqlens: true,
    };
    let mut rng = fresh_rng("fp8_pv");
    for (head_dim, backend) in [(64, Backend::Auto), (128, Backend::Portable)] {
        case.head_dim = head_dim;
        case.backend = backend;
        let p = packed_inputs(&case, &mut rng);
        check_against_emulation(&case, &p);
    }
}

/// Prefix sums in device memory are copied and checked like host ones.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_device_cu_seqlens_get_typed_errors() {
    let rt = runtime();
    let (heads, d, total) = (2, 64, 16);
    let buf: CudaSlice<f16> = rt.stream().alloc_zeros(total * heads * d).unwrap();
    let view = TensorView::from_slice(&buf, [1, heads, total, d], Layout::Nhd).unwrap();
    let call = |cu_q: &[i32], cu_k: &[i32]| {
        let (cq, ck) = (
            rt.stream().clone_htod(cu_q).unwrap(),
            rt.stream().clone_htod(cu_k).unwrap(),
        );
        sageattn_varlen(
            rt,
            &view,
            &view,
            &view,
            &cq,
            &ck,
            16,
            16,
            &Options::default(),
        )
        .err()
    };
    let ok: &[i32] = &[0, 10, 16];
    assert!(call(ok, ok).is_none());
    let e = call(&[0, 12, 10, 16], &[0, 1, 2, 16]);
    assert!(
        matches!(
            e,
            Some(Error::SeqlensNotMonotone {
                tensor: "cu_seqlens_q",
                index: 2,
                ..
            })
        ),
        "{e:?}"
    );
    let e = call(ok, &[0, 10, 15]);
    assert!(
        matches!(
            e,
            Some(Error::SeqlensTotal {
                tensor: "cu_seqlens_k",
                last: 15,
                total: 16,
                ..
            })
        ),
        "{e:?}"
    );
    let e = call(&[3, 10, 16], ok);
    assert!(
        matches!(e, Some(Error::SeqlensFirst { first: 3, .. })),
        "{e:?}"
    );
    let e = call(&[0, 16], ok);
    assert!(
        matches!(
            e,
            Some(Error::SeqlensBatchMismatch {
                q_batch: 1,
                k_batch: 2
            })
        ),
        "{e:?}"
    );
    let e = call(&[0, 1, 16], ok);
    assert!(e.is_none(), "{e:?}");
    let e = call(&[0, 1, 16], &[0, 0, 16]);
    assert!(e.is_none(), "{e:?}");
    let e = sageattn_varlen(rt, &view, &view, &view, ok, ok, 9, 16, &Options::default()).err();
    assert!(
        matches!(
            e,
            Some(Error::SeqlenAboveMax {
                len: 10,
                max: 9,
                ..
            })
        ),
        "{e:?}"
    );
}

/// Runs each sequence of `p` that has queries and keys through `sageattn_into` with batch 1, on
/// its rows of the packed device memory, into a NaN-poisoned output and LSE; returns the output
/// `[h][row][d]` and LSE `[h][row]` of each (`None` for the others).
fn per_sequence_calls(case: &Case, p: &Packed) -> Vec<Option<(Vec<f32>, Vec<f32>)>> {
    let rt = runtime();
    let (qd, kd, vd) = (
        DeviceBuf::upload(rt, &p.q, case.dtype),
        DeviceBuf::upload(rt, &p.k, case.dtype),
        DeviceBuf::upload(rt, &p.v, case.dtype),
    );
    let (q, k, v) = (
        qd.view(p.q.shape, p.q.strides),
        kd.view(p.k.shape, p.k.strides),
        vd.view(p.v.shape, p.v.strides),
    );
    (0..case.lens.len())
        .map(|i| {
            let (q0, k0) = (p.cu_q[i] as usize, p.cu_k[i] as usize);
            let (lq, lk) = case.lens[i];
            if lq == 0 || lk == 0 {
                return None;
            }
            let shape = [1, case.q_heads, lq, case.head_dim];
            let mut out = Tensor::alloc_filled_nan(rt, case.dtype, shape, Layout::Nhd).unwrap();
            let mut lse = rt
                .stream()
                .clone_htod(&vec![f32::NAN; case.q_heads * lq])
                .unwrap();
            sageattn_into(
                rt,
                &q.narrow(2, q0, lq).unwrap(),
                &k.narrow(2, k0, lk).unwrap(),
                &v.narrow(2, k0, lk).unwrap(),
                &mut out.view_mut(),
                Some(&mut lse),
                &case.options(),
            )
            .unwrap();
            Some((
                out.to_host_f32(rt).unwrap(),
                rt.stream().clone_dtoh(&lse).unwrap(),
            ))
        })
        .collect()
}

/// The packed output `[h][row][d]` and LSE `[h][row]` of a varlen call (NaN-poisoned before it)
/// equal, bit for bit, each sequence's own batch-1 call ([`per_sequence_calls`]); rows of
/// sequences without keys are 0 with LSE -inf.
fn assert_equals_per_sequence_calls(
    case: &Case,
    p: &Packed,
    (out, lse): (&[f32], &[f32]),
    label: &str,
) {
    assert!(
        out.iter().all(|x| x.is_finite()),
        "unwritten output: {label}"
    );
    assert!(lse.iter().all(|x| !x.is_nan()), "unwritten LSE: {label}");
    let (total_q, d) = (p.q.seq(), case.head_dim);
    for (i, seq) in per_sequence_calls(case, p).iter().enumerate() {
        let (q0, lq) = (p.cu_q[i] as usize, case.lens[i].0);
        for h in 0..case.q_heads {
            for r in 0..lq {
                let packed = h * total_q + q0 + r;
                let got = &out[packed * d..(packed + 1) * d];
                let Some((o, l)) = seq else {
                    assert!(got.iter().all(|&x| x == 0.0), "{label}: seq {i}");
                    assert_eq!(lse[packed], f32::NEG_INFINITY, "{label}: seq {i}");
                    continue;
                };
                let own = h * lq + r;
                assert!(
                    got.iter()
                        .zip(&o[own * d..(own + 1) * d])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{label}: sequence {i} head {h} row {r} differs from its own call"
                );
                assert_eq!(
                    lse[packed].to_bits(),
                    l[own].to_bits(),
                    "{label}: LSE of sequence {i} head {h} row {r}"
                );
            }
        }
    }
}

/// Runs of equal lengths are one batched call each, so the packed call equals, bit for bit
/// (output and LSE, both NaN-poisoned first), the batched call on the same memory viewed
/// `[batch, heads, len, d]` when all lengths are equal, and the batch-1 call of each sequence
/// when runs sit next to other lengths, empty sequences and sequences without keys. GQA and
/// f16 (rows contiguous), bf16 (padded rows), causal and not, queries shorter than keys.
#[test]
#[ignore = "needs a CUDA GPU"]
fn runs_of_equal_lengths_equal_the_batched_calls_bit_for_bit() {
    let rt = runtime();
    let mut rng = fresh_rng("equal_runs");
    let mix = vec![
        (300, 500),
        (1000, 1000),
        (1000, 1000),
        (1000, 1000),
        (77, 0),
        (1000, 1000),
        (1000, 1000),
        (0, 0),
        (1000, 1000),
        (129, 129),
        (0, 40),
        (1000, 1000),
    ];
    let batches = [vec![(1000, 1000); 4], vec![(1000, 1300); 4], mix];
    for lens in &batches {
        for (dtype, q_heads, kv_heads, head_dim, row_pad) in
            [(DType::F16, 8, 2, 128, 0), (DType::BF16, 4, 4, 64, 8)]
        {
            for causal in [false, true] {
                let case = Case {
                    row_pad,
                    ..Case::defaults(lens, (q_heads, kv_heads), head_dim, dtype, causal)
                };
                let label = format!(
                    "{dtype:?} heads {q_heads}/{kv_heads} d={head_dim} causal={causal} lens {lens:?}"
                );
                let p = packed_inputs(&case, &mut rng);
                let (out, lse) = run_varlen(&case, &p);
                assert_equals_per_sequence_calls(&case, &p, (&out, &lse), &label);
                let total_q = p.q.seq();
                let d = head_dim;
                let row_of = |h: usize, r: usize| h * total_q + r;
                if lens.iter().any(|l| *l != lens[0]) {
                    continue;
                }
                // All equal: the batched call on the packed memory, batch stride `len` rows.
                let (batch, (lq, lk)) = (lens.len(), lens[0]);
                let batched = |t: &HostTensor, len: usize| {
                    let [_, heads, _, d] = t.shape;
                    let [_, hs, rs, _] = t.strides;
                    ([batch, heads, len, d], [len * rs, hs, rs, 1])
                };
                let (qd, kd, vd) = (
                    DeviceBuf::upload(rt, &p.q, dtype),
                    DeviceBuf::upload(rt, &p.k, dtype),
                    DeviceBuf::upload(rt, &p.v, dtype),
                );
                let ((qs, qst), (ks, kst)) = (batched(&p.q, lq), batched(&p.k, lk));
                let mut out_b = Tensor::alloc_filled_nan(rt, dtype, qs, Layout::Nhd).unwrap();
                let mut lse_b = rt
                    .stream()
                    .clone_htod(&vec![f32::NAN; batch * q_heads * lq])
                    .unwrap();
                sageattn_into(
                    rt,
                    &qd.view(qs, qst),
                    &kd.view(ks, kst),
                    &vd.view(ks, kst),
                    &mut out_b.view_mut(),
                    Some(&mut lse_b),
                    &case.options(),
                )
                .unwrap();
                let (ob, lb) = (
                    out_b.to_host_f32(rt).unwrap(),
                    rt.stream().clone_dtoh(&lse_b).unwrap(),
                );
                for b in 0..batch {
                    for h in 0..q_heads {
                        for r in 0..lq {
                            let (own, packed) = ((b * q_heads + h) * lq + r, row_of(h, b * lq + r));
                            assert!(
                                ob[own * d..(own + 1) * d]
                                    .iter()
                                    .zip(&out[packed * d..(packed + 1) * d])
                                    .all(|(a, c)| a.to_bits() == c.to_bits()),
                                "{label}: batch entry {b} head {h} row {r} differs from the batched call"
                            );
                            assert_eq!(lb[own].to_bits(), lse[packed].to_bits(), "{label}");
                        }
                    }
                }
            }
        }
    }
}

/// Sets the shared runtime's stream count for a varlen call and puts the default back on drop
/// (also when an assertion fails), so the other tests run with the default.
struct VarlenStreams(&'static Runtime);

impl VarlenStreams {
    fn set(rt: &'static Runtime, streams: usize) -> Self {
        rt.set_varlen_streams(streams);
        VarlenStreams(rt)
    }
}

impl Drop for VarlenStreams {
    fn drop(&mut self) {
        self.0.set_varlen_streams(DEFAULT_VARLEN_STREAMS);
    }
}

/// The runs of a mix of very different lengths (one row to 8K keys, a chunk of 64 queries
/// against 8K keys, a run of two 4K sequences, sequences without keys or queries) execute on
/// several streams concurrently. The output and LSE (NaN-poisoned first) equal each sequence's
/// own batch-1 call bit for bit, and equal the call on one stream bit for bit for every stream
/// count: the streams change when the work runs, never what it computes.
#[test]
#[ignore = "needs a CUDA GPU"]
fn concurrent_runs_equal_per_sequence_calls_bit_for_bit() {
    let rt = runtime();
    let mut rng = fresh_rng("concurrent_runs");
    let lens = vec![
        (129, 129),
        (4096, 4096),
        (4096, 4096),
        (1, 1),
        (300, 2500),
        (0, 64),
        (2000, 2000),
        (77, 0),
        (700, 700),
        (64, 8192),
    ];
    for (dtype, q_heads, kv_heads, head_dim, causal) in [
        (DType::F16, 8, 2, 128, false),
        (DType::BF16, 4, 4, 64, true),
    ] {
        let case = Case::defaults(&lens, (q_heads, kv_heads), head_dim, dtype, causal);
        let label = format!("{dtype:?} heads {q_heads}/{kv_heads} d={head_dim} causal={causal}");
        let p = packed_inputs(&case, &mut rng);
        let batch = VarlenBatch::new(
            &p.cu_q,
            &p.cu_k,
            (p.q.seq(), p.k.seq()),
            (usize::MAX, usize::MAX),
        )
        .unwrap();
        let one = {
            let _streams = VarlenStreams::set(rt, 1);
            assert_eq!(streams_used(rt, &batch, q_heads), 1);
            run_varlen(&case, &p)
        };
        assert_equals_per_sequence_calls(&case, &p, (&one.0, &one.1), &label);
        for streams in [2, DEFAULT_VARLEN_STREAMS, MAX_VARLEN_STREAMS] {
            let _streams = VarlenStreams::set(rt, streams);
            // Seven runs.
            assert_eq!(streams_used(rt, &batch, q_heads), streams.min(7));
            let (out, lse) = run_varlen(&case, &p);
            assert_eq!(
                bit_differences(&out, &one.0),
                0,
                "{label}: output on {streams} streams"
            );
            assert_eq!(
                bit_differences(&lse, &one.1),
                0,
                "{label}: LSE on {streams} streams"
            );
        }
    }
}

/// The device address of a tensor (for raw views and raw driver calls).
fn address(t: &Tensor) -> u64 {
    let rt = runtime();
    let view = t.view();
    let (ptr, _access) = view.device_ptr(rt.stream());
    ptr
}

/// An untracked view of a whole tensor: only stream order protects its accesses.
fn raw_view(t: &Tensor) -> TensorView<'static> {
    // SAFETY: the tensors outlive every use of the view in the test, which orders all access by
    // stream order on the runtime's stream.
    unsafe { TensorView::from_raw(address(t), t.dtype(), t.shape(), t.strides(), t.ordinal()) }
}

/// The bytes of a tensor, copied on `stream` (waiting for `stream` only: no cudarc tracking)
/// into host memory.
fn bytes_on(stream: &CudaStream, ptr: u64, len: usize) -> Vec<u8> {
    let mut host = vec![0u8; len];
    // SAFETY: `ptr` is `len` bytes of device memory that outlive the copy (the stream is
    // synchronized before returning).
    unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host, ptr, stream.cu_stream()) }
        .unwrap();
    stream.synchronize().unwrap();
    host
}

/// A varlen call is ordered on the runtime's stream like any other call: work queued there right
/// after it, with no synchronization in between, overwrites the inputs only after every stream
/// has read them and reads the finished output and LSE. First through raw views (no cudarc
/// tracking: only the call's join orders that work), then through tracked views with the later
/// work on another stream (only the access events the call records on the runtime's stream
/// after its join order it). In each mix the worker streams carry more estimated work than the
/// runtime's stream (the longest run is alone on it), so without the join the later work would
/// start while they still run.
#[test]
#[ignore = "needs a CUDA GPU"]
fn later_work_sees_the_finished_call() {
    let rt = runtime();
    let (h, d) = (32usize, 128usize);
    let mixes = [
        (2, vec![4096usize, 3000, 3008]),
        (
            DEFAULT_VARLEN_STREAMS,
            vec![4096, 3000, 2992, 3008, 2984, 3016, 2976],
        ),
    ];
    for (streams, lens) in mixes {
        let total: usize = lens.iter().sum();
        let longest = *lens.iter().max().unwrap();
        let cu = prefix_sums(lens.iter().copied());
        let shape = [1, h, total, d];
        let bytes = total * h * d * 2;
        let opts = Options {
            layout: Layout::Nhd,
            ..Options::default()
        };
        let inputs = || {
            (
                random_device_tensor_in(shape, 11, Layout::Nhd),
                random_device_tensor_in(shape, 12, Layout::Nhd),
                random_device_tensor_in(shape, 13, Layout::Nhd),
            )
        };
        let nan_lse = || rt.stream().clone_htod(&vec![f32::NAN; h * total]).unwrap();
        // The reference: one stream, finished before anything else.
        let (q, k, v) = inputs();
        let mut out = Tensor::alloc_filled_nan(rt, DType::F16, shape, Layout::Nhd).unwrap();
        let mut lse = nan_lse();
        {
            let _one = VarlenStreams::set(rt, 1);
            let call = (&q.view(), &k.view(), &v.view());
            sageattn_varlen_into(
                rt,
                call.0,
                call.1,
                call.2,
                &cu,
                &cu,
                longest,
                longest,
                &mut out.view_mut(),
                Some(&mut lse),
                &opts,
            )
            .unwrap();
        }
        rt.synchronize().unwrap();
        let want_out = bytes_on(rt.stream(), address(&out), bytes);
        let want_lse = rt.stream().clone_dtoh(&lse).unwrap();
        assert!(want_lse.iter().all(|x| x.is_finite()));
        let _streams = VarlenStreams::set(rt, streams);
        let label = format!("{streams} streams, lengths {lens:?}");

        // Raw views, later work on the runtime's stream.
        let (q, k, v) = inputs();
        let out = Tensor::alloc_filled_nan(rt, DType::F16, shape, Layout::Nhd).unwrap();
        let mut lse = nan_lse();
        rt.synchronize().unwrap();
        let out_ptr = address(&out);
        // SAFETY: as `raw_view`.
        let mut out_view = unsafe {
            TensorViewMut::from_raw(out_ptr, DType::F16, shape, out.strides(), out.ordinal())
        };
        sageattn_varlen_into(
            rt,
            &raw_view(&q),
            &raw_view(&k),
            &raw_view(&v),
            &cu,
            &cu,
            longest,
            longest,
            &mut out_view,
            Some(&mut lse),
            &opts,
        )
        .unwrap();
        for t in [&q, &k, &v] {
            // SAFETY: the whole of a live tensor; 0xFF bytes are NaN in f16.
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    address(t),
                    0xFF,
                    bytes,
                    rt.stream().cu_stream(),
                )
            }
            .unwrap();
        }
        let got_lse = rt.stream().clone_dtoh(&lse).unwrap();
        let got_out = bytes_on(rt.stream(), out_ptr, bytes);
        assert!(got_out == want_out, "{label}: raw views, output");
        assert!(
            got_lse
                .iter()
                .zip(&want_lse)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{label}: raw views, LSE"
        );

        // Tracked views, later work on another stream.
        let (mut q, mut k, mut v) = inputs();
        let mut out = Tensor::alloc_filled_nan(rt, DType::F16, shape, Layout::Nhd).unwrap();
        let mut lse = nan_lse();
        rt.synchronize().unwrap();
        sageattn_varlen_into(
            rt,
            &q.view(),
            &k.view(),
            &v.view(),
            &cu,
            &cu,
            longest,
            longest,
            &mut out.view_mut(),
            Some(&mut lse),
            &opts,
        )
        .unwrap();
        let other = rt.context().new_stream().unwrap();
        for t in [&mut q, &mut k, &mut v] {
            let mut view = t.view_mut();
            // Waits on `other` for the call's reads, recorded on the runtime's stream.
            let (ptr, _access) = view.device_ptr_mut(&other);
            // SAFETY: the whole of a live tensor; 0xFF bytes are NaN in f16.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, other.cu_stream()) }
                .unwrap();
        }
        let got_lse = other.clone_dtoh(&lse).unwrap();
        let got_out = {
            let view = out.view();
            // Waits on `other` for the call's writes.
            let (ptr, _access) = view.device_ptr(&other);
            bytes_on(&other, ptr, bytes)
        };
        assert!(got_out == want_out, "{label}: tracked views, output");
        assert!(
            got_lse
                .iter()
                .zip(&want_lse)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{label}: tracked views, LSE"
        );
    }
}

/// `VARLEN_PROBE`: in one process, on the same inputs, the median time (CUDA events, as
/// `gpu_perf.rs`) and the host enqueue time of (a) the batched call B = 4, H = 32, N = 4096,
/// d = 128, f16, NHD, (b) `sageattn_varlen_into` on the same tokens packed (4 × 4096, the same
/// memory), their ratio (the target: within 5%), and (c) the mix of `bench --varlen`
/// (16 lengths from 128..=8192, its default seed) against the batched call padded to the
/// longest, on one stream and on 2, 8 and the default number of concurrent streams (each line
/// says how many the mix used). Run with `--ignored --nocapture varlen_probe`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn varlen_probe() {
    let rt = runtime();
    let (b, h, n, d) = (4usize, 32usize, 4096usize, 128usize);
    let packed_shape = [1, h, b * n, d];
    let (q, k, v) = (
        random_device_tensor_in(packed_shape, 1, Layout::Nhd),
        random_device_tensor_in(packed_shape, 2, Layout::Nhd),
        random_device_tensor_in(packed_shape, 3, Layout::Nhd),
    );
    let (qv, kv, vv) = (q.view(), k.view(), v.view());
    // A packed NHD [B·N, H, d] is, byte for byte, the batched NHD [B, N, H, d].
    let (qb, kb, vb) = (
        qv.split_seq(n).unwrap(),
        kv.split_seq(n).unwrap(),
        vv.split_seq(n).unwrap(),
    );
    assert_eq!(qb.strides(), Layout::Nhd.contiguous_strides([b, h, n, d]));
    let cu = prefix_sums([n; 4]);
    let mut out = Tensor::alloc(rt, DType::F16, packed_shape, Layout::Nhd).unwrap();
    let mut lse = rt.alloc_zeros::<f32>(h * b * n).unwrap();
    for (causal, with_lse) in [(false, false), (true, false), (false, true)] {
        let opts = Options {
            causal,
            layout: Layout::Nhd,
            ..Options::default()
        };
        let mut batched = || {
            let mut o = out.view_mut();
            let mut o = o.split_seq_mut(n).unwrap();
            let l = with_lse.then_some(&mut lse);
            sageattn_into(rt, &qb, &kb, &vb, &mut o, l, &opts).unwrap()
        };
        let batched_ms = median_ms(&mut batched);
        let batched_us = host_enqueue_us(&mut batched);
        let mut varlen = || {
            let l = with_lse.then_some(&mut lse);
            sageattn_varlen_into(
                rt,
                &qv,
                &kv,
                &vv,
                &cu,
                &cu,
                n,
                n,
                &mut out.view_mut(),
                l,
                &opts,
            )
            .unwrap()
        };
        let varlen_ms = median_ms(&mut varlen);
        let varlen_us = host_enqueue_us(&mut varlen);
        println!(
            "VARLEN_PROBE equal B={b} H={h} N={n} d={d} f16 NHD causal={causal} lse={with_lse}: \
             batched {batched_ms:.3} ms, varlen {varlen_ms:.3} ms, varlen/batched {:.3} \
             (host enqueue per call: batched {batched_us:.0} us, varlen {varlen_us:.0} us)",
            varlen_ms / batched_ms
        );
    }
    drop((out, lse));

    // (c) The mix of `bench --varlen` with its defaults (seed 20241002, 16 lengths in
    // 128..=8192), queries = keys, against the batched call padded to the longest.
    let lens: Vec<usize> = {
        let mut mix_rng = Xoshiro256PlusPlus::seed_from_u64(20_241_002 ^ 0x7661_726c_656e);
        (0..16).map(|_| mix_rng.gen_range(128..=8192)).collect()
    };
    let (total, longest) = (lens.iter().sum::<usize>(), *lens.iter().max().unwrap());
    let cu = prefix_sums(lens.iter().copied());
    let packed_shape = [1, h, total, d];
    let padded_shape = [lens.len(), h, longest, d];
    let pq = random_device_tensor_in(packed_shape, 4, Layout::Nhd);
    let pk = random_device_tensor_in(packed_shape, 5, Layout::Nhd);
    let pv = random_device_tensor_in(packed_shape, 6, Layout::Nhd);
    let bq = random_device_tensor_in(padded_shape, 7, Layout::Nhd);
    let bk = random_device_tensor_in(padded_shape, 8, Layout::Nhd);
    let bv = random_device_tensor_in(padded_shape, 9, Layout::Nhd);
    let mut packed_out = Tensor::alloc(rt, DType::F16, packed_shape, Layout::Nhd).unwrap();
    let mut padded_out = Tensor::alloc(rt, DType::F16, padded_shape, Layout::Nhd).unwrap();
    let batch = check_varlen_inputs(
        &pq.view(),
        &pk.view(),
        &pv.view(),
        &cu,
        &cu,
        longest,
        longest,
        &Options::default(),
    )
    .unwrap();
    for causal in [false, true] {
        let opts = Options {
            causal,
            layout: Layout::Nhd,
            ..Options::default()
        };
        let mut varlen = || {
            sageattn_varlen_into(
                rt,
                &pq.view(),
                &pk.view(),
                &pv.view(),
                &cu,
                &cu,
                longest,
                longest,
                &mut packed_out.view_mut(),
                None,
                &opts,
            )
            .unwrap()
        };
        // One stream (the calls one after another, as before issue 12), then concurrent
        // streams; the default last, as the line the ratio to the padded call refers to.
        let mut one_ms = f32::NAN;
        for streams in [1, 2, MAX_VARLEN_STREAMS, DEFAULT_VARLEN_STREAMS] {
            let _streams = VarlenStreams::set(rt, streams);
            let used = streams_used(rt, &batch, h);
            let ms = median_ms(&mut varlen);
            let us = host_enqueue_us(&mut varlen);
            if streams == 1 {
                one_ms = ms;
            }
            println!(
                "VARLEN_PROBE mix 16 seqs H={h} d={d} f16 NHD causal={causal} streams={used}: \
                 varlen {ms:.3} ms, one stream/this {:.3} (host enqueue per call {us:.0} us)",
                one_ms / ms
            );
        }
        let varlen_ms = median_ms(&mut varlen);
        let padded_ms = full_call_ms(&bq, &bk, &bv, &mut padded_out, &opts);
        println!(
            "VARLEN_PROBE mix 16 seqs H={h} d={d} f16 NHD causal={causal} lens {lens:?} \
             streams={}: varlen {varlen_ms:.3} ms, batched padded to {longest} {padded_ms:.3} ms, \
             padded/varlen {:.3}",
            streams_used(rt, &batch, h),
            padded_ms / varlen_ms
        );
    }
}

/// Mean host time to enqueue one call of `f` (20 calls, then a synchronize not counted).
fn host_enqueue_us(f: &mut impl FnMut()) -> f64 {
    let rt = runtime();
    f();
    rt.synchronize().unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        f();
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / 20.0;
    rt.synchronize().unwrap();
    us
}
