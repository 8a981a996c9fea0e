//! CPU tests of the FP8 P·V's emulation (`PvPrecision::Fp8`: `attention_fp8_emulation` and the
//! e4m3 Vᵀ of `reference::v8::quantize_v8_as`): the e4m3 V keeps its rounding bound and the 8-bit
//! layout, the f16 accumulator cannot overflow, and the accuracy the FP8 path gives on N(0,1)
//! against exact attention (both accumulators), which is what the GPU tests hold it to. The P
//! fragment layout is the INT8 one (`p8::pack_probs`, checked lane by lane in tests/cpu_pv8.rs).
//! Run in CI.

mod common;

use float8::F8E4M3;
use half::f16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use sageattention::device_config::{
    p8_tile, padded_len, LOG2_P_FP8_MAX, P8_TILE, P_FP8_MAX, V8_TILE, V_FP8_MAX,
};
use sageattention::reference::v8::{quantize_v8_as, VFormat};
use sageattention::reference::{
    attention_f64, attention_fp8_emulation, attention_pv8_emulation, compare, HostTensor, Metrics,
    RefOptions,
};

fn normal_tensor(rng: &mut StdRng, shape: [usize; 4], offset: &[f32]) -> HostTensor {
    HostTensor::from_fn(shape, false, |_, _, _, d| {
        let z: f32 = StandardNormal.sample(rng);
        z + offset[d]
    })
}

/// The accuracy bar the FP8 P·V is held to on N(0,1) inputs (d = 64–256, 1024 keys), set from
/// what the emulation measures (rel L1 0.031–0.034, cos ≥ 0.99955 with either accumulator: see
/// [`fp8_emulation_accuracy_on_normal_inputs`]) with a margin. It does NOT meet the INT8 path's
/// 0.020: e4m3 has 3 mantissa bits.
pub const FP8_REL_L1: f64 = 0.040;
/// See [`FP8_REL_L1`].
pub const FP8_COS: f64 = 0.9993;

/// One tile's `Σ P·V` with an f16 accumulator stays finite whatever the data: at most
/// `P8_TILE · P_FP8_MAX · V_FP8_MAX` in magnitude (every partial sum too), below f16's maximum;
/// the largest e4m3 values really are those bounds.
#[test]
fn f16_accumulator_cannot_overflow() {
    let bound = P8_TILE as f64 * f64::from(P_FP8_MAX) * f64::from(V_FP8_MAX);
    assert!(bound < f64::from(f16::MAX.to_f32()), "{bound}");
    // Rounding a partial sum to f16 cannot push it past f16::MAX either.
    assert!(f16::from_f64(bound).is_finite());
    assert_eq!(F8E4M3::from_f32(P_FP8_MAX).to_f32(), P_FP8_MAX);
    assert_eq!(F8E4M3::from_f32(V_FP8_MAX).to_f32(), V_FP8_MAX);
    // cvt.rn.satfinite saturates: a product rounded past 448 stays 448.
    assert_eq!(F8E4M3::from_f32(1.0e6).to_f32(), 448.0);
    assert_eq!(p8_tile(256), 64);
}

