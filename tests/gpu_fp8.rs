//! GPU tests of the FP8 P·V path ([`PvPrecision::Fp8`]: e4m3 P per 128-key tile × e4m3 Vᵀ). Two
//! kernels compute it: the sm_89 module's `mma.sync m16n8k32 e4m3·e4m3` with an f32 or an f16
//! accumulator (Ada; `Backend::Portable` anywhere from 8.9), and on Hopper with `Backend::Auto`
//! the sm_90a kernel's `wgmma m64nNk32.f32.e4m3.e4m3` (f32 accumulator per tile). No Ada card is
//! available here: on the H200 the driver JIT-compiles the sm_89 PTX for sm_90 (where ptxas
//! emulates the e4m3 mma), which is how these tests run it; each test also runs `Backend::Auto`,
//! which is the sm_90a kernel there (the sm_89 one on Ada).
//!
//! * the e4m3 V preparation (the sm_89 module's `sage_prepare`) is bit-exact with its CPU
//!   emulation ([`quantize_v8_as`] with [`VFormat::E4m3`]);
//! * the attention equals [`attention_fp8_emulation`] over awkward lengths, causal, GQA,
//!   qo_len ≠ kv_len, rows without keys, bf16, NHD, zero-padded head dims, d = 64/96/128/256,
//!   LSE, with either accumulator;
//! * accuracy against exact float64 attention on N(0,1) (the FP8 bar of tests/cpu_fp8.rs, not the
//!   INT8 path's 0.020, which e4m3 does not reach);
//! * dispatch and the typed errors; a small matrix for compute-sanitizer.
//!
//! Every test skips (passes) on a GPU below compute capability 8.9. Run with
//! `--ignored --test-threads=1`.

mod common;

use common::{
    fresh_rng, kernel_and_full_ms, lse_max_error, random_qkv, random_tensor, run_poisoned, runtime,
    upload,
};
use rand::rngs::StdRng;
use sageattention::attention::{fp8_kernel, hopper_fp8_kernel, selected_kernel, FP8_MIN_CC};
use sageattention::hopper::hopper_available;
use sageattention::quant_ref::{k_mean, quantize_k};
use sageattention::reference::v8::{quantize_v8_as, VFormat};
use sageattention::reference::{
    attention_f64, attention_fp8_emulation, compare, HostTensor, RefOptions,
};
use sageattention::runtime::ModuleKind;
use sageattention::{
    Backend, DType, Error, Layout, Options, Prepared, PvAccum, PvPrecision, Tensor,
};

/// Against the CPU emulation: the GPU's `ex2.approx`/f32 rounding moving an e4m3 P by one step
/// at a rounding boundary, the online softmax's f32 rescaling, and (f16 accumulator) the order in
/// which the hardware rounds within an mma, which the emulation models as one rounding per 32-key
/// k-step. Not yet measured on a GPU: a first run may tighten or have to widen it.
const EMULATION_REL_L1: f64 = 3e-3;
/// See [`EMULATION_REL_L1`]; the f16 accumulator's rounding order is the hardware's.
const EMULATION_REL_L1_F16ACC: f64 = 5e-3;
/// LSE, absolute (natural log): the row sums are f32 as on the other paths.
const LSE_TOL: f64 = 1e-3;
/// The FP8 bar against exact attention on N(0,1): the emulation measures rel L1 0.035–0.037 and
/// cos ≥ 0.99933 (tests/cpu_fp8.rs), plus the GPU's distance from it.
const FP8_REL_L1: f64 = 0.042;
/// See [`FP8_REL_L1`].
const FP8_COS: f64 = 0.9992;

fn skip_below_sm89() -> bool {
    if runtime().compute_capability() >= FP8_MIN_CC {
        false
    } else {
        eprintln!("compute capability below 8.9: no e4m3 mma.sync, skipped");
        true
    }
}

