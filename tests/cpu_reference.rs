//! CPU property tests of the reference attention (`reference.rs`) and the bit-exact quantization
//! emulation (`quant_ref.rs`). No GPU needed; these run in CI.
//!
//! Every test draws fresh random inputs from a proptest-chosen seed (or a fixed seed for the unit
//! tests), never all-zero tensors, so a reference that ignores its inputs cannot pass.

use proptest::prelude::*;
use proptest::sample::select;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use sageattention::quant_ref::{
    k_mean, quantize_block, quantize_k, quantize_q, Quantized, K_BLOCK, LOG2_E, Q_BLOCK,
};
use sageattention::reference::{
    attention_f64, attention_quantized_emulation, compare, compare_f64, naive_attention_f64,
    visible_key_count, HostTensor, RefOptions, RefOutput,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Extra elements per row in padded test tensors; the padding is filled with NaN so that reading it
/// by mistake shows up as a NaN in the output.
const ROW_PADDING: usize = 8;

fn normal(rng: &mut StdRng) -> f32 {
    rng.sample(StandardNormal)
}

/// A tensor whose element `(b, h, s, d)` is `element(rng, b, h, s, d)`, in HND or NHD order, with
/// contiguous or padded (NaN-filled padding) rows.
fn tensor_from(
    rng: &mut StdRng,
    shape: [usize; 4],
    nhd: bool,
    padded: bool,
    mut element: impl FnMut(&mut StdRng, usize, usize, usize, usize) -> f32,
) -> HostTensor {
    let mut tensor = if padded {
        let [b, h, s, d] = shape;
        let strides = HostTensor::contiguous_strides([b, h, s, d + ROW_PADDING], nhd);
        let mut t = HostTensor::with_strides(shape, strides);
        t.data.fill(f32::NAN);
        t
    } else {
        HostTensor::contiguous(shape, nhd)
    };
    let [batch, heads, seq, head_dim] = shape;
    for b in 0..batch {
        for h in 0..heads {
            for s in 0..seq {
                for d in 0..head_dim {
                    let value = element(rng, b, h, s, d);
                    tensor.set(b, h, s, d, value);
                }
            }
        }
    }
    tensor
}

/// Standard-normal tensor.
fn normal_tensor(rng: &mut StdRng, shape: [usize; 4], nhd: bool, padded: bool) -> HostTensor {
    tensor_from(rng, shape, nhd, padded, |rng, _, _, _, _| normal(rng))
}

/// Standard-normal tensor plus a per-(batch, head, channel) offset `offset_std * N(0, 1)`, the
/// channel-wise bias of real K tensors that smoothing removes.
fn offset_tensor(rng: &mut StdRng, shape: [usize; 4], nhd: bool, offset_std: f32) -> HostTensor {
    let [batch, heads, _, head_dim] = shape;
    let offsets: Vec<f32> = (0..batch * heads * head_dim)
        .map(|_| offset_std * normal(rng))
        .collect();
    tensor_from(rng, shape, nhd, false, |rng, b, h, _, d| {
        normal(rng) + offsets[(b * heads + h) * head_dim + d]
    })
}

/// A random attention problem.
#[derive(Clone, Debug)]
struct Problem {
    batch: usize,
    kv_heads: usize,
    group: usize,
    qo_len: usize,
    kv_len: usize,
    head_dim: usize,
    causal: bool,
    nhd: bool,
    padded: bool,
    sm_scale: Option<f32>,
    seed: u64,
}

impl Problem {
    fn q_shape(&self) -> [usize; 4] {
        [
            self.batch,
            self.kv_heads * self.group,
            self.qo_len,
            self.head_dim,
        ]
    }

    fn kv_shape(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.kv_len, self.head_dim]
    }

    fn opts(&self) -> RefOptions {
        RefOptions {
            causal: self.causal,
            sm_scale: self.sm_scale,
        }
    }

    /// Fresh N(0, 1) Q, K, V from the problem's seed.
    fn tensors(&self) -> (HostTensor, HostTensor, HostTensor) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let q = normal_tensor(&mut rng, self.q_shape(), self.nhd, self.padded);
        let k = normal_tensor(&mut rng, self.kv_shape(), self.nhd, self.padded);
        let v = normal_tensor(&mut rng, self.kv_shape(), self.nhd, self.padded);
        (q, k, v)
    }
}

