//! CPU proof that zero-padding a head_dim to a compiled kernel size changes nothing (issue 15).
//!
//! A head_dim `d` without its own kernel runs on the next compiled size `kd` up (64, 96, 128, 256;
//! 64 or 128 on the sm_90a kernel): the preparation kernels write Q and K quantized `kd` wide with
//! zero columns past `d`, V is read (or copied) with zero columns, and only the first `d` output
//! columns are stored. The GPU quantization is bit-exact with `quant_ref` (docs/design.md), so
//! running `quant_ref` and the emulation on the zero-padded tensors is exactly what the GPU computes
//! for the padded problem. These tests show, for random shapes and data, that it equals the unpadded
//! problem bit for bit:
//!
//! * K's mean: the first `d` channels equal, the rest 0;
//! * Q and K: every block scale equal, the INT8 values of the first `d` columns equal, the rest 0
//!   (the softmax scale stays `1/sqrt(d)`, the caller's);
//! * the emulated attention (f16 and f32 P·V accumulation, and the 8-bit P·V for sizes the sm_90a
//!   kernel takes): output columns `< d` and the LSE equal, columns `≥ d` exactly 0.

use proptest::prelude::*;
use proptest::sample::select;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use sageattention::device_config::{
    attn_smem_bytes, has_f16_accum_variant, portable_kernel_head_dim, prep_job, prep_smem_bytes,
    prep_threads, prep_threads_ok, KERNEL_HEAD_DIMS, PREP_MAX_THREADS, QUANT_MAX_SLOTS_BYTES,
    SUPPORTED_HEAD_DIMS,
};
use sageattention::quant_ref::{k_mean, quantize_k, quantize_q, Quantized};
use sageattention::reference::{
    attention_pv8_emulation, attention_quantized_emulation, HostTensor, RefOptions, RefOutput,
};

/// The head dims of the issue's matrix.
const DIMS: [usize; 9] = [32, 48, 64, 80, 96, 128, 160, 192, 256];

/// `scale · N(0,1) + offset[channel]` in HND or NHD memory order.
fn random(
    rng: &mut StdRng,
    shape: [usize; 4],
    nhd: bool,
    scale: f32,
    offset: &[f32],
) -> HostTensor {
    HostTensor::from_fn(shape, nhd, |_, _, _, d| {
        let z: f32 = rng.sample(StandardNormal);
        scale * z + offset[d]
    })
}

/// `t` with `width - head_dim` zero columns appended (contiguous, HND).
fn zero_padded(t: &HostTensor, width: usize) -> HostTensor {
    let [b, h, s, d] = t.shape;
    HostTensor::from_fn([b, h, s, width], false, |b, h, s, c| {
        if c < d {
            t.get(b, h, s, c)
        } else {
            0.0
        }
    })
}

/// Scales bit-identical; each padded row is the unpadded row followed by zeros.
fn assert_padded_quantization_equal(padded: &Quantized, plain: &Quantized, what: &str) {
    assert_eq!(padded.scale.len(), plain.scale.len(), "{what}");
    for (i, (a, b)) in padded.scale.iter().zip(&plain.scale).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{what}: scale {i}: {a} vs {b}");
    }
    let d = plain.head_dim;
    assert_eq!(
        (padded.batch, padded.heads, padded.padded_seq),
        (plain.batch, plain.heads, plain.padded_seq),
        "{what}"
    );
    for b in 0..plain.batch {
        for h in 0..plain.heads {
            for s in 0..plain.padded_seq {
                let (row, plain_row) = (padded.row(b, h, s), plain.row(b, h, s));
                assert_eq!(&row[..d], plain_row, "{what}: row ({b}, {h}, {s})");
                assert!(
                    row[d..].iter().all(|&x| x == 0),
                    "{what}: padding of row ({b}, {h}, {s})"
                );
            }
        }
    }
}

/// Output columns `< d` and the LSE equal (NaN-aware), columns `≥ d` exactly 0.
fn assert_padded_output_equal(padded: &RefOutput, plain: &RefOutput, what: &str) {
    let (d, kd) = (plain.head_dim, padded.head_dim);
    let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
    for (row, (p, q)) in padded.o.chunks(kd).zip(plain.o.chunks(d)).enumerate() {
        for c in 0..d {
            assert!(
                same(p[c], q[c]),
                "{what}: row {row} col {c}: {} vs {}",
                p[c],
                q[c]
            );
        }
        assert!(
            p[d..].iter().all(|&x| x == 0.0),
            "{what}: padding of row {row}"
        );
    }
    assert_eq!(padded.lse.len(), plain.lse.len());
    for (i, (a, b)) in padded.lse.iter().zip(&plain.lse).enumerate() {
        assert!(same(*a, *b), "{what}: lse {i}: {a} vs {b}");
    }
}