/// The kernels take P in e4m3 units straight from the exponential (`2^(s - max + LOG2_P_FP8_MAX)`,
/// no multiply by 448): the constant is `log2 448` to f32 precision, and a probability of 1 comes
/// out as 448 (or a hair above, which `cvt.rn.satfinite` keeps at 448), as the emulation's
/// `e4m3(448 · p)` has it.
#[test]
fn p_unit_exponent_is_log2_of_the_e4m3_scale() {
    let unit = f64::from(LOG2_P_FP8_MAX).exp2();
    assert!((unit / f64::from(P_FP8_MAX) - 1.0).abs() < 1e-6, "{unit}");
    assert_eq!(F8E4M3::from_f32(unit as f32).to_f32(), P_FP8_MAX);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// e4m3 V: `|v − (q·scale + mean)| ≤ scale · max(2^-4 |q|, 2^-10)` (half a step of 3 mantissa
    /// bits, or of the subnormal spacing 2^-9), `|q| ≤ V_FP8_MAX`, +0 past the sequence and past
    /// head_dim, the INT8 Vᵀ's layout and mean, and a scale `V_FP8_MAX / 127` times the INT8 one's
    /// inverse.
    #[test]
    fn fp8_v_quantization_error_and_layout(
        seq in 1usize..300,
        heads in 1usize..3,
        head_dim in prop::sample::select(vec![16usize, 64, 96, 128, 256]),
        pad in prop::sample::select(vec![0usize, 32]),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let offset: Vec<f32> = (0..head_dim).map(|d| (d as f32 * 0.37).sin() * 3.0).collect();
        let v = normal_tensor(&mut rng, [2, heads, seq, head_dim], &offset);
        let out_hd = head_dim + pad;
        let q = quantize_v8_as(&v, out_hd, VFormat::E4m3);
        let int8 = quantize_v8_as(&v, out_hd, VFormat::Int8);
        prop_assert_eq!(q.format, VFormat::E4m3);
        prop_assert_eq!(q.padded_seq, padded_len(seq, V8_TILE));
        prop_assert_eq!(q.data.len(), int8.data.len());
        prop_assert_eq!(&q.mean, &int8.mean);
        for b in 0..2 {
            for h in 0..heads {
                for c in 0..out_hd {
                    let (scale, mean) = (q.scale_of(b, h, c), q.mean_of(b, h, c));
                    let int8_scale = int8.scale_of(b, h, c);
                    prop_assert!((scale - int8_scale * 127.0 / V_FP8_MAX).abs()
                        <= 1e-6 * scale.abs());
                    for key in 0..q.padded_seq {
                        if key >= seq || c >= head_dim {
                            prop_assert_eq!(q.value(b, h, key, c), 0);
                            continue;
                        }
                        let x = q.value_f64(b, h, key, c);
                        prop_assert!(x.abs() <= f64::from(V_FP8_MAX), "{}", x);
                        let back = x * f64::from(scale) + f64::from(mean);
                        let err = (back - f64::from(v.get(b, h, key, c))).abs();
                        let step = (x.abs() / 16.0).max(1.0 / 1024.0) * f64::from(scale);
                        prop_assert!(err <= step + 1e-5 * (1.0 + f64::from(mean.abs())),
                            "b{} h{} c{} key{}: err {} step {}", b, h, c, key, err, step);
                    }
                }
            }
        }
    }

    /// The two accumulators of the FP8 emulation agree closely (the f16 one rounds each 32-key
    /// k-step's partial sum), and both stay within the FP8 bar of exact attention, over shapes
    /// with tails, causal masks, GQA and qo_len ≠ kv_len.
    #[test]
    fn fp8_emulation_accumulators_agree(
        qo_len in 1usize..200,
        kv_len in 1usize..300,
        head_dim in prop::sample::select(vec![32usize, 64, 96, 128, 256]),
        causal in any::<bool>(),
        gqa in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let zero = vec![0.0; head_dim];
        let (q_heads, kv_heads) = if gqa { (4, 2) } else { (2, 2) };
        let q = normal_tensor(&mut rng, [1, q_heads, qo_len, head_dim], &zero);
        let k = normal_tensor(&mut rng, [1, kv_heads, kv_len, head_dim], &zero);
        let v = normal_tensor(&mut rng, [1, kv_heads, kv_len, head_dim], &zero);
        let opts = RefOptions { causal, sm_scale: None };
        let f32acc = attention_fp8_emulation(&q, &k, &v, &opts, true, false);
        let f16acc = attention_fp8_emulation(&q, &k, &v, &opts, true, true);
        let a: Vec<f32> = f16acc.o.iter().map(|&x| x as f32).collect();
        let m = compare(&a, &f32acc.o);
        // Rows that see no key are 0 in both (NaN-free).
        prop_assert!(m.rel_l1 <= 0.01 || m.rel_l1.is_nan(), "{:?}", m);
        for (x, y) in f16acc.lse.iter().zip(&f32acc.lse) {
            prop_assert!(x == y || (x - y).abs() < 1e-12);
        }
    }
}