/// Problems with GQA, `qo_len != kv_len` (including `qo_len > kv_len`, which leaves causal rows
/// with no visible key), both layouts, padded rows and explicit or default softmax scales.
fn problems(max_seq: usize) -> impl Strategy<Value = Problem> {
    (
        1..=2_usize,
        1..=3_usize,
        1..=3_usize,
        1..=max_seq,
        1..=max_seq,
        select(vec![8_usize, 16, 64]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0.05_f32..1.0),
        any::<u64>(),
    )
        .prop_map(
            |(
                batch,
                kv_heads,
                group,
                qo_len,
                kv_len,
                head_dim,
                causal,
                nhd,
                padded,
                sm_scale,
                seed,
            )| {
                Problem {
                    batch,
                    kv_heads,
                    group,
                    qo_len,
                    kv_len,
                    head_dim,
                    causal,
                    nhd,
                    padded,
                    sm_scale,
                    seed,
                }
            },
        )
}

/// `|actual - expected| <= tol * (1 + |expected|)`, with non-finite values required to be
/// identical (same infinity, or both NaN).
fn assert_close(
    actual: &[f64],
    expected: &[f64],
    tol: f64,
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(actual.len(), expected.len(), "{}: length", what);
    for (index, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if e.is_finite() {
            prop_assert!(
                (a - e).abs() <= tol * (1.0 + e.abs()),
                "{}[{}]: {} vs expected {} (tol {})",
                what,
                index,
                a,
                e,
                tol
            );
        } else {
            prop_assert!(
                (a.is_nan() && e.is_nan()) || a == e,
                "{}[{}]: {} vs expected {}",
                what,
                index,
                a,
                e
            );
        }
    }
    Ok(())
}

/// Check every block of `quant` (`block` rows per scale, rows padded to a multiple of `pad`)
/// against the contract, given the transformed values `v(b, h, s, d)`.
fn check_quantized(
    quant: &Quantized,
    input_shape: [usize; 4],
    (block, pad): (usize, usize),
    v: impl Fn(usize, usize, usize, usize) -> f32,
) -> Result<(), TestCaseError> {
    let [batch, heads, seq, head_dim] = input_shape;
    let padded = seq.div_ceil(pad) * pad;
    let n_blocks = padded / block;
    prop_assert_eq!(quant.block, block);
    prop_assert_eq!(quant.n_blocks, n_blocks);
    prop_assert_eq!(quant.padded_seq, padded);
    prop_assert_eq!(quant.data.len(), batch * heads * padded * head_dim);
    prop_assert_eq!(quant.scale.len(), batch * heads * n_blocks);
    for b in 0..batch {
        for h in 0..heads {
            for blk in 0..n_blocks {
                let rows = blk * block..((blk + 1) * block).min(seq);
                let mut amax = 0.0_f32;
                for s in rows.clone() {
                    for d in 0..head_dim {
                        amax = amax.max(v(b, h, s, d).abs());
                    }
                }
                let scale = quant.scale_of(b, h, blk * block);
                prop_assert_eq!(
                    scale.to_bits(),
                    (amax / 127.0).to_bits(),
                    "scale of block {}",
                    blk
                );
                let bound = 0.5 * f64::from(scale) * (1.0 + 1e-6) + 1e-6 * f64::from(amax);
                for s in rows {
                    for d in 0..head_dim {
                        let q = quant.value(b, h, s, d);
                        let value = v(b, h, s, d);
                        prop_assert!((-127..=127).contains(&q), "q = {} out of range", q);
                        let error = (f64::from(q) * f64::from(scale) - f64::from(value)).abs();
                        prop_assert!(
                            error <= bound,
                            "|dequant - v| = {} > {} at (b={}, h={}, s={}, d={}), v = {}, q = {}",
                            error,
                            bound,
                            b,
                            h,
                            s,
                            d,
                            value,
                            q
                        );
                        if amax > 0.0 && value.abs() == amax {
                            prop_assert_eq!(q, if value > 0.0 { 127 } else { -127 });
                        }
                    }
                }
            }
            for s in seq..quant.padded_seq {
                prop_assert!(
                    quant.row(b, h, s).iter().all(|&q| q == 0),
                    "padding row {} not 0",
                    s
                );
            }
        }
    }
    Ok(())
}

/// Rows `(b, h, i)` of `out` whose values are all NaN, as a flat list of row indices.
fn nan_rows(out: &RefOutput) -> Vec<usize> {
    out.o
        .chunks(out.head_dim)
        .enumerate()
        .filter(|(_, row)| row.iter().all(|x| x.is_nan()))
        .map(|(index, _)| index)
        .collect()
}

/// True if every value and LSE of row `row` (flat index) is finite.
fn row_is_finite(out: &RefOutput, row: usize) -> bool {
    let d = out.head_dim;
    out.o[row * d..(row + 1) * d].iter().all(|x| x.is_finite()) && out.lse[row].is_finite()
}

// ---------------------------------------------------------------------------------------------
// Quantization
// ---------------------------------------------------------------------------------------------

#[test]
fn contract_constants() {
    // The contract spells LOG2_E as this literal; parse it so the two are compared bit for bit.
    let contract_literal: f32 = "1.442695040888963".parse().expect("valid float literal");
    assert_eq!(LOG2_E.to_bits(), contract_literal.to_bits());
    assert_eq!(Q_BLOCK, 128);
    assert_eq!(K_BLOCK, 64);
}