#[derive(Clone, Debug)]
struct Case {
    head_dim: usize,
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    qo_len: usize,
    kv_len: usize,
    causal: bool,
    nhd: bool,
    k_offset: f32,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        select(DIMS.to_vec()),
        1usize..=2,
        select(vec![(1usize, 1usize), (2, 1), (4, 2), (3, 3)]),
        (1usize..=200, 1usize..=200),
        (any::<bool>(), any::<bool>(), select(vec![0.0f32, 3.0])),
    )
        .prop_map(
            |(head_dim, batch, (q_heads, kv_heads), (qo_len, kv_len), (causal, nhd, k_offset))| {
                Case {
                    head_dim,
                    batch,
                    q_heads,
                    kv_heads,
                    qo_len,
                    kv_len,
                    causal,
                    nhd,
                    k_offset,
                }
            },
        )
}

/// Q (N(0,1)) and K (N(0,1) plus per-channel offsets of `case.k_offset` · N(0,1)) of `case`.
fn random_q_k(rng: &mut StdRng, case: &Case) -> (HostTensor, HostTensor) {
    let d = case.head_dim;
    let offsets: Vec<f32> = (0..d)
        .map(|_| case.k_offset * rng.sample::<f32, _>(StandardNormal))
        .collect();
    let zeros = vec![0.0f32; d];
    let q = random(
        rng,
        [case.batch, case.q_heads, case.qo_len, d],
        case.nhd,
        1.0,
        &zeros,
    );
    let k = random(
        rng,
        [case.batch, case.kv_heads, case.kv_len, d],
        case.nhd,
        1.0,
        &offsets,
    );
    (q, k)
}

