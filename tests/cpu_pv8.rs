//! CPU tests of the 8-bit P·V's emulation (`sageattention::reference::v8`, and
//! `attention_pv8_emulation`): the key permutation matches the P fragments, the V quantization
//! keeps its stated error bound and layout, and the emulated algorithm meets the accuracy the
//! GPU path promises. Run in CI.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use sageattention::device_config::{padded_len, v8_key_slot, V8_TILE};
use sageattention::reference::v8::quantize_v8;
use sageattention::reference::{
    attention_f64, attention_pv8_emulation, compare, HostTensor, RefOptions,
};

fn normal_tensor(rng: &mut StdRng, shape: [usize; 4], offset: &[f32]) -> HostTensor {
    HostTensor::from_fn(shape, false, |_, _, _, d| {
        let z: f32 = StandardNormal.sample(rng);
        z + offset[d]
    })
}

/// Lane `4g + t` of the Q·Kᵀ accumulator holds keys `2t, 2t+1, 8+2t, 9+2t` of each 16-key group
/// (n-tiles of 8 keys, 2 consecutive keys per lane) and puts them in k slots `4t..4t+4` of the
/// 8-bit A fragment: V must hold key `2t + (e & 1) + 8(e >> 1)` at slot `4t + e`.
#[test]
fn key_slots_follow_the_p_fragment_and_permute_each_group() {
    for group in 0..4 {
        let base = 16 * group;
        for t in 0..4 {
            for e in 0..4 {
                let key = base + 2 * t + (e & 1) + 8 * (e >> 1);
                assert_eq!(v8_key_slot(key), base + 4 * t + e, "key {key}");
            }
        }
        let mut slots: Vec<usize> = (base..base + 16).map(v8_key_slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, (base..base + 16).collect::<Vec<_>>());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// |v - (q·scale + mean)| ≤ scale/2 (+ the f32 rounding of the product), |q| ≤ 127, zero past
    /// the sequence and past head_dim; the layout is `[b][h][out_hd][padded_seq]`.
    #[test]
    fn v8_quantization_error_and_layout(
        seq in 1usize..300,
        heads in 1usize..3,
        head_dim in prop::sample::select(vec![8usize, 64, 96, 128]),
        pad in prop::sample::select(vec![0usize, 32]),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let offset: Vec<f32> = (0..head_dim).map(|d| (d as f32 * 0.37).sin() * 3.0).collect();
        let v = normal_tensor(&mut rng, [2, heads, seq, head_dim], &offset);
        let out_hd = head_dim + pad;
        let q = quantize_v8(&v, out_hd);
        prop_assert_eq!(q.padded_seq, padded_len(seq, V8_TILE));
        prop_assert_eq!(q.data.len(), 2 * heads * out_hd * q.padded_seq);
        for b in 0..2 {
            for h in 0..heads {
                for c in 0..out_hd {
                    let (scale, mean) = (q.scale_of(b, h, c), q.mean_of(b, h, c));
                    for key in 0..q.padded_seq {
                        let x = q.value(b, h, key, c);
                        prop_assert!(x != i8::MIN);
                        if key >= seq || c >= head_dim {
                            prop_assert_eq!(x, 0);
                            continue;
                        }
                        let back = f32::from(x) * scale + mean;
                        let err = (back - v.get(b, h, key, c)).abs();
                        prop_assert!(err <= 0.5 * scale + 1e-5 * (1.0 + mean.abs()),
                            "b{} h{} c{} key{}: err {} scale {}", b, h, c, key, err, scale);
                    }
                }
            }
        }
    }
}

/// The emulated 8-bit algorithm against exact attention on N(0,1) inputs: rel L1 ≤ 0.020 and
/// cos ≥ 0.9998, the bar the GPU path is held to in tests/gpu_pv8.rs.
#[test]
fn pv8_emulation_meets_the_accuracy_bar() {
    let mut rng = StdRng::seed_from_u64(42);
    for (head_dim, causal) in [(64, false), (128, true)] {
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
        let emulated = attention_pv8_emulation(&q, &k, &v, &opts, true);
        let out: Vec<f32> = emulated.o.iter().map(|&x| x as f32).collect();
        let m = compare(&out, &exact.o);
        eprintln!(
            "d={head_dim} causal={causal}: rel L1 {:.4} cos {:.6}",
            m.rel_l1, m.cos_sim
        );
        assert!(m.rel_l1 <= 0.020 && m.cos_sim >= 0.9998, "{m:?}");
        let lse_err = emulated
            .lse
            .iter()
            .zip(&exact.lse)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(lse_err < 0.05, "LSE {lse_err}");
    }
}