#[test]
fn quantize_block_rounds_ties_to_even() {
    // amax = 127 makes inv = 1, so q = round_ties_even(v) exactly.
    let values = [127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -127.0, 0.49];
    let mut out = [99_i8; 9];
    let scale = quantize_block(&values, &mut out);
    assert_eq!(scale, 1.0);
    assert_eq!(out, [127, 2, 4, -2, 0, 0, 2, -127, 0]);

    // amax = 2: inv = 63.5, so 1.0 -> 63.5 -> 64 (even), 0.5 -> 31.75 -> 32, -2 -> -127.
    let values = [1.0, -2.0, 0.5, 0.0];
    let mut out = [0_i8; 4];
    let scale = quantize_block(&values, &mut out);
    assert_eq!(scale.to_bits(), (2.0_f32 / 127.0).to_bits());
    assert_eq!(out, [64, -127, 32, 0]);
}

#[test]
fn quantize_block_zero_nan_and_inf_rules() {
    let mut out = [5_i8; 3];
    assert_eq!(quantize_block(&[0.0, -0.0, 0.0], &mut out), 0.0);
    assert_eq!(out, [0, 0, 0]);

    // NaN anywhere: amax = NaN, inv = NaN, every product NaN -> 0, scale NaN.
    let mut out = [5_i8; 3];
    assert!(quantize_block(&[1.0, f32::NAN, -3.0], &mut out).is_nan());
    assert_eq!(out, [0, 0, 0]);

    // Inf: amax = inf, inv = 0, scale = inf; finite * 0 = 0, inf * 0 = NaN -> 0.
    let mut out = [5_i8; 3];
    assert_eq!(
        quantize_block(&[1.0, f32::NEG_INFINITY, -3.0], &mut out),
        f32::INFINITY
    );
    assert_eq!(out, [0, 0, 0]);
}