/// Every compiled size the dispatch may pad `d` to (portable 64/96/128/256, sm_90a 64/128).
fn widths_for(d: usize) -> Vec<usize> {
    let widths: Vec<usize> = KERNEL_HEAD_DIMS.into_iter().filter(|&k| k > d).collect();
    assert!(
        widths.contains(&portable_kernel_head_dim(d).unwrap()) || KERNEL_HEAD_DIMS.contains(&d)
    );
    widths
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// K mean, Q and K quantization (scales and INT8 values) of the zero-padded problem equal the
    /// unpadded ones, for every wider kernel size.
    #[test]
    fn padding_leaves_the_quantization_unchanged(case in arb_case(), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = case.head_dim;
        let (q, k) = random_q_k(&mut rng, &case);
        // The caller's softmax scale (1/sqrt(d), in f32 as the library computes it).
        let sm_scale = RefOptions::default().sm_scale_for(d);
        let (plain_q, plain_mean) = (quantize_q(&q, sm_scale), k_mean(&k));
        let plain_k = quantize_k(&k, Some(&plain_mean));
        let plain_k_raw = quantize_k(&k, None);
        for width in widths_for(d) {
            let (qp, kp) = (zero_padded(&q, width), zero_padded(&k, width));
            let mean = k_mean(&kp);
            for (bh, (padded, plain)) in mean.chunks(width).zip(plain_mean.chunks(d)).enumerate() {
                prop_assert!(padded[..d].iter().zip(plain).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "K mean of head {bh}, d={d} padded to {width}");
                prop_assert!(padded[d..].iter().all(|&x| x == 0.0));
            }
            let what = format!("d={d} padded to {width}");
            assert_padded_quantization_equal(&quantize_q(&qp, sm_scale), &plain_q, &format!("Q {what}"));
            assert_padded_quantization_equal(&quantize_k(&kp, Some(&mean)), &plain_k, &format!("K {what}"));
            assert_padded_quantization_equal(&quantize_k(&kp, None), &plain_k_raw, &format!("K (no smoothing) {what}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// The emulated attention of the zero-padded problem (the caller's sm_scale) equals the
    /// unpadded one in every real column and in the LSE; the padded columns are exactly 0.
    #[test]
    fn padding_leaves_the_emulated_attention_unchanged(case in arb_case(), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = case.head_dim;
        let (q, k) = random_q_k(&mut rng, &case);
        let v = random(&mut rng, [case.batch, case.kv_heads, case.kv_len, d], case.nhd, 1.0, &vec![0.0f32; d]);
        // The unpadded call takes the default scale (1/sqrt(d)); the padded one must be given the
        // caller's, as the library does (it never derives the scale from the kernel's head_dim).
        let plain_opts = RefOptions { causal: case.causal, sm_scale: None };
        let padded_opts = RefOptions { causal: case.causal, sm_scale: Some(plain_opts.sm_scale_for(d)) };
        // One wider size per case keeps the run short: the kernel the portable dispatch picks,
        // or the next one up for the sizes that have their own kernel.
        let Some(&width) = widths_for(d).first() else {
            return Ok(()); // d = 256: the largest kernel, never padded
        };
        let (qp, kp, vp) = (zero_padded(&q, width), zero_padded(&k, width), zero_padded(&v, width));
        for (smooth_k, f16_accum) in [(true, true), (false, false)] {
            let plain = attention_quantized_emulation(&q, &k, &v, &plain_opts, smooth_k, f16_accum);
            let padded = attention_quantized_emulation(&qp, &kp, &vp, &padded_opts, smooth_k, f16_accum);
            assert_padded_output_equal(&padded, &plain,
                &format!("{case:?} width {width} smooth_k {smooth_k} f16 accumulator {f16_accum}"));
        }
        // 8-bit P·V, for the sizes it takes (multiples of 16), on the same side of 128 as the
        // kernel (the P tile, `p8_tile`, is 128 keys up to 128 and 64 above: the padding from
        // d ≤ 128 to 256 never happens, every such d has a kernel of 128 or less).
        if d.is_multiple_of(16) && (width <= 128 || d > 128) {
            let plain = attention_pv8_emulation(&q, &k, &v, &plain_opts, true);
            let padded = attention_pv8_emulation(&qp, &kp, &vp, &padded_opts, true);
            assert_padded_output_equal(&padded, &plain, &format!("{case:?} width {width} pv8"));
        }
    }
}

/// The emulation at the widths the GPU dispatch uses, for each size of the issue (fixed seed, so
/// every size is covered on every run regardless of what proptest draws).
#[test]
fn every_issue_size_pads_exactly_to_its_kernel() {
    let mut rng = StdRng::seed_from_u64(15);
    for d in DIMS {
        let kd = portable_kernel_head_dim(d).unwrap();
        let width = if kd == d {
            widths_for(d).first().copied().unwrap_or(d)
        } else {
            kd
        };
        let zeros = vec![0.0f32; d];
        let q = random(&mut rng, [1, 2, 150, d], false, 1.0, &zeros);
        let k = random(&mut rng, [1, 1, 130, d], true, 1.0, &zeros);
        let v = random(&mut rng, [1, 1, 130, d], false, 1.0, &zeros);
        let plain_opts = RefOptions {
            causal: true,
            sm_scale: None,
        };
        let padded_opts = RefOptions {
            causal: true,
            sm_scale: Some(plain_opts.sm_scale_for(d)),
        };
        let plain = attention_quantized_emulation(&q, &k, &v, &plain_opts, true, true);
        let padded = attention_quantized_emulation(
            &zero_padded(&q, width),
            &zero_padded(&k, width),
            &zero_padded(&v, width),
            &padded_opts,
            true,
            true,
        );
        assert_padded_output_equal(&padded, &plain, &format!("d={d} width {width}"));
    }
}

/// The preparation kernel's launches at every supported head_dim: `prep_threads` = 2·head_dim
/// threads (at most 512: the kernel is capped at 80 registers, so 512 · 80 fits an SM's 64 Ki
/// registers), which every job accepts (the 8-bit V's only at the head dims the 8-bit P·V takes,
/// whole warps there), a block-maximum slot per warp (a last warp of 16 threads when head_dim / 8
/// is odd), and each job's shared memory within the 48 KiB a launch gets without opting in. And
/// every kernel head_dim's attention shared memory fits sm_86/sm_89's 99 KiB per block.
#[test]
fn launch_geometry_fits_every_head_dim() {
    for d in SUPPORTED_HEAD_DIMS {
        let threads = prep_threads(d);
        assert!(
            threads <= PREP_MAX_THREADS && threads * 80 <= 65536,
            "d={d}: {threads}"
        );
        assert_eq!(threads % 32, if (d / 8) % 2 == 1 { 16 } else { 0 }, "d={d}");
        assert!(4 * threads.div_ceil(32) <= QUANT_MAX_SLOTS_BYTES, "d={d}");
        let v8 = d.is_multiple_of(16) && d <= 128;
        let kernel_d = portable_kernel_head_dim(d).unwrap();
        for job in 0..prep_job::COUNT {
            let is_v8 = matches!(
                job,
                prep_job::V8_STATS | prep_job::V8_FINALIZE | prep_job::V8_QUANT
            );
            if is_v8 && !v8 {
                continue;
            }
            assert!(prep_threads_ok(job, threads, d), "d={d} job {job}");
            let out_d = if is_v8 {
                d.next_multiple_of(64)
            } else {
                kernel_d
            };
            assert!(
                prep_smem_bytes(job, d, out_d) <= 48 * 1024,
                "d={d} job {job}"
            );
        }
        if !v8 {
            assert_eq!(
                prep_threads_ok(prep_job::V8_STATS, threads, d),
                threads.is_multiple_of(32),
                "d={d}"
            );
        }
    }
    for d in KERNEL_HEAD_DIMS {
        for compact in [false, true] {
            assert!(attn_smem_bytes(d, true, compact) <= 99 * 1024, "d={d}");
            if has_f16_accum_variant(d) {
                assert!(attn_smem_bytes(d, false, compact) <= 99 * 1024, "d={d}");
            }
        }
    }
    assert_eq!(attn_smem_bytes(256, true, false), 68_608);
    assert!(!has_f16_accum_variant(256));
}
