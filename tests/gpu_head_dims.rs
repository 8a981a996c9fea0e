//! GPU tests of every head_dim up to 256 (issue 15): the native d = 256 portable kernel and the
//! sizes that run zero-padded on the next compiled kernel (64, 96, 128, 256; on the sm_90a kernel
//! with `Backend::Auto` the same sizes, d = 96 native there since branch d96-native).
//!
//! * `accuracy_every_head_dim_against_exact_reference`: the project's contract on N(0,1) inputs,
//!   rel L1 ≤ 0.0135 and cos ≥ 0.9999 against exact float64 attention, for d ∈ {32, 48, 64, 80,
//!   96, 128, 160, 192, 256} (fresh inputs each run, output and LSE poisoned with NaN first);
//! * `matches_emulation_over_head_dims`: proptest over shapes, options and the same sizes against
//!   the CPU emulation of the quantized algorithm (rel L1 ≤ 3e-3, LSE ≤ 1e-3, as gpu_attention);
//! * `d256_feature_matrix`: d = 256 with causal, GQA, LSE, bf16, NHD/strided in and out, both P·V
//!   accumulators, both backends, rows without keys;
//! * `padded_quantization_is_bit_exact`: the INT8 Q/K, scales and K mean the GPU prepares for a
//!   padded size equal `quant_ref` on the unpadded inputs, bit for bit;
//! * `int8_pv_needs_a_kernel_for_the_head_dim`: the 8-bit P·V returns its typed error for d > 128;
//! * `sanitizer_head_dims`: a small matrix for compute-sanitizer (d = 256 and odd sizes 40, 200).
//!
//! Run on a GPU with `--include-ignored --test-threads=1`.

mod common;

use common::{
    channel_offsets, fresh_rng, lse_max_error, random_tensor, run_poisoned, runtime, upload,
};
use proptest::prelude::*;
use sageattention::quant_ref::{k_mean, quantize_k, quantize_q};
use sageattention::reference::{
    attention_f64, attention_quantized_emulation, compare, HostTensor, Metrics, RefOptions,
    RefOutput,
};
use sageattention::{
    sageattn_into, Backend, DType, Error, Layout, Options, Prepared, PvAccum, PvPrecision, Tensor,
};

/// The head dims of the matrix.
const DIMS: [usize; 9] = [32, 48, 64, 80, 96, 128, 160, 192, 256];
/// Kernel error against the CPU emulation (as tests/gpu_attention.rs).
const EMULATION_REL_L1: f64 = 3e-3;
/// LSE against the emulation's (natural log), absolute.
const LSE_TOL: f64 = 1e-3;
/// The project's accuracy contract against exact attention on N(0,1) inputs.
const CONTRACT_REL_L1: f64 = 0.0135;
const CONTRACT_COS: f64 = 0.9999;

#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    qo_len: usize,
    kv_len: usize,
    head_dim: usize,
    causal: bool,
    dtype: DType,
    layout: Layout,
    out_layout: Layout,
    smooth_k: bool,
    pv_accum: PvAccum,
    backend: Backend,
}

impl Case {
    fn small(head_dim: usize) -> Self {
        Case {
            batch: 1,
            q_heads: 2,
            kv_heads: 1,
            qo_len: 150,
            kv_len: 130,
            head_dim,
            causal: false,
            dtype: DType::F16,
            layout: Layout::Hnd,
            out_layout: Layout::Hnd,
            smooth_k: true,
            pv_accum: PvAccum::F16,
            backend: Backend::Auto,
        }
    }

    fn options(&self) -> Options {
        Options {
            causal: self.causal,
            smooth_k: self.smooth_k,
            sm_scale: None,
            layout: self.out_layout,
            pv_accum: self.pv_accum,
            pv_precision: PvPrecision::F16,
            return_lse: true,
            backend: self.backend,
        }
    }

    fn ref_options(&self) -> RefOptions {
        RefOptions {
            causal: self.causal,
            sm_scale: None,
        }
    }
}

struct Inputs {
    q: HostTensor,
    k: HostTensor,
    v: HostTensor,
}

fn inputs(case: &Case, rng: &mut rand::rngs::StdRng, k_offset_amp: f32) -> Inputs {
    let offsets = (k_offset_amp > 0.0).then(|| channel_offsets(rng, case.head_dim, k_offset_amp));
    let q_shape = [case.batch, case.q_heads, case.qo_len, case.head_dim];
    let kv_shape = [case.batch, case.kv_heads, case.kv_len, case.head_dim];
    Inputs {
        q: random_tensor(rng, q_shape, case.dtype, 1.0, None),
        k: random_tensor(rng, kv_shape, case.dtype, 1.0, offsets.as_deref()),
        v: random_tensor(rng, kv_shape, case.dtype, 1.0, None),
    }
}