#[test]
fn quantize_q_folds_scale_and_log2e_and_pads_with_zero() {
    let mut rng = StdRng::seed_from_u64(7);
    let shape = [1, 2, Q_BLOCK + 3, 16];
    let q = normal_tensor(&mut rng, shape, true, true);
    let sm_scale = 0.25_f32;
    let quant = quantize_q(&q, sm_scale);
    let mult = sm_scale * LOG2_E;
    // Re-quantize each row (one scale per token) by hand through quantize_block and compare bit
    // for bit; the padding rows have scale 0.
    for h in 0..2 {
        for s in 0..2 * Q_BLOCK {
            let values: Vec<f32> = (0..16)
                .filter(|_| s < shape[2])
                .map(|d| q.get(0, h, s, d) * mult)
                .collect();
            let mut expected = vec![0_i8; values.len()];
            let scale = quantize_block(&values, &mut expected);
            assert_eq!(
                quant.scale_of(0, h, s).to_bits(),
                scale.to_bits(),
                "row {s}"
            );
            if s < shape[2] {
                assert_eq!(quant.row(0, h, s), &expected[..]);
            } else {
                assert_eq!(scale, 0.0);
            }
        }
    }
    assert_eq!(
        (quant.padded_seq, quant.n_blocks),
        (2 * Q_BLOCK, 2 * Q_BLOCK)
    );
    assert!(quant.data[(Q_BLOCK + 3) * 16..2 * Q_BLOCK * 16]
        .iter()
        .all(|&x| x == 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every element is within half a quantization step of its value, the block maximum maps to
    /// ±127, and the scale is exactly `amax / 127`; for Q (blocks of one row, padded to
    /// `Q_BLOCK` rows), K with smoothing and K without.
    #[test]
    fn quantization_error_is_at_most_half_a_step(
        batch in 1..=2_usize,
        heads in 1..=2_usize,
        seq in 1..=150_usize,
        head_dim in select(vec![8_usize, 16, 64]),
        nhd in any::<bool>(),
        magnitude in select(vec![1e-3_f32, 1.0, 100.0]),
        channel_offset in select(vec![0.0_f32, 8.0]),
        sm_scale in 0.05_f32..1.0,
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let shape = [batch, heads, seq, head_dim];
        let x = offset_tensor(&mut rng, shape, nhd, channel_offset);
        let x = tensor_from(&mut rng, shape, nhd, false, |_, b, h, s, d| magnitude * x.get(b, h, s, d));

        let mult = sm_scale * LOG2_E;
        let q = quantize_q(&x, sm_scale);
        check_quantized(&q, shape, (1, Q_BLOCK), |b, h, s, d| x.get(b, h, s, d) * mult)?;

        let mean = k_mean(&x);
        let k_smooth = quantize_k(&x, Some(&mean));
        check_quantized(&k_smooth, shape, (K_BLOCK, K_BLOCK), |b, h, s, d| {
            x.get(b, h, s, d) - mean[(b * heads + h) * head_dim + d]
        })?;

        let k_plain = quantize_k(&x, None);
        check_quantized(&k_plain, shape, (K_BLOCK, K_BLOCK), |b, h, s, d| x.get(b, h, s, d))?;
    }

    /// The lane/tree mean agrees with the exact mean up to f32 summation error.
    #[test]
    fn k_mean_matches_f64_mean(
        batch in 1..=2_usize,
        heads in 1..=3_usize,
        seq in 1..=150_usize,
        head_dim in select(vec![8_usize, 16, 64]),
        nhd in any::<bool>(),
        channel_offset in select(vec![0.0_f32, 8.0]),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let k = offset_tensor(&mut rng, [batch, heads, seq, head_dim], nhd, channel_offset);
        let mean = k_mean(&k);
        prop_assert_eq!(mean.len(), batch * heads * head_dim);
        for b in 0..batch {
            for h in 0..heads {
                for d in 0..head_dim {
                    let column = (0..seq).map(|s| f64::from(k.get(b, h, s, d)));
                    let exact = column.clone().sum::<f64>() / seq as f64;
                    let mean_abs = column.map(f64::abs).sum::<f64>() / seq as f64;
                    let got = f64::from(mean[(b * heads + h) * head_dim + d]);
                    prop_assert!(
                        (got - exact).abs() <= 1e-5 * mean_abs,
                        "mean {} vs exact {} (mean |x| {})", got, exact, mean_abs
                    );
                }
            }
        }
    }
}

/// K mean of a single channel with the given values along the sequence.
fn single_channel_mean(values: &[f32]) -> f32 {
    let k = HostTensor::from_fn([1, 1, values.len(), 1], false, |_, _, s, _| values[s]);
    k_mean(&k)[0]
}

#[test]
fn k_mean_tree_order_kv_len_3() {
    // Lanes 0..3 hold x0, x1, x2; the tree adds lane 2 to lane 0 (stride 2) before lane 1
    // (stride 1): (2^24 + -1) + 1 = 2^24. A sequential sum gives (2^24 + 1) + -1 = 2^24 - 1,
    // because 2^24 + 1 rounds to 2^24 (ties to even).
    let two_24 = 16_777_216.0_f32;
    let got = single_channel_mean(&[two_24, 1.0, -1.0]);
    assert_eq!(got.to_bits(), (two_24 / 3.0).to_bits());
    assert_ne!(
        got.to_bits(),
        ((two_24 - 1.0) / 3.0).to_bits(),
        "sequential order"
    );
}

#[test]
fn k_mean_tree_order_kv_len_17() {
    // x0 = 2^24, x1..x16 = 1. Lane 0 = (0 + 2^24) + x16 = 2^24 (tie to even); lanes 1..15 = 1.
    // Stride 8: lane0 = 2^24 + 1 = 2^24, lanes 1..7 = 2. Stride 4: lane0 = 2^24 + 2, lanes 1..3 = 4.
    // Stride 2: lane0 = 2^24 + 6, lane1 = 8. Stride 1: lane0 = 2^24 + 14. Mean = (2^24 + 14) / 17.
    let two_24 = 16_777_216.0_f32;
    let mut values = vec![1.0_f32; 17];
    values[0] = two_24;
    let got = single_channel_mean(&values);
    assert_eq!(got.to_bits(), ((two_24 + 14.0) / 17.0).to_bits());
    // Neither the sequential order (2^24) nor the exact sum (2^24 + 16) gives this value.
    assert_ne!(got.to_bits(), (two_24 / 17.0).to_bits(), "sequential order");
    assert_ne!(
        got.to_bits(),
        ((two_24 + 16.0) / 17.0).to_bits(),
        "exact sum"
    );
}

#[test]
fn k_mean_with_empty_sequence_is_nan() {
    let k = HostTensor::contiguous([1, 2, 0, 8], false);
    assert!(k_mean(&k).iter().all(|m| m.is_nan()));
}

// ---------------------------------------------------------------------------------------------
// Exact attention
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The parallel, max-subtracted reference equals the literal triple loop.
    #[test]
    fn attention_f64_matches_naive(problem in problems(40)) {
        let (q, k, v) = problem.tensors();
        let fast = attention_f64(&q, &k, &v, &problem.opts());
        let naive = naive_attention_f64(&q, &k, &v, &problem.opts());
        prop_assert_eq!(
            (fast.batch, fast.q_heads, fast.qo_len, fast.head_dim),
            (problem.batch, problem.kv_heads * problem.group, problem.qo_len, problem.head_dim)
        );
        assert_close(&fast.o, &naive.o, 1e-10, "o")?;
        assert_close(&fast.lse, &naive.lse, 1e-10, "lse")?;
    }

    /// Subtracting a per-channel constant from K shifts every score of a row by the same amount,
    /// so the output is unchanged and the LSE moves by exactly `sm_scale * q · c`.
    #[test]
    fn smoothing_k_leaves_attention_unchanged(
        problem in problems(64),
        channel_offset in select(vec![0.0_f32, 8.0]),
    ) {
        let (q, _, v) = problem.tensors();
        let mut rng = StdRng::seed_from_u64(problem.seed ^ 0x5eed);
        // K on a 2^-8 grid, and the shift rounded to the same grid, so K - c is exact in f32 and
        // the comparison sees only the softmax, not input rounding.
        let grid = 256.0_f32;
        let k = offset_tensor(&mut rng, problem.kv_shape(), problem.nhd, channel_offset);
        let k = tensor_from(&mut rng, problem.kv_shape(), problem.nhd, problem.padded, |_, b, h, s, d| {
            (k.get(b, h, s, d) * grid).round() / grid
        });
        let [batch, kv_heads, kv_len, head_dim] = problem.kv_shape();
        let shift: Vec<f32> = (0..batch * kv_heads * head_dim)
            .map(|bhd| {
                let (bh, d) = (bhd / head_dim, bhd % head_dim);
                let (b, h) = (bh / kv_heads, bh % kv_heads);
                let mean = (0..kv_len).map(|s| f64::from(k.get(b, h, s, d))).sum::<f64>() / kv_len as f64;
                ((mean * f64::from(grid)).round() / f64::from(grid)) as f32
            })
            .collect();
        let shifted = tensor_from(&mut rng, problem.kv_shape(), problem.nhd, false, |_, b, h, s, d| {
            k.get(b, h, s, d) - shift[(b * kv_heads + h) * head_dim + d]
        });

        let opts = problem.opts();
        let original = attention_f64(&q, &k, &v, &opts);
        let smoothed = attention_f64(&q, &shifted, &v, &opts);
        assert_close(&smoothed.o, &original.o, 1e-9, "o")?;

        let sm_scale = f64::from(opts.sm_scale_for(head_dim));
        let group = problem.group;
        let q_heads = kv_heads * group;
        let expected_lse: Vec<f64> = (0..smoothed.lse.len())
            .map(|row| {
                let i = row % problem.qo_len;
                let h = (row / problem.qo_len) % q_heads;
                let b = row / (problem.qo_len * q_heads);
                let q_dot_shift: f64 = (0..head_dim)
                    .map(|d| f64::from(q.get(b, h, i, d)) * f64::from(shift[(b * kv_heads + h / group) * head_dim + d]))
                    .sum();
                smoothed.lse[row] + sm_scale * q_dot_shift
            })
            .collect();
        assert_close(&expected_lse, &original.lse, 1e-9, "lse")?;

        // With the real (f32, rounded) K mean the result still agrees up to input rounding.
        let mean = k_mean(&k);
        let smoothed_by_mean = tensor_from(&mut rng, problem.kv_shape(), problem.nhd, false, |_, b, h, s, d| {
            k.get(b, h, s, d) - mean[(b * kv_heads + h) * head_dim + d]
        });
        let by_mean = attention_f64(&q, &smoothed_by_mean, &v, &opts);
        assert_close(&by_mean.o, &original.o, 1e-5, "o (k_mean)")?;
    }

    /// Keys a causal row cannot see do not influence it at all, even when they are NaN/huge.
    #[test]
    fn causal_masked_keys_do_not_affect_row(problem in problems(40), row_pick in any::<u64>()) {
        let problem = Problem { causal: true, ..problem };
        let (q, k, v) = problem.tensors();
        let i = (row_pick % problem.qo_len as u64) as usize;
        let visible = visible_key_count(i, problem.qo_len, problem.kv_len, true);
        let mut k_changed = k.clone();
        let mut v_changed = v.clone();
        let [batch, kv_heads, kv_len, head_dim] = problem.kv_shape();
        for b in 0..batch {
            for h in 0..kv_heads {
                for j in visible..kv_len {
                    for d in 0..head_dim {
                        k_changed.set(b, h, j, d, f32::NAN);
                        v_changed.set(b, h, j, d, 1e30);
                    }
                }
            }
        }
        let opts = problem.opts();
        let q_heads = kv_heads * problem.group;
        for reference in [attention_f64, naive_attention_f64] {
            let before = reference(&q, &k, &v, &opts);
            let after = reference(&q, &k_changed, &v_changed, &opts);
            for b in 0..batch {
                for h in 0..q_heads {
                    let bits = |out: &RefOutput| -> Vec<u64> {
                        out.o_row(b, h, i).iter().map(|x| x.to_bits()).collect()
                    };
                    prop_assert_eq!(bits(&before), bits(&after));
                    prop_assert_eq!(before.lse_at(b, h, i).to_bits(), after.lse_at(b, h, i).to_bits());
                    if visible == 0 {
                        prop_assert!(before.o_row(b, h, i).iter().all(|&x| x == 0.0));
                        prop_assert_eq!(before.lse_at(b, h, i), f64::NEG_INFINITY);
                    } else {
                        prop_assert!(before.lse_at(b, h, i).is_finite());
                    }
                }
            }
        }
    }
}

#[test]
fn visible_key_count_is_bottom_right_aligned() {
    // qo_len == kv_len: the usual lower triangle.
    assert_eq!(visible_key_count(0, 4, 4, true), 1);
    assert_eq!(visible_key_count(3, 4, 4, true), 4);
    // kv_len > qo_len: the last query sees every key, the first sees kv_len - qo_len + 1.
    assert_eq!(visible_key_count(0, 2, 5, true), 4);
    assert_eq!(visible_key_count(1, 2, 5, true), 5);
    // qo_len > kv_len: the first qo_len - kv_len queries see nothing.
    assert_eq!(visible_key_count(0, 5, 2, true), 0);
    assert_eq!(visible_key_count(2, 5, 2, true), 0);
    assert_eq!(visible_key_count(3, 5, 2, true), 1);
    assert_eq!(visible_key_count(4, 5, 2, true), 2);
    assert_eq!(visible_key_count(0, 5, 2, false), 2);
}

#[test]
fn rows_without_visible_keys_are_zero_with_neg_inf_lse() {
    let mut rng = StdRng::seed_from_u64(11);
    let (qo_len, kv_len) = (10, 4);
    let q = normal_tensor(&mut rng, [1, 2, qo_len, 16], false, false);
    let k = normal_tensor(&mut rng, [1, 1, kv_len, 16], false, false);
    let v = normal_tensor(&mut rng, [1, 1, kv_len, 16], false, false);
    let opts = RefOptions {
        causal: true,
        sm_scale: None,
    };
    let outputs = [
        attention_f64(&q, &k, &v, &opts),
        naive_attention_f64(&q, &k, &v, &opts),
        attention_quantized_emulation(&q, &k, &v, &opts, true, false),
        attention_quantized_emulation(&q, &k, &v, &opts, false, true),
    ];
    for out in &outputs {
        for h in 0..2 {
            for i in 0..qo_len {
                if i < qo_len - kv_len {
                    assert!(out.o_row(0, h, i).iter().all(|&x| x == 0.0), "row {i}");
                    assert_eq!(out.lse_at(0, h, i), f64::NEG_INFINITY, "row {i}");
                } else {
                    assert!(out.o_row(0, h, i).iter().all(|x| x.is_finite()), "row {i}");
                    assert!(out.o_row(0, h, i).iter().any(|&x| x != 0.0), "row {i}");
                    assert!(out.lse_at(0, h, i).is_finite(), "row {i}");
                }
            }
        }
    }
}

#[test]
fn nan_in_one_q_row_stays_in_that_row() {
    let mut rng = StdRng::seed_from_u64(13);
    // GQA: query heads 0 and 1 share kv head 0; the NaN row must not leak into head 0.
    let mut q = normal_tensor(&mut rng, [2, 4, 20, 16], true, false);
    let k = normal_tensor(&mut rng, [2, 2, 24, 16], true, false);
    let v = normal_tensor(&mut rng, [2, 2, 24, 16], true, false);
    q.set(1, 1, 5, 3, f32::NAN);
    for causal in [false, true] {
        let out = attention_f64(
            &q,
            &k,
            &v,
            &RefOptions {
                causal,
                sm_scale: None,
            },
        );
        let nan_row = (4 + 1) * 20 + 5;
        assert_eq!(nan_rows(&out), vec![nan_row]);
        assert!(out.lse[nan_row].is_nan());
        for row in (0..out.lse.len()).filter(|&r| r != nan_row) {
            assert!(row_is_finite(&out, row), "row {row} (causal {causal})");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantized emulation
// ---------------------------------------------------------------------------------------------

#[test]
fn nan_in_q_row_poisons_exactly_that_row_in_emulation() {
    let mut rng = StdRng::seed_from_u64(17);
    let qo_len = Q_BLOCK + 72;
    let mut q = normal_tensor(&mut rng, [1, 2, qo_len, 16], false, false);
    let k = normal_tensor(&mut rng, [1, 1, 40, 16], false, false);
    let v = normal_tensor(&mut rng, [1, 1, 40, 16], false, false);
    q.set(0, 1, 5, 0, f32::NAN);
    let out = attention_quantized_emulation(&q, &k, &v, &RefOptions::default(), true, false);
    // Q's scales are per token: only head 1's row 5 has the NaN scale.
    let expected = vec![qo_len + 5];
    assert_eq!(nan_rows(&out), expected);
    for row in (0..2 * qo_len).filter(|r| !expected.contains(r)) {
        assert!(row_is_finite(&out, row), "row {row}");
    }
}

#[test]
fn nan_in_k_block_poisons_rows_that_see_it_in_emulation() {
    let mut rng = StdRng::seed_from_u64(19);
    let len = 2 * K_BLOCK + 22;
    let q = normal_tensor(&mut rng, [1, 1, len, 16], true, false);
    let mut k = normal_tensor(&mut rng, [1, 1, len, 16], true, false);
    let v = normal_tensor(&mut rng, [1, 1, len, 16], true, false);
    k.set(0, 0, K_BLOCK + 36, 2, f32::NAN);
    let opts = RefOptions {
        causal: true,
        sm_scale: None,
    };
    // Without smoothing only K block 1 is NaN: rows that see a key of it (i >= K_BLOCK) are NaN.
    let out = attention_quantized_emulation(&q, &k, &v, &opts, false, false);
    assert_eq!(nan_rows(&out), (K_BLOCK..len).collect::<Vec<_>>());
    assert!((0..K_BLOCK).all(|row| row_is_finite(&out, row)));
    // With smoothing the NaN reaches every K block through the mean: every row is NaN.
    let out = attention_quantized_emulation(&q, &k, &v, &opts, true, false);
    assert_eq!(nan_rows(&out), (0..len).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// On N(0, 1) inputs the quantized algorithm is close to exact attention in every variant.
    #[test]
    fn quantized_emulation_is_close_to_exact(causal in any::<bool>(), seed in any::<u64>()) {
        let problem = Problem {
            batch: 1,
            kv_heads: 2,
            group: 2,
            qo_len: 256,
            kv_len: 256,
            head_dim: 64,
            causal,
            nhd: false,
            padded: false,
            sm_scale: None,
            seed,
        };
        let (q, k, v) = problem.tensors();
        let opts = problem.opts();
        let exact = attention_f64(&q, &k, &v, &opts);
        for smooth_k in [false, true] {
            for pv_f16_accum in [false, true] {
                let emulated = attention_quantized_emulation(&q, &k, &v, &opts, smooth_k, pv_f16_accum);
                let metrics = compare_f64(&emulated.o, &exact.o);
                prop_assert!(
                    metrics.cos_sim > 0.999 && metrics.n_nan_mismatch == 0,
                    "smooth_k {} pv_f16_accum {}: {:?}", smooth_k, pv_f16_accum, metrics
                );
                let lse = compare_f64(&emulated.lse, &exact.lse);
                prop_assert!(lse.max_abs < 0.05, "lse: {:?}", lse);
            }
        }
    }

    /// Large per-channel offsets in K wreck INT8 resolution unless K is smoothed first.
    #[test]
    fn smooth_k_absorbs_channel_offsets(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (q_shape, kv_shape) = ([1, 2, 256, 64], [1, 2, 256, 64]);
        let q = normal_tensor(&mut rng, q_shape, false, false);
        let k = offset_tensor(&mut rng, kv_shape, false, 8.0);
        let v = normal_tensor(&mut rng, kv_shape, false, false);
        let opts = RefOptions::default();
        let exact = attention_f64(&q, &k, &v, &opts);
        let smoothed = compare_f64(&attention_quantized_emulation(&q, &k, &v, &opts, true, false).o, &exact.o);
        let plain = compare_f64(&attention_quantized_emulation(&q, &k, &v, &opts, false, false).o, &exact.o);
        prop_assert!(smoothed.rel_l1 < 0.03, "smoothed: {:?}", smoothed);
        prop_assert!(
            plain.rel_l1 > 2.0 * smoothed.rel_l1,
            "smoothing should clearly help: plain {:?} smoothed {:?}", plain, smoothed
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and host tensors
// ---------------------------------------------------------------------------------------------

#[test]
fn compare_is_nan_aware() {
    let out = [1.0_f32, 2.0, f32::NAN, f32::NAN, f32::INFINITY, 3.0];
    let reference = [
        1.0_f64,
        4.0,
        f64::NAN,
        0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let m = compare(&out, &reference);
    // Compared: (1, 1) and (2, 4). Equal non-finite: (NaN, NaN), (inf, inf). Mismatch: the rest.
    assert_eq!(m.n_compared, 2);
    assert_eq!(m.n_nan_mismatch, 2);
    assert!((m.cos_sim - 9.0 / 85.0_f64.sqrt()).abs() < 1e-15);
    assert!((m.rel_l1 - 0.4).abs() < 1e-15);
    assert!((m.rmse - 2.0_f64.sqrt()).abs() < 1e-15);
    assert_eq!(m.max_abs, 2.0);

    let zeros = compare(&[0.0; 4], &[0.0; 4]);
    assert_eq!((zeros.cos_sim, zeros.rel_l1, zeros.rmse), (1.0, 0.0, 0.0));
}

#[test]
fn compare_of_reference_with_itself_is_perfect() {
    let mut rng = StdRng::seed_from_u64(23);
    let q = normal_tensor(&mut rng, [1, 2, 33, 8], false, false);
    let k = normal_tensor(&mut rng, [1, 2, 17, 8], false, false);
    let v = normal_tensor(&mut rng, [1, 2, 17, 8], false, false);
    let exact = attention_f64(&q, &k, &v, &RefOptions::default());
    let as_f32: Vec<f32> = exact.o.iter().map(|&x| x as f32).collect();
    let m = compare(&as_f32, &exact.o);
    assert!(m.cos_sim > 1.0 - 1e-12 && m.rel_l1 < 1e-7, "{m:?}");
    assert_eq!(m.n_compared, exact.o.len());
}

#[test]
fn host_tensor_layouts_address_the_same_logical_element() {
    let shape = [2, 3, 5, 8];
    let element = |b: usize, h: usize, s: usize, d: usize| (((b * 7 + h) * 11 + s) * 13 + d) as f32;
    let hnd = HostTensor::from_fn(shape, false, element);
    let nhd = HostTensor::from_fn(shape, true, element);
    assert_eq!(hnd.strides, [120, 40, 8, 1]);
    assert_eq!(nhd.strides, [120, 8, 24, 1]);
    for (b, h, s, d) in [(0, 0, 0, 0), (1, 2, 4, 7), (0, 1, 3, 5), (1, 0, 2, 1)] {
        assert_eq!(hnd.get(b, h, s, d), element(b, h, s, d));
        assert_eq!(nhd.get(b, h, s, d), element(b, h, s, d));
    }
    // Memory order: in NHD the next element after a row of one head is the same token's next head.
    assert_eq!(nhd.data[8], element(0, 1, 0, 0));
    assert_eq!(hnd.data[8], element(0, 0, 1, 0));
}

#[test]
#[should_panic(expected = "needs")]
fn host_tensor_from_parts_rejects_short_storage() {
    let _ = HostTensor::from_parts(vec![0.0; 10], [1, 1, 2, 8], [16, 16, 8, 1]);
}

#[test]
#[should_panic(expected = "multiple of kv heads")]
fn attention_rejects_bad_gqa_ratio() {
    let q = HostTensor::contiguous([1, 3, 4, 8], false);
    let kv = HostTensor::contiguous([1, 2, 4, 8], false);
    let _ = attention_f64(&q, &kv, &kv, &RefOptions::default());
}

/// The f16 accumulator (`PvAccum::F16`) stays finite for every f16 V. Up to |V| = 1023 one pass
/// suffices whatever the scores: the worst 64-key tile, every key at the row's maximum (p = 1
/// each), sums to 64 · 1023 = 65472 ≤ 65504. Past that the tile can overflow (1024 with equal
/// scores reaches 65536, which f16 holds only as ∞), and the row is summed again with its
/// probabilities lowered by 2^-7, as the kernel's second pass does. Fresh V values of either sign
/// near 1023, from 1100 to 2000, and near f16's largest value, in channels of one sign each (no
/// cancellation), with all scores equal (Q = 0) and random: finite, and within the f16 path's
/// error of exact attention.
#[test]
fn f16_accumulator_stays_finite_for_every_f16_v() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let (kv_len, d) = (320, 64);
    for (lo, hi) in [(900.0f32, 1023.0), (1100.0, 2000.0), (30000.0, 65504.0)] {
        let v = tensor_from(
            &mut rng,
            [1, 1, kv_len, d],
            false,
            false,
            |rng, _, _, _, c| {
                let sign = if c % 2 == 0 { 1.0 } else { -1.0 };
                sign * rng.gen_range(lo..=hi)
            },
        );
        let k = normal_tensor(&mut rng, [1, 1, kv_len, d], false, false);
        for q_std in [0.0f32, 1.0] {
            let q = tensor_from(&mut rng, [1, 1, 33, d], false, false, |rng, _, _, _, _| {
                q_std * normal(rng)
            });
            let opts = RefOptions::default();
            let out = attention_quantized_emulation(&q, &k, &v, &opts, true, true);
            let what = format!("|V| in [{lo}, {hi}], Q std {q_std}");
            assert!(
                out.o.iter().all(|x| x.is_finite()),
                "{what}: an output is not finite"
            );
            let exact = attention_f64(&q, &k, &v, &opts);
            let m = compare_f64(&out.o, &exact.o);
            assert!(m.rel_l1 < 0.02, "{what}: {m:?}");
        }
    }
}
