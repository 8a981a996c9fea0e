//! GPU smoke tests of the foundation: each mma shape on one tile equals an exact CPU product, the
//! quantization kernels equal the CPU emulation bit for bit, every kernel is free of local memory,
//! and the Hopper module runs. Run on a GPU with `--ignored`.

mod common;

use common::{
    channel_offsets, fresh_rng, lse_max_error, random_tensor, run_poisoned, runtime, upload,
};
use half::f16;
use rand::rngs::StdRng;
use rand::Rng;
use sageattention::attention::attention_kernel_names;
use sageattention::device_config::{
    k_head_supported, names, K_HEAD_MAX_KV_LEN, K_MEAN_AHEAD, MEAN_FOLD_MAX_SEGMENTS,
    MEAN_SEGMENT_ROWS,
};
use sageattention::quant_ref::{k_mean, quantize_k, quantize_q};
use sageattention::reference::{attention_quantized_emulation, compare, HostTensor, RefOptions};
use sageattention::runtime::{ModuleKind, Runtime};
use sageattention::{selftest, DType, Layout, Options, Prepared};

/// As tests/gpu_attention.rs: kernel error against the emulation of the same quantization.
const EMULATION_REL_L1: f64 = 3e-3;
/// LSE against the emulation's (natural log), absolute.
const LSE_TOL: f64 = 1e-3;

#[test]
#[ignore = "needs a CUDA GPU"]
fn mma_s8_m16n8k32_equals_integer_matmul() {
    let rt = runtime();
    let mut rng = fresh_rng("mma_s8");
    for _ in 0..8 {
        let a: [i8; 512] = std::array::from_fn(|_| rng.gen_range(-128..=127));
        let b: [i8; 512] = std::array::from_fn(|_| rng.gen_range(-128..=127));
        let d = selftest::mma_s8(rt, &a, &b).unwrap();
        for i in 0..16 {
            for j in 0..16 {
                let want: i32 = (0..32)
                    .map(|k| a[i * 32 + k] as i32 * b[j * 32 + k] as i32)
                    .sum();
                assert_eq!(d[i * 16 + j], want, "D[{i}][{j}]");
            }
        }
    }
}

/// Small integers in f16: products and sums of 16 terms are exact in f32 and in f16.
fn small_f16(rng: &mut impl Rng) -> u16 {
    f16::from_f32(rng.gen_range(-4i32..=4) as f32 * 0.5).to_bits()
}