/// Runs `case` into a NaN-poisoned output and LSE; returns both (logical order).
fn run_gpu(case: &Case, x: &Inputs) -> (Vec<f32>, Vec<f32>) {
    run_poisoned(
        [&x.q, &x.k, &x.v],
        case.dtype,
        case.layout,
        case.dtype,
        case.out_layout,
        &case.options(),
    )
    .unwrap_or_else(|e| panic!("{case:?}: {e}"))
}

fn emulation(case: &Case, x: &Inputs) -> RefOutput {
    attention_quantized_emulation(
        &x.q,
        &x.k,
        &x.v,
        &case.ref_options(),
        case.smooth_k,
        case.pv_accum == PvAccum::F16,
    )
}

/// Every element written and finite, rel L1 and LSE within the kernel-error bounds.
fn check_against_emulation(case: &Case, out: &[f32], lse: &[f32], emulated: &RefOutput) -> Metrics {
    assert!(
        out.iter().all(|x| x.is_finite()),
        "unwritten (NaN-poisoned) or non-finite output: {case:?}"
    );
    let m = compare(out, &emulated.o);
    assert!(
        m.rel_l1 <= EMULATION_REL_L1,
        "rel L1 {:.2e} > {EMULATION_REL_L1:.0e} vs emulation: {case:?} {m:?}",
        m.rel_l1
    );
    let lse_err = lse_max_error(lse, &emulated.lse);
    assert!(
        lse_err <= LSE_TOL,
        "LSE error {lse_err:.2e} vs emulation: {case:?}"
    );
    m
}

/// The contract on N(0,1) inputs (and, with smoothing, on K with channel offsets ×8) for every
/// size of the issue: rel L1 ≤ 0.0135 and cos ≥ 0.9999 against exact float64 attention, N = 2048,
/// 16 heads (one draw's error varies by a few percent; over 16 heads it stays inside the bound),
/// plus the kernel error against the emulation. `Backend::Auto`, P·V accumulator F16 (on Hopper
/// Auto takes f32 and runs the wgmma kernels there: d ≤ 64, ≤ 96, ≤ 128 and ≤ 256 on the 64, 96,
/// 128 and 256 ones).
#[test]
#[ignore = "needs a CUDA GPU"]
fn accuracy_every_head_dim_against_exact_reference() {
    let mut rng = fresh_rng("head_dims_accuracy");
    let mut runs = Vec::new();
    for head_dim in DIMS {
        runs.push((head_dim, DType::F16, 0.0f32));
    }
    for head_dim in [80, 96, 160, 256] {
        runs.push((head_dim, DType::BF16, 0.0));
        runs.push((head_dim, DType::F16, 8.0));
    }
    for (head_dim, dtype, k_offset) in runs {
        let case = Case {
            q_heads: 16,
            kv_heads: 16,
            qo_len: 2048,
            kv_len: 2048,
            dtype,
            ..Case::small(head_dim)
        };
        let x = inputs(&case, &mut rng, k_offset);
        let (out, lse) = run_gpu(&case, &x);
        check_against_emulation(&case, &out, &lse, &emulation(&case, &x));
        let exact = attention_f64(&x.q, &x.k, &x.v, &case.ref_options());
        let m = compare(&out, &exact.o);
        eprintln!(
            "QUALITY d={head_dim} {dtype:?} k_offset={k_offset}: cos {:.6} rel_l1 {:.4} rmse {:.2e} max_abs {:.2e}",
            m.cos_sim, m.rel_l1, m.rmse, m.max_abs
        );
        // The contract for every dtype. On the H200, d = 256 bf16 gave 0.01356 with per-block Q
        // scales (over the bar); with per-token Q scales every size passes (docs/perf-notes.md v8).
        assert!(
            m.cos_sim >= CONTRACT_COS && m.rel_l1 <= CONTRACT_REL_L1,
            "d={head_dim} {dtype:?} k_offset {k_offset}: {m:?}"
        );
    }
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        (
            1usize..=2,
            prop::sample::select(vec![(1usize, 1usize), (2, 1), (4, 2), (3, 3), (8, 1)]),
        ),
        (1usize..=300, 1usize..=300),
        prop::sample::select(DIMS.to_vec()),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (batch, (q_heads, kv_heads)),
                (qo_len, kv_len),
                head_dim,
                (causal, bf16, nhd, out_nhd),
                (smooth_k, pv_f32, portable),
            )| Case {
                batch,
                q_heads,
                kv_heads,
                qo_len,
                kv_len,
                head_dim,
                causal,
                dtype: if bf16 { DType::BF16 } else { DType::F16 },
                layout: if nhd { Layout::Nhd } else { Layout::Hnd },
                out_layout: if out_nhd { Layout::Nhd } else { Layout::Hnd },
                smooth_k,
                pv_accum: if pv_f32 { PvAccum::F32 } else { PvAccum::F16 },
                backend: if portable {
                    Backend::Portable
                } else {
                    Backend::Auto
                },
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every size and feature combination equals the CPU emulation of the quantized algorithm.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matches_emulation_over_head_dims(case in arb_case(), seed in any::<u64>()) {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = inputs(&case, &mut rng, 2.0);
        let (out, lse) = run_gpu(&case, &x);
        let m = check_against_emulation(&case, &out, &lse, &emulation(&case, &x));
        eprintln!("{case:?}: rel L1 vs emulation {:.2e}", m.rel_l1);
    }
}