fn fp8_options(causal: bool, layout: Layout, smooth_k: bool, f16_accum: bool) -> Options {
    Options {
        causal,
        smooth_k,
        layout,
        return_lse: true,
        pv_precision: PvPrecision::Fp8,
        pv_accum: if f16_accum {
            PvAccum::F16
        } else {
            PvAccum::F32
        },
        backend: Backend::Portable,
        ..Options::default()
    }
}

#[derive(Clone, Copy, Debug)]
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
    smooth_k: bool,
}

/// Q and K N(0,1) (K with per-channel offsets), V N(0,1) plus per-channel offsets (so that V's
/// mean smoothing matters); fresh values from `rng`.
fn inputs(case: &Case, rng: &mut StdRng) -> (HostTensor, HostTensor, HostTensor) {
    let d = case.head_dim;
    let k_off = common::channel_offsets(rng, d, 2.0);
    let v_off = common::channel_offsets(rng, d, 1.0);
    let q_shape = [case.batch, case.q_heads, case.qo_len, d];
    let kv_shape = [case.batch, case.kv_heads, case.kv_len, d];
    (
        random_tensor(rng, q_shape, case.dtype, 1.0, None),
        random_tensor(rng, kv_shape, case.dtype, 1.0, Some(&k_off)),
        random_tensor(rng, kv_shape, case.dtype, 1.0, Some(&v_off)),
    )
}

/// The routes each test runs: `(backend, f16 accumulator requested)`: the sm_89 kernel with each
/// accumulator, and `Backend::Auto` (the sm_90a kernel on Hopper, the sm_89 f16-accumulator
/// kernel on Ada).
const ROUTES: [(Backend, bool); 3] = [
    (Backend::Portable, false),
    (Backend::Portable, true),
    (Backend::Auto, true),
];

/// Whether the kernel a route selects accumulates each tile in f16 (the emulation to compare
/// with): the sm_90a kernel always accumulates in f32.
fn route_f16_accum(case: &Case, backend: Backend, f16_accum: bool) -> bool {
    let opts = Options {
        backend,
        ..fp8_options(case.causal, case.layout, case.smooth_k, f16_accum)
    };
    !selected_kernel(runtime(), case.head_dim, &opts)
        .expect("an FP8 kernel for this head_dim")
        .pv_f32
}

/// One case on the GPU (output and LSE poisoned with NaN first): O and LSE as f32.
fn run(
    case: &Case,
    f16_accum: bool,
    backend: Backend,
    (q, k, v): (&HostTensor, &HostTensor, &HostTensor),
) -> (Vec<f32>, Vec<f32>) {
    let opts = Options {
        backend,
        ..fp8_options(case.causal, case.layout, case.smooth_k, f16_accum)
    };
    run_poisoned(
        [q, k, v],
        case.dtype,
        case.layout,
        case.dtype,
        case.layout,
        &opts,
    )
    .unwrap()
}