fn measure(head_dim: usize, causal: bool, seed: u64) -> [Metrics; 3] {
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = [1, 2, 1024, head_dim];
    let zero = vec![0.0; head_dim];
    let q = normal_tensor(&mut rng, shape, &zero);
    let k = normal_tensor(&mut rng, shape, &zero);
    let v = normal_tensor(&mut rng, shape, &zero);
    let opts = RefOptions {
        causal,
        sm_scale: None,
    };
    let exact = attention_f64(&q, &k, &v, &opts);
    let to32 = |o: &[f64]| o.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let int8 = attention_pv8_emulation(&q, &k, &v, &opts, true);
    let f32acc = attention_fp8_emulation(&q, &k, &v, &opts, true, false);
    let f16acc = attention_fp8_emulation(&q, &k, &v, &opts, true, true);
    [
        compare(&to32(&int8.o), &exact.o),
        compare(&to32(&f32acc.o), &exact.o),
        compare(&to32(&f16acc.o), &exact.o),
    ]
}

/// The emulated FP8 algorithm against exact attention on N(0,1) inputs, both accumulators, beside
/// the INT8 one: printed (`--nocapture`) and held to [`FP8_REL_L1`] / [`FP8_COS`]; INT8 stays the
/// more accurate.
#[test]
fn fp8_emulation_accuracy_on_normal_inputs() {
    for (head_dim, causal) in [(64, false), (128, false), (128, true), (256, false)] {
        let [int8, f32acc, f16acc] = measure(head_dim, causal, 42 + head_dim as u64);
        eprintln!(
            "d={head_dim} causal={causal}: int8 rel L1 {:.4} cos {:.6} | fp8 f32acc {:.4} {:.6} | \
             fp8 f16acc {:.4} {:.6}",
            int8.rel_l1, int8.cos_sim, f32acc.rel_l1, f32acc.cos_sim, f16acc.rel_l1, f16acc.cos_sim
        );
        for m in [&f32acc, &f16acc] {
            assert!(m.rel_l1 <= FP8_REL_L1 && m.cos_sim >= FP8_COS, "{m:?}");
            assert!(m.rel_l1 > int8.rel_l1, "{m:?} vs INT8 {int8:?}");
        }
    }
}

/// A V channel whose values lie within 2^-128 of their mean (bf16 subnormals, not all equal): its
/// `V_MAX / amax` overflows f32. Every 8-bit P·V must still give that channel's attention output
/// (about its mean, finite) and leave the other channels as they were: no NaN from `0 · ∞`, no
/// e4m3 value past `V_FP8_MAX` (which the f16 accumulator's bound assumes).
#[test]
fn subnormal_v_channel_stays_finite() {
    let mut rng = StdRng::seed_from_u64(0x5ab_0e40);
    let (kv_len, head_dim) = (300, 64);
    let zero = vec![0.0; head_dim];
    let q = normal_tensor(&mut rng, [1, 2, 40, head_dim], &zero);
    let k = normal_tensor(&mut rng, [1, 2, kv_len, head_dim], &zero);
    let mut v = normal_tensor(&mut rng, [1, 2, kv_len, head_dim], &zero);
    // Channel 5 of head 0 has values equal to its mean (0 · ∞ = NaN before the fix), channel 9 of
    // head 1 none (±∞ → e4m3 ±448, past the f16 accumulator's bound).
    common::subnormal_v_channels(&mut v);
    let opts = RefOptions {
        causal: false,
        sm_scale: None,
    };
    let exact = attention_f64(&q, &k, &v, &opts);
    for (name, out) in [
        (
            "fp8 f32acc",
            attention_fp8_emulation(&q, &k, &v, &opts, true, false),
        ),
        (
            "fp8 f16acc",
            attention_fp8_emulation(&q, &k, &v, &opts, true, true),
        ),
        ("int8", attention_pv8_emulation(&q, &k, &v, &opts, true)),
    ] {
        let bad = out.o.iter().filter(|x| !x.is_finite()).count();
        assert_eq!(bad, 0, "{name}: {bad} outputs not finite");
        let m = compare(
            &out.o.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &exact.o,
        );
        assert!(m.rel_l1 < FP8_REL_L1, "{name}: {m:?}");
    }
}