/// d = 256 over the feature matrix: causal × P·V accumulator × backend × (dtype, layouts), with
/// GQA (8 query heads on 2 KV heads), tails in both lengths, LSE, smoothing on and off, each
/// against the emulation and (cos) the exact attention. Then causal rows without keys.
#[test]
#[ignore = "needs a CUDA GPU"]
fn d256_feature_matrix() {
    let mut rng = fresh_rng("d256_matrix");
    let formats = [
        (DType::F16, Layout::Hnd, Layout::Hnd),
        (DType::BF16, Layout::Nhd, Layout::Hnd),
        (DType::F16, Layout::Nhd, Layout::Nhd),
        (DType::BF16, Layout::Hnd, Layout::Nhd),
    ];
    let mut i = 0usize;
    for causal in [false, true] {
        for pv_accum in [PvAccum::F16, PvAccum::F32] {
            for backend in [Backend::Portable, Backend::Auto] {
                for (dtype, layout, out_layout) in formats {
                    let case = Case {
                        batch: 2,
                        q_heads: 8,
                        kv_heads: 2,
                        qo_len: 197 + 13 * (i % 3),
                        kv_len: 333 - 17 * (i % 4),
                        head_dim: 256,
                        causal,
                        dtype,
                        layout,
                        out_layout,
                        smooth_k: i.is_multiple_of(2),
                        pv_accum,
                        backend,
                    };
                    i += 1;
                    let x = inputs(&case, &mut rng, 1.0);
                    let (out, lse) = run_gpu(&case, &x);
                    let m = check_against_emulation(&case, &out, &lse, &emulation(&case, &x));
                    let exact = compare(
                        &out,
                        &attention_f64(&x.q, &x.k, &x.v, &case.ref_options()).o,
                    );
                    eprintln!(
                        "{case:?}: rel L1 vs emulation {:.2e}, vs exact {:.4} (cos {:.6})",
                        m.rel_l1, exact.rel_l1, exact.cos_sim
                    );
                    // The contract is for smoothed K; without smoothing, K's channel offsets (these
                    // inputs have them) enlarge the INT8 error (measured: cos 0.99986 at d = 256,
                    // bf16, offsets 1.0), which the emulation check above still bounds.
                    if case.smooth_k {
                        assert!(exact.cos_sim >= CONTRACT_COS, "{case:?}: {exact:?}");
                    }
                }
            }
        }
    }
    // Causal with more queries than keys: the first qo_len - kv_len rows see nothing.
    for backend in [Backend::Portable, Backend::Auto] {
        let case = Case {
            qo_len: 200,
            kv_len: 70,
            head_dim: 256,
            causal: true,
            dtype: DType::BF16,
            layout: Layout::Nhd,
            backend,
            ..Case::small(256)
        };
        let x = inputs(&case, &mut rng, 0.0);
        let (out, lse) = run_gpu(&case, &x);
        for h in 0..case.q_heads {
            for r in 0..case.qo_len - case.kv_len {
                let row = (h * case.qo_len + r) * 256;
                assert!(
                    out[row..row + 256].iter().all(|&v| v == 0.0),
                    "head {h} row {r}"
                );
                assert_eq!(lse[h * case.qo_len + r], f32::NEG_INFINITY);
            }
        }
        check_against_emulation(&case, &out, &lse, &emulation(&case, &x));
    }
}