fn f16_reference(a: &[u16; 256], b: &[u16; 256]) -> Vec<f32> {
    let f = |x: u16| f16::from_bits(x).to_f32();
    (0..256)
        .map(|ij| {
            (0..16)
                .map(|k| f(a[(ij / 16) * 16 + k]) * f(b[k * 16 + ij % 16]))
                .sum()
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mma_f16_m16n8k16_f32_accumulate_equals_exact_product() {
    let rt = runtime();
    let mut rng = fresh_rng("mma_f16_f32");
    for _ in 0..8 {
        let a: [u16; 256] = std::array::from_fn(|_| small_f16(&mut rng));
        let b: [u16; 256] = std::array::from_fn(|_| small_f16(&mut rng));
        let d = selftest::mma_f16_f32(rt, &a, &b).unwrap();
        assert_eq!(d, f16_reference(&a, &b));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mma_f16_m16n8k16_f16_accumulate_equals_exact_product() {
    let rt = runtime();
    let mut rng = fresh_rng("mma_f16_f16");
    for _ in 0..8 {
        let a: [u16; 256] = std::array::from_fn(|_| small_f16(&mut rng));
        let b: [u16; 256] = std::array::from_fn(|_| small_f16(&mut rng));
        let d: Vec<f32> = selftest::mma_f16_f16(rt, &a, &b)
            .unwrap()
            .into_iter()
            .map(|x| f16::from_bits(x).to_f32())
            .collect();
        assert_eq!(d, f16_reference(&a, &b));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn quantization_kernels_equal_cpu_emulation_bit_for_bit() {
    let rt = runtime();
    let mut rng = fresh_rng("quant");
    // Awkward lengths: shorter than a block, one past a block, not a multiple of either block.
    // The longest K whose mean the quantization CTAs fold in, and one past it (a K-mean launch
    // between): the same bits either way.
    let fold_limit = MEAN_FOLD_MAX_SEGMENTS * MEAN_SEGMENT_ROWS;
    let cases = [
        (1, 3, 1, 1, 64),
        (2, 4, 2, 129, 96),
        (1, 2, 1, 200, 128),
        (1, 1, 1, 65, 64),
        (2, 6, 3, 1000, 128),
        (1, 2, 1, fold_limit, 96),
        (1, 2, 2, fold_limit + 1, 128),
        // The K-mean launch's batches of K_MEAN_AHEAD segment sums: one and a single, two and a
        // pair.
        (1, 1, 1, K_MEAN_AHEAD * MEAN_SEGMENT_ROWS + 1, 128),
        (1, 2, 1, 2 * K_MEAN_AHEAD * MEAN_SEGMENT_ROWS + 300, 64),
    ];
    for (i, &(batch, q_heads, kv_heads, seq, d)) in cases.iter().enumerate() {
        for dtype in [DType::F16, DType::BF16] {
            for layout in [Layout::Hnd, Layout::Nhd] {
                let offsets = channel_offsets(&mut rng, d, 4.0);
                let q = random_tensor(&mut rng, [batch, q_heads, seq + i, d], dtype, 1.0, None);
                let k = random_tensor(
                    &mut rng,
                    [batch, kv_heads, seq, d],
                    dtype,
                    1.0,
                    Some(&offsets),
                );
                let v = random_tensor(&mut rng, [batch, kv_heads, seq, d], dtype, 1.0, None);
                let (qd, kd, vd) = (
                    upload(rt, &q, dtype, layout),
                    upload(rt, &k, dtype, layout),
                    upload(rt, &v, dtype, layout),
                );
                let sm_scale = 0.37f32;
                let opts = Options {
                    sm_scale: Some(sm_scale),
                    ..Options::default()
                };
                let prepared =
                    Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &opts).unwrap();
                let case = format!("case {i} {dtype:?} {layout:?}");
                assert_k_prepared_as_emulated(rt, &prepared, &k, true, bits, &case);
                let (q_i8, q_scale) = prepared.q_quantized_to_host(rt).unwrap();
                let q_ref = quantize_q(&q, sm_scale);
                assert_eq!(q_i8, q_ref.data, "Q int8, case {i}");
                assert_eq!(bits(&q_scale), bits(&q_ref.scale), "Q scales, case {i}");
                // Without smoothing K is quantized in the first launch, beside Q.
                let unsmoothed = Options {
                    smooth_k: false,
                    ..opts
                };
                let prepared =
                    Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &unsmoothed).unwrap();
                let case = format!("unsmoothed, {case}");
                assert_k_prepared_as_emulated(rt, &prepared, &k, false, bits, &case);
            }
        }
    }
}

/// The jobs that read K's mean (K quantization, LSE bias) and the V copy, on both sides of
/// `MEAN_FOLD_MAX_SEGMENTS` (the consumers fold the mean in / a `K_MEAN` launch runs between),
/// against the CPU emulation of the whole call.
#[test]
#[ignore = "needs a CUDA GPU"]
fn lse_bias_and_v_copy_match_emulation_around_the_fold_limit() {
    let mut rng = fresh_rng("fold_limit");
    let limit = MEAN_FOLD_MAX_SEGMENTS * MEAN_SEGMENT_ROWS;
    // (kv_len, head_dim, dtype, layout, smooth_k): the longest folded length and one past it; d = 96
    // (zero-padded V copy on Hopper) and bf16 (V converted) exercise the V job; GQA 4:2 the LSE
    // bias's kv head.
    for (kv_len, head_dim, dtype, layout, smooth_k) in [
        (limit, 128, DType::BF16, Layout::Hnd, true),
        (limit + 1, 128, DType::BF16, Layout::Nhd, true),
        (limit, 96, DType::F16, Layout::Nhd, true),
        (limit + 1, 96, DType::F16, Layout::Hnd, true),
        (limit + 1, 64, DType::BF16, Layout::Hnd, false),
    ] {
        let shape = (1, 4, 2, 37, kv_len, head_dim);
        check_call_with_lse(&mut rng, shape, dtype, layout, smooth_k);
    }
}

/// (batch, kv heads) for the one-CTA-per-head K preparation on `rt`'s GPU: batch 2 and
/// `sm_count / 2` kv heads, so that the pairs (`sm_count - 1` or `sm_count`) are one wave of at
/// least 3/4 of the SMs, which `plan_prepare` (`enqueue::use_k_head`) requires.
fn k_head_shape(sm_count: usize) -> (usize, usize) {
    let (batch, kv_heads) = (2, sm_count / 2);
    let pairs = batch * kv_heads;
    assert!(4 * pairs >= 3 * sm_count && pairs <= sm_count);
    (batch, kv_heads)
}

/// `sage_prepare_k_head` (one CTA per (batch, kv head), short K): K's mean, INT8 K and scales
/// equal the CPU emulation bit for bit, at every length up to `K_HEAD_MAX_KV_LEN` with a partial
/// segment / block, d = 64, 96, 128, f16 and bf16, HND and NHD, GQA 2:1 and MHA. The shapes have
/// `batch × kv_heads` ≈ the SM count, which selects that path.
#[test]
#[ignore = "needs a CUDA GPU"]
fn k_head_preparation_equals_cpu_emulation_bit_for_bit() {
    let rt = runtime();
    let mut rng = fresh_rng("k_head");
    let (batch, kv_heads) = k_head_shape(rt.sm_count() as usize);
    let mut lengths = vec![1, 63, 64, 255, 256, 1000, 1024, 2048];
    lengths.retain(|&n| n <= K_HEAD_MAX_KV_LEN);
    for kv_len in lengths {
        for d in [64, 96, 128] {
            assert!(k_head_supported(d));
            for dtype in [DType::F16, DType::BF16] {
                for layout in [Layout::Hnd, Layout::Nhd] {
                    for q_heads in [2 * kv_heads, kv_heads] {
                        let shape = (batch, q_heads, kv_heads, kv_len, d);
                        check_k_head_case(rt, &mut rng, shape, dtype, layout);
                    }
                }
            }
        }
        eprintln!("kv_len {kv_len}: bit-exact");
    }
}

/// The same for every other head_dim the one-CTA-per-head path takes (multiples of 16 up to
/// 256: 1 to 8 groups of `prep_threads(d)` threads, zero-padded rows where the kernel is wider),
/// at a partial block, a partial segment and the longest K.
#[test]
#[ignore = "needs a CUDA GPU"]
fn k_head_preparation_every_head_dim_bit_for_bit() {
    let rt = runtime();
    let mut rng = fresh_rng("k_head_dims");
    let (batch, kv_heads) = k_head_shape(rt.sm_count() as usize);
    let dims = (16..=256)
        .step_by(16)
        .filter(|d| ![64, 96, 128].contains(d));
    for (i, d) in dims.enumerate() {
        assert!(k_head_supported(d), "d{d}");
        let (dtype, layout) = if i % 2 == 0 {
            (DType::F16, Layout::Hnd)
        } else {
            (DType::BF16, Layout::Nhd)
        };
        for kv_len in [63, 1000, K_HEAD_MAX_KV_LEN] {
            check_k_head_case(
                rt,
                &mut rng,
                (batch, kv_heads, kv_heads, kv_len, d),
                dtype,
                layout,
            );
        }
        eprintln!("d{d}: bit-exact");
    }
}

/// One whole call with the LSE, K with channel offsets, `(batch, q_heads, kv_heads, qo_len,
/// kv_len, head_dim)`, against the emulation of the call ([`EMULATION_REL_L1`], [`LSE_TOL`]),
/// its output poisoned first.
fn check_call_with_lse(
    rng: &mut StdRng,
    (batch, q_heads, kv_heads, qo_len, kv_len, head_dim): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    ),
    dtype: DType,
    layout: Layout,
    smooth_k: bool,
) {
    let offsets = channel_offsets(rng, head_dim, 3.0);
    let q = random_tensor(rng, [batch, q_heads, qo_len, head_dim], dtype, 1.0, None);
    let kv_shape = [batch, kv_heads, kv_len, head_dim];
    let k = random_tensor(rng, kv_shape, dtype, 1.0, Some(&offsets));
    let v = random_tensor(rng, kv_shape, dtype, 1.0, None);
    let opts = Options {
        smooth_k,
        layout,
        return_lse: true,
        ..Options::default()
    };
    let (out, lse) = run_poisoned([&q, &k, &v], dtype, layout, dtype, layout, &opts).unwrap();
    let emulated =
        attention_quantized_emulation(&q, &k, &v, &RefOptions::default(), smooth_k, false);
    let case = format!(
        "q_heads {q_heads} kv_heads {kv_heads} kv_len {kv_len} d{head_dim} {dtype:?} {layout:?} \
         smooth {smooth_k}"
    );
    assert!(
        out.iter().all(|x| x.is_finite()),
        "unwritten output: {case}"
    );
    let m = compare(&out, &emulated.o);
    assert!(m.rel_l1 <= EMULATION_REL_L1, "{case}: {m:?}");
    let lse_err = lse_max_error(&lse, &emulated.lse);
    assert!(lse_err <= LSE_TOL, "{case}: LSE error {lse_err:.2e}");
    eprintln!("{case}: rel L1 {:.2e}, LSE error {lse_err:.2e}", m.rel_l1);
}

/// One case of the k_head tests: `(batch, q_heads, kv_heads, kv_len, d)`, K with channel offsets.
fn check_k_head_case(
    rt: &Runtime,
    rng: &mut StdRng,
    (batch, q_heads, kv_heads, kv_len, d): (usize, usize, usize, usize, usize),
    dtype: DType,
    layout: Layout,
) {
    let case =
        format!("kv_len {kv_len} d{d} {dtype:?} {layout:?} q_heads {q_heads} kv_heads {kv_heads}");
    let offsets = channel_offsets(rng, d, 4.0);
    let q = random_tensor(rng, [batch, q_heads, 5, d], dtype, 1.0, None);
    let kv_shape = [batch, kv_heads, kv_len, d];
    let k = random_tensor(rng, kv_shape, dtype, 1.0, Some(&offsets));
    let v = random_tensor(rng, kv_shape, dtype, 1.0, None);
    let (qd, kd, vd) = (
        upload(rt, &q, dtype, layout),
        upload(rt, &k, dtype, layout),
        upload(rt, &v, dtype, layout),
    );
    let opts = Options {
        layout,
        ..Options::default()
    };
    let prepared = Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &opts).unwrap();
    assert_k_prepared_as_emulated(rt, &prepared, &k, true, bits, &case);
}

/// K's preparation against the CPU emulation: the mean when K is smoothed (none otherwise), the
/// INT8 K and its scales; each f32's bits compared through `key` (`bits`, or `nan_as_one` for
/// inputs holding a NaN).
fn assert_k_prepared_as_emulated(
    rt: &Runtime,
    prepared: &Prepared,
    k: &HostTensor,
    smooth_k: bool,
    key: fn(&[f32]) -> Vec<u32>,
    case: &str,
) {
    let mean = prepared.k_mean_to_host(rt).unwrap();
    let mean_ref = smooth_k.then(|| k_mean(k));
    assert_eq!(
        mean.as_deref().map(key),
        mean_ref.as_deref().map(key),
        "K mean, {case}"
    );
    let (k_i8, k_scale) = prepared.k_quantized_to_host(rt).unwrap();
    let k_ref = quantize_k(k, mean_ref.as_deref());
    assert_eq!(k_i8, k_ref.data, "K int8, {case}");
    assert_eq!(key(&k_scale), key(&k_ref.scale), "K scales, {case}");
}

/// A whole call on the one-CTA-per-head path with the LSE (its bias reads the mean the head
/// CTAs stored) and a bf16 V copy in the launch after, against the emulation of the call.
#[test]
#[ignore = "needs a CUDA GPU"]
fn k_head_call_with_lse_matches_emulation() {
    let rt = runtime();
    let mut rng = fresh_rng("k_head_call");
    let (batch, kv_heads) = k_head_shape(rt.sm_count() as usize);
    for (kv_len, head_dim, dtype, layout) in [
        (1000, 128, DType::BF16, Layout::Hnd),
        (K_HEAD_MAX_KV_LEN, 64, DType::F16, Layout::Nhd),
    ] {
        let shape = (batch, 2 * kv_heads, kv_heads, 37, kv_len, head_dim);
        check_call_with_lse(&mut rng, shape, dtype, layout, true);
    }
}

/// The one-CTA-per-head K preparation under compute-sanitizer (the suite runs every
/// `sanitizer_` test with memcheck, racecheck, initcheck and synccheck): one short call, a
/// partial segment and block, GQA 2:1, with the LSE, at the `batch × kv_heads` ≈ SM count that
/// selects the path.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sanitizer_k_head_call() {
    let rt = runtime();
    let mut rng = fresh_rng("sanitizer_k_head");
    let (batch, kv_heads) = k_head_shape(rt.sm_count() as usize);
    let shape = (batch, 2 * kv_heads, kv_heads, 37, 100, 128);
    check_call_with_lse(&mut rng, shape, DType::F16, Layout::Hnd, true);
}

/// K blocks whose values are not ordinary: an all-zero block (its maximum 0, `inv = 0`), a block
/// with an infinite value, a block of f16 subnormals, in bf16 a block below 2^-126 (its `127 / max`
/// overflows, so the negative values must clamp to −127, not saturate to −128), and a NaN in
/// another head. The quantization rounds whole blocks by a magic-number add only when the block
/// maximum and `127 / max` are finite, and converts otherwise; every branch must give the CPU
/// emulation's bits (NaN as any NaN), on the one-CTA-per-head path and on the two-launch path
/// (with the mean folded in and from a K-mean launch), smoothed and not, f16 and bf16. Q gets a
/// bf16 row of that size too (its INT8 and scale against `quantize_q`).
#[test]
#[ignore = "needs a CUDA GPU"]
fn k_quantization_of_special_blocks_bit_for_bit() {
    let rt = runtime();
    let mut rng = fresh_rng("k_special");
    let (head_batch, head_kv_heads) = k_head_shape(rt.sm_count() as usize);
    let fold_limit = MEAN_FOLD_MAX_SEGMENTS * MEAN_SEGMENT_ROWS;
    // (batch, kv heads, kv_len): one CTA per head; two launches with the mean folded in; two
    // launches with a K-mean launch between.
    let shapes = [
        (head_batch, head_kv_heads, 1000),
        (1, 2, fold_limit - 24),
        (1, 2, 3 * fold_limit + 40),
    ];
    let d = 128;
    for (batch, kv_heads, kv_len) in shapes {
        for dtype in [DType::F16, DType::BF16] {
            for smooth_k in [true, false] {
                let case = format!(
                    "b{batch} kv_heads {kv_heads} kv_len {kv_len} {dtype:?} smooth {smooth_k}"
                );
                let mut q = random_tensor(&mut rng, [batch, kv_heads, 5, d], dtype, 1.0, None);
                let mut k = random_tensor(&mut rng, [batch, kv_heads, kv_len, d], dtype, 1.0, None);
                let v = random_tensor(&mut rng, [batch, kv_heads, kv_len, d], dtype, 1.0, None);
                for s in 64..128 {
                    for c in 0..d {
                        k.set(0, 0, s, c, 0.0);
                    }
                }
                k.set(0, 0, 130, 3, f32::INFINITY);
                for s in 192..256 {
                    for c in 0..d {
                        // Multiples of 2^-24, the f16 subnormal step (exact in both dtypes).
                        let tiny = rng.gen_range(-40i32..=40) as f32 * 2f32.powi(-24);
                        k.set(0, 0, s, c, tiny);
                    }
                }
                if dtype == DType::BF16 {
                    // Multiples of 2^-133, bf16's subnormal step: a maximum of at most 40 · 2^-133
                    // (≈ 3.7e-39) makes 127 / max overflow (unsmoothed; smoothing subtracts the
                    // mean, which is not that small).
                    for s in 256..320 {
                        for c in 0..d {
                            let tiny = rng.gen_range(-40i32..=40) as f32 * 2f32.powi(-133);
                            k.set(0, 0, s, c, tiny);
                        }
                    }
                    for c in 0..d {
                        let tiny = rng.gen_range(-40i32..=40) as f32 * 2f32.powi(-133);
                        q.set(0, 0, 2, c, tiny);
                    }
                }
                k.set(batch - 1, kv_heads - 1, 700, 9, f32::NAN);
                let layout = Layout::Hnd;
                let (qd, kd, vd) = (
                    upload(rt, &q, dtype, layout),
                    upload(rt, &k, dtype, layout),
                    upload(rt, &v, dtype, layout),
                );
                let sm_scale = 0.37f32;
                let opts = Options {
                    smooth_k,
                    sm_scale: Some(sm_scale),
                    ..Options::default()
                };
                let prepared =
                    Prepared::new(rt, &qd.view(), &kd.view(), &vd.view(), &opts).unwrap();
                assert_k_prepared_as_emulated(rt, &prepared, &k, smooth_k, nan_as_one, &case);
                let (q_i8, q_scale) = prepared.q_quantized_to_host(rt).unwrap();
                let q_ref = quantize_q(&q, sm_scale);
                assert_eq!(q_i8, q_ref.data, "Q int8, {case}");
                assert_eq!(bits(&q_scale), bits(&q_ref.scale), "Q scales, {case}");
            }
        }
    }
}

/// The bits of each value, every NaN as the same one (the GPU's `max.NaN` gives the canonical NaN,
/// the CPU whichever NaN it met).
fn nan_as_one(x: &[f32]) -> Vec<u32> {
    x.iter()
        .map(|v| {
            if v.is_nan() {
                f32::NAN.to_bits()
            } else {
                v.to_bits()
            }
        })
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_kernel_uses_no_local_memory() {
    let rt = runtime();
    let mut all: Vec<&str> = attention_kernel_names();
    all.extend([
        names::PREPARE,
        names::PREPARE_SUM_K,
        names::PREPARE_QUANT_K,
        names::PREPARE_K_HEAD,
        names::COPY_COLUMNS,
    ]);
    for name in all {
        let res = rt.function_resources(ModuleKind::Portable, name).unwrap();
        eprintln!("{name}: {res:?}");
        assert_eq!(res.local_bytes, 0, "{name} uses local memory");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn hopper_module_smoke() {
    let rt = runtime();
    let (major, _) = rt.compute_capability();
    if major != 9 {
        eprintln!("not a Hopper GPU: skipped");
        return;
    }
    let out = selftest::hopper_smoke(rt).unwrap();
    assert_eq!(out, (0..128u32).map(|i| 2 * i + 1).collect::<Vec<_>>());
}