/// The whole FP8 call on bf16 V with [`common::subnormal_v_channels`]: every output finite, on
/// every route (the sm_89 kernel with both accumulators, and `Backend::Auto`), and within the FP8
/// bar of exact attention.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_subnormal_v_channels_give_finite_outputs() {
    if skip_below_sm89() {
        return;
    }
    let mut rng = fresh_rng("fp8_subnormal_v");
    let case = Case {
        batch: 1,
        q_heads: 2,
        kv_heads: 2,
        qo_len: 70,
        kv_len: 300,
        head_dim: 64,
        causal: false,
        dtype: DType::BF16,
        layout: Layout::Hnd,
        smooth_k: true,
    };
    let (q, k, mut v) = inputs(&case, &mut rng);
    common::subnormal_v_channels(&mut v);
    let exact = attention_f64(&q, &k, &v, &RefOptions::default());
    for (backend, f16_accum) in ROUTES {
        let opts = Options {
            backend,
            ..fp8_options(false, case.layout, true, f16_accum)
        };
        let (o, _) = run_poisoned(
            [&q, &k, &v],
            case.dtype,
            case.layout,
            case.dtype,
            case.layout,
            &opts,
        )
        .unwrap();
        let bad = o.iter().filter(|x| !x.is_finite()).count();
        assert_eq!(
            bad, 0,
            "{backend:?} f16 accumulator {f16_accum}: {bad} outputs not finite"
        );
        let m = compare(&o, &exact.o);
        assert!(
            m.rel_l1 <= FP8_REL_L1,
            "{backend:?} f16 accumulator {f16_accum}: {m:?}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_v_preparation_is_bit_exact() {
    if skip_below_sm89() {
        return;
    }
    let rt = runtime();
    let mut rng = fresh_rng("fp8_v_prep");
    // (batch, kv_heads, kv_len, head_dim, dtype, layout): around the 16-key permutation groups,
    // the 64-key tiles, the 256-row segments and the fold limits (1024 / 1025 keys); d = 160 is
    // stored 256 wide.
    for (batch, kv_heads, kv_len, d, dtype, layout) in [
        (1, 1, 1, 64, DType::F16, Layout::Hnd),
        (2, 2, 17, 128, DType::BF16, Layout::Nhd),
        (1, 3, 300, 96, DType::F16, Layout::Hnd),
        (1, 2, 1024, 128, DType::F16, Layout::Hnd),
        (1, 1, 1025, 96, DType::BF16, Layout::Nhd),
        (1, 2, 300, 256, DType::F16, Layout::Hnd),
        (2, 1, 129, 160, DType::BF16, Layout::Nhd),
    ] {
        let case = Case {
            batch,
            q_heads: kv_heads,
            kv_heads,
            qo_len: 5,
            kv_len,
            head_dim: d,
            causal: false,
            dtype,
            layout,
            smooth_k: true,
        };
        let (q, k, mut v) = inputs(&case, &mut rng);
        if dtype == DType::BF16 {
            common::subnormal_v_channels(&mut v);
        }
        let (qd, kd, vd) = (
            upload(rt, &q, dtype, layout),
            upload(rt, &k, dtype, layout),
            upload(rt, &v, dtype, layout),
        );
        let opts = fp8_options(false, layout, true, true);
        let prepared = Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &opts).unwrap();
        let gpu = prepared.v8_to_host(rt).unwrap().expect("8-bit V prepared");
        assert_eq!(gpu.format, VFormat::E4m3);
        let cpu = quantize_v8_as(&v, gpu.out_head_dim, VFormat::E4m3);
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&gpu.mean), bits(&cpu.mean), "mean: {case:?}");
        assert_eq!(bits(&gpu.scale), bits(&cpu.scale), "scales: {case:?}");
        let wrong: Vec<(usize, i8, i8)> = gpu
            .data
            .iter()
            .zip(&cpu.data)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, *a, *b))
            .collect();
        for &(i, g, c) in wrong.iter().take(12) {
            let (row, slot) = (i / gpu.padded_seq, i % gpu.padded_seq);
            eprintln!("  differs: Vᵀ row {row} slot {slot}: gpu {g:#04x} cpu {c:#04x}");
        }
        assert!(
            wrong.is_empty(),
            "{} Vᵀ bytes differ: {case:?}",
            wrong.len()
        );
        // Q/K share the launches: the sm_89 module's preparation quantizes them as the portable one.
        let k_mean_ref = k_mean(&k);
        let (k_i8, k_scale) = prepared.k_quantized_to_host(rt).unwrap();
        let k_ref = quantize_k(&k, Some(&k_mean_ref));
        assert_eq!(k_i8, k_ref.data, "K int8: {case:?}");
        assert_eq!(bits(&k_scale), bits(&k_ref.scale), "K scales: {case:?}");
        eprintln!("FP8 V {case:?}: bit-exact ({} bytes)", cpu.data.len());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_attention_matches_emulation() {
    if skip_below_sm89() {
        return;
    }
    let mut rng = fresh_rng("fp8_attention");
    let (f16, bf16) = (DType::F16, DType::BF16);
    let (hnd, nhd) = (Layout::Hnd, Layout::Nhd);
    #[rustfmt::skip]
    let cases = [
        // batch, q_heads, kv_heads, qo_len, kv_len, head_dim, causal, dtype, layout, smooth_k
        (1, 2, 1, 1, 1, 64, false, f16, hnd, true),
        (1, 2, 2, 63, 63, 128, true, bf16, hnd, true),
        (2, 4, 2, 65, 200, 64, true, bf16, nhd, false),
        (1, 4, 1, 200, 65, 128, true, f16, hnd, true),
        (1, 2, 2, 1000, 1000, 128, false, f16, nhd, true),
        (1, 2, 1, 1000, 333, 64, true, f16, hnd, true),
        (1, 2, 2, 200, 1000, 128, false, bf16, nhd, false),
        (1, 1, 1, 1, 1000, 128, true, bf16, hnd, true),
        (1, 3, 3, 1000, 1, 64, false, f16, hnd, true),
        (2, 2, 1, 129, 700, 128, true, bf16, nhd, true),
        (1, 2, 2, 500, 700, 96, true, f16, hnd, true),
        (1, 4, 2, 257, 1000, 96, false, bf16, nhd, true),
        (1, 2, 1, 128, 128, 128, true, f16, hnd, true),
        (1, 2, 2, 129, 127, 64, true, bf16, nhd, true),
        (2, 2, 2, 127, 129, 96, false, f16, hnd, true),
        (1, 2, 1, 200, 300, 80, true, bf16, nhd, true),
        (2, 4, 2, 100, 257, 112, true, f16, hnd, true),
        (1, 2, 1, 200, 300, 256, true, f16, hnd, true),
        (1, 2, 2, 130, 129, 256, false, bf16, nhd, true),
        (1, 2, 2, 100, 250, 160, true, f16, hnd, true),
    ];
    for row in cases {
        let case = Case {
            batch: row.0,
            q_heads: row.1,
            kv_heads: row.2,
            qo_len: row.3,
            kv_len: row.4,
            head_dim: row.5,
            causal: row.6,
            dtype: row.7,
            layout: row.8,
            smooth_k: row.9,
        };
        let (q, k, v) = inputs(&case, &mut rng);
        let ref_opts = RefOptions {
            causal: case.causal,
            sm_scale: None,
        };
        for (backend, requested) in ROUTES {
            let f16_accum = route_f16_accum(&case, backend, requested);
            let (o, lse) = run(&case, requested, backend, (&q, &k, &v));
            assert!(
                o.iter().all(|x| x.is_finite()),
                "unwritten output: {backend:?} {case:?}"
            );
            let reference =
                attention_fp8_emulation(&q, &k, &v, &ref_opts, case.smooth_k, f16_accum);
            let m = compare(&o, &reference.o);
            let lse_err = lse_max_error(&lse, &reference.lse);
            eprintln!(
                "FP8 {backend:?} f16acc={f16_accum} {case:?}: vs emulation rel L1 {:.2e} max_abs \
                 {:.2e} LSE {lse_err:.2e}",
                m.rel_l1, m.max_abs
            );
            let tol = if f16_accum {
                EMULATION_REL_L1_F16ACC
            } else {
                EMULATION_REL_L1
            };
            assert!(
                m.n_nan_mismatch == 0 && m.rel_l1 <= tol,
                "{backend:?} {case:?}: {m:?}"
            );
            assert!(
                lse_err <= LSE_TOL,
                "LSE {lse_err:.2e}: {backend:?} {case:?}"
            );
            let (rows, d) = (case.batch * case.q_heads * case.qo_len, case.head_dim);
            for r in 0..rows {
                let i = r % case.qo_len;
                if case.causal && i + case.kv_len < case.qo_len {
                    assert_eq!(lse[r], f32::NEG_INFINITY, "row {i} LSE: {case:?}");
                    assert!(o[r * d..(r + 1) * d].iter().all(|&x| x == 0.0), "row {i}");
                }
            }
        }
    }
}

