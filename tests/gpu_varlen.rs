//! GPU tests of `sageattn_varlen` (packed, variable-length batches):
//!
//! * equal lengths: the packed call equals the batched call on the same memory row by row, bit
//!   for bit (output and LSE);
//! * random length mixes (empty, single rows, hundreds; Q and K lengths independent) over the
//!   options, against the CPU emulation run per sequence, with the tolerances of
//!   `gpu_attention.rs`; outputs and LSE poisoned with NaN first;
//! * sequences without keys, the 8-bit P·V (sm_90), and prefix sums given as device buffers.
//!
//! Run on a GPU with `--include-ignored --test-threads=1`.

mod common;

use common::{fresh_rng, lse_max_error, pack, prefix_sums, random_tensor, round_to, runtime};
use cudarc::driver::{CudaSlice, DeviceRepr};
use half::{bf16, f16};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use sageattention::reference::{
    attention_pv8_emulation, attention_varlen, attention_varlen_quantized_emulation, compare,
    HostTensor, RefOptions,
};
use sageattention::tensor::Element;
use sageattention::{
    sageattn_into, sageattn_varlen, sageattn_varlen_into, Backend, DType, Error, Layout, Options,
    PvAccum, PvPrecision, Runtime, Tensor, TensorView,
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
    for head_dim in [64, 96, 128] {
        case.head_dim = head_dim;
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