/// The INT8 Q and K, their scales and K's mean that the GPU prepares for sizes that run padded
/// (and for d = 256) equal `quant_ref` on the unpadded inputs, bit for bit: zero padding changes
/// no scale and no value. (`Prepared` returns the caller's head_dim columns of the padded rows.)
#[test]
#[ignore = "needs a CUDA GPU"]
fn padded_quantization_is_bit_exact() {
    let rt = runtime();
    let mut rng = fresh_rng("padded_quantization");
    for head_dim in [8usize, 40, 80, 160, 200, 256] {
        for backend in [Backend::Portable, Backend::Auto] {
            let case = Case {
                qo_len: 300,
                kv_len: 333,
                dtype: if head_dim.is_multiple_of(16) {
                    DType::BF16
                } else {
                    DType::F16
                },
                layout: Layout::Nhd,
                backend,
                ..Case::small(head_dim)
            };
            let x = inputs(&case, &mut rng, 2.0);
            let (qd, kd, vd) = (
                upload(rt, &x.q, case.dtype, case.layout),
                upload(rt, &x.k, case.dtype, case.layout),
                upload(rt, &x.v, case.dtype, case.layout),
            );
            let opts = case.options();
            let prepared = Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &opts).unwrap();
            let sm_scale = case.ref_options().sm_scale_for(head_dim);
            let mean = k_mean(&x.k);
            let (want_q, want_k) = (quantize_q(&x.q, sm_scale), quantize_k(&x.k, Some(&mean)));
            let (q8, q_scale) = prepared.q_quantized_to_host(rt).unwrap();
            let (k8, k_scale) = prepared.k_quantized_to_host(rt).unwrap();
            let got_mean = prepared.k_mean_to_host(rt).unwrap().unwrap();
            let what = format!("d={head_dim} {backend:?}");
            assert_eq!(q8, want_q.data, "Q values, {what}");
            assert_eq!(k8, want_k.data, "K values, {what}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&q_scale), bits(&want_q.scale), "Q scales, {what}");
            assert_eq!(bits(&k_scale), bits(&want_k.scale), "K scales, {what}");
            assert_eq!(bits(&got_mean), bits(&mean), "K mean, {what}");
        }
    }
}

/// Neither 8-bit P·V kernel takes head dims that are not multiples of 16 (both go up to 256): the
/// call returns the typed error before any launch, and the output is untouched.
#[test]
#[ignore = "needs a CUDA GPU"]
fn int8_pv_needs_a_kernel_for_the_head_dim() {
    let rt = runtime();
    let mut rng = fresh_rng("int8_head_dims");
    for (head_dim, backend) in [
        (40, Backend::Auto),
        (136, Backend::Auto),
        (40, Backend::Portable),
        (200, Backend::Portable),
    ] {
        let case = Case::small(head_dim);
        let x = inputs(&case, &mut rng, 0.0);
        let (qd, kd, vd) = (
            upload(rt, &x.q, case.dtype, case.layout),
            upload(rt, &x.k, case.dtype, case.layout),
            upload(rt, &x.v, case.dtype, case.layout),
        );
        let shape = [case.batch, case.q_heads, case.qo_len, head_dim];
        let mut out = Tensor::alloc_filled_nan(rt, case.dtype, shape, case.out_layout).unwrap();
        let opts = Options {
            pv_precision: PvPrecision::Int8,
            backend,
            ..case.options()
        };
        let err = sageattn_into(
            rt,
            &qd.view(),
            &kd.view(),
            &vd.view(),
            &mut out.view_mut(),
            None,
            &opts,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::PvPrecisionUnavailable { .. }),
            "d={head_dim}: {err}"
        );
        eprintln!("d={head_dim}: {err}");
        assert!(out.to_host_f32(rt).unwrap().iter().all(|v| v.is_nan()));
    }
}

/// A small matrix for compute-sanitizer (memcheck, racecheck, initcheck, synccheck): d = 256
/// (both accumulators, causal and not, both backends, GQA, bf16 NHD) and the odd sizes 40 (the
/// fused K-sum launch with idle threads; padded to 64), 200 (padded to 256) and 88 (padded to 96:
/// the native sm_90a d = 96 kernel with `Backend::Auto` on Hopper), each against the emulation.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sanitizer_head_dims() {
    let mut rng = fresh_rng("sanitizer_head_dims");
    let mut i = 0usize;
    for head_dim in [256, 40, 200, 88] {
        for (causal, pv_accum, backend) in [
            (false, PvAccum::F16, Backend::Portable),
            (true, PvAccum::F32, Backend::Portable),
            (true, PvAccum::F16, Backend::Auto),
            (false, PvAccum::F32, Backend::Auto),
        ] {
            let case = Case {
                q_heads: 4,
                kv_heads: if i.is_multiple_of(2) { 2 } else { 4 },
                qo_len: 70 + 31 * (i % 3),
                kv_len: 97 - 20 * (i % 2),
                causal,
                dtype: if causal { DType::BF16 } else { DType::F16 },
                layout: if i.is_multiple_of(2) {
                    Layout::Nhd
                } else {
                    Layout::Hnd
                },
                out_layout: if i.is_multiple_of(3) {
                    Layout::Nhd
                } else {
                    Layout::Hnd
                },
                pv_accum,
                backend,
                ..Case::small(head_dim)
            };
            i += 1;
            let x = inputs(&case, &mut rng, 1.0);
            let (out, lse) = run_gpu(&case, &x);
            check_against_emulation(&case, &out, &lse, &emulation(&case, &x));
        }
    }
}