/// Against exact float64 attention, B = 1, H = 8, N = 2048, N(0,1): [`FP8_REL_L1`], [`FP8_COS`].
#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_accuracy_against_exact_reference() {
    if skip_below_sm89() {
        return;
    }
    let mut rng = fresh_rng("fp8_accuracy");
    for head_dim in [64, 96, 128, 256] {
        for dtype in [DType::F16, DType::BF16] {
            let case = Case {
                batch: 1,
                q_heads: 8,
                kv_heads: 8,
                qo_len: 2048,
                kv_len: 2048,
                head_dim,
                causal: false,
                dtype,
                layout: Layout::Hnd,
                smooth_k: true,
            };
            let shape = [1, 8, 2048, head_dim];
            let q = random_tensor(&mut rng, shape, dtype, 1.0, None);
            let k = random_tensor(&mut rng, shape, dtype, 1.0, None);
            let v = random_tensor(&mut rng, shape, dtype, 1.0, None);
            let exact = attention_f64(&q, &k, &v, &RefOptions::default());
            for (backend, requested) in ROUTES {
                let f16_accum = route_f16_accum(&case, backend, requested);
                let (o, _) = run(&case, requested, backend, (&q, &k, &v));
                let m = compare(&o, &exact.o);
                eprintln!(
                    "FP8 QUALITY {backend:?} d={head_dim} {dtype:?} f16acc={f16_accum}: cos {:.6} \
                     rel_l1 {:.4}",
                    m.cos_sim, m.rel_l1
                );
                assert!(
                    m.rel_l1 <= FP8_REL_L1 && m.cos_sim >= FP8_COS,
                    "{backend:?} d={head_dim} {dtype:?} f16acc={f16_accum}: {m:?}"
                );
            }
        }
    }
}

/// `Backend::Portable` selects the sm_89 kernel (the accumulator as `pv_accum` asks), and so does
/// `Backend::Auto` except on Hopper, where it selects the sm_90a FP8 kernel (f32 accumulator, V
/// from the FP8 module); a head_dim no 8-bit kernel takes is a typed error before any launch.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_dispatch_and_errors() {
    if skip_below_sm89() {
        return;
    }
    let rt = runtime();
    for head_dim in [64, 96, 128, 256, 80, 160] {
        for causal in [false, true] {
            for f16_accum in [false, true] {
                for backend in [Backend::Auto, Backend::Portable] {
                    let opts = Options {
                        backend,
                        ..fp8_options(causal, Layout::Hnd, true, f16_accum)
                    };
                    let k = selected_kernel(rt, head_dim, &opts).unwrap();
                    assert!(k.pv8 && k.fp8, "{k:?}");
                    if backend == Backend::Auto && hopper_available(rt) {
                        assert_eq!(Some(k), hopper_fp8_kernel(head_dim, causal));
                        assert_eq!((k.module, k.pv_f32), (ModuleKind::Hopper, true));
                    } else {
                        assert_eq!(Some(k), fp8_kernel(head_dim, causal, f16_accum));
                        assert_eq!(k.module, ModuleKind::AdaFp8);
                    }
                }
            }
        }
    }
    // head_dim 40: not a multiple of 16.
    let shape = [1, 2, 64, 40];
    let mut rng = fresh_rng("fp8_errors");
    let t = random_tensor(&mut rng, shape, DType::F16, 1.0, None);
    let err = run_poisoned(
        [&t, &t, &t],
        DType::F16,
        Layout::Hnd,
        DType::F16,
        Layout::Hnd,
        &fp8_options(false, Layout::Hnd, true, true),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PvPrecisionUnavailable {
                precision: "Fp8",
                ..
            }
        ),
        "{err:?}"
    );
}

/// compute-sanitizer: every head_dim, both accumulators, partial last tiles, a 130-row Q (two
/// CTAs), rows without keys; each case also through `Backend::Auto` (the sm_90a kernel on
/// Hopper).
#[test]
#[ignore = "needs a CUDA GPU"]
fn sanitizer_fp8_small_matrix() {
    if skip_below_sm89() {
        return;
    }
    let mut rng = fresh_rng("fp8_sanitizer");
    for (head_dim, causal, kv_len, dtype, layout, f16_accum) in [
        (64, false, 100, DType::F16, Layout::Hnd, true),
        (64, true, 129, DType::BF16, Layout::Nhd, false),
        (96, true, 70, DType::F16, Layout::Hnd, true),
        (128, false, 200, DType::BF16, Layout::Nhd, false),
        (128, true, 65, DType::F16, Layout::Hnd, true),
        (256, true, 130, DType::F16, Layout::Hnd, false),
        (160, false, 100, DType::BF16, Layout::Nhd, true),
    ] {
        let case = Case {
            batch: 1,
            q_heads: 2,
            kv_heads: 1,
            qo_len: 130,
            kv_len,
            head_dim,
            causal,
            dtype,
            layout,
            smooth_k: true,
        };
        let (q, k, v) = inputs(&case, &mut rng);
        for backend in [Backend::Portable, Backend::Auto] {
            let (o, _) = run(&case, f16_accum, backend, (&q, &k, &v));
            assert!(o.iter().all(|x| x.is_finite()), "{backend:?} {case:?}");
        }
    }
}

/// TOPS (4·B·H·N²·d / time, halved for causal), B = 4, H = 32: the sm_89 FP8 P·V with each
/// accumulator beside the portable INT8 P·V (`Backend::Portable`), and `Backend::Auto`'s INT8 and
/// FP8 kernels, kernel alone and whole call. On the H200 the sm_89 kernel's e4m3 mma is emulated
/// (F2FP + HMMA): a proxy that shows the kernel runs, not Ada's speed (docs/perf-notes.md, "FP8
/// P·V on Ada", has the 4090 model); `Backend::Auto` there is the sm_90a wgmma kernels. Prints;
/// asserts nothing.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_perf_probe() {
    if skip_below_sm89() {
        return;
    }
    let rt = runtime();
    for (head_dim, n, causal) in [(128, 8192, false), (128, 16384, true), (64, 8192, false)] {
        let shape = [4, 32, n, head_dim];
        let (q, k, v) = random_qkv(shape, [21, 22, 23]);
        let mut out = Tensor::alloc_filled_nan(rt, DType::F16, shape, Layout::Hnd).unwrap();
        let ops = 4.0 * 4.0 * 32.0 * (n as f64).powi(2) * head_dim as f64
            / if causal { 2.0 } else { 1.0 };
        let tops = |ms: f32| ops / (f64::from(ms) * 1e-3) / 1e12;
        let mut line = format!("FP8 PERF d={head_dim} N={n} causal={causal}:");
        for (label, precision, accum, backend) in [
            ("int8", PvPrecision::Int8, PvAccum::F16, Backend::Portable),
            (
                "fp8 f32acc",
                PvPrecision::Fp8,
                PvAccum::F32,
                Backend::Portable,
            ),
            (
                "fp8 f16acc",
                PvPrecision::Fp8,
                PvAccum::F16,
                Backend::Portable,
            ),
            ("auto int8", PvPrecision::Int8, PvAccum::F16, Backend::Auto),
            ("auto fp8", PvPrecision::Fp8, PvAccum::F16, Backend::Auto),
        ] {
            let opts = Options {
                causal,
                pv_precision: precision,
                pv_accum: accum,
                backend,
                ..Options::default()
            };
            let (kernel, full) = kernel_and_full_ms(&q, &k, &v, &mut out, &opts);
            line += &format!(
                " {label} kernel {:.1} full {:.1} TOPS;",
                tops(kernel),
                tops(full)
            );
        }
        eprintln!("{line}");
    }
}
