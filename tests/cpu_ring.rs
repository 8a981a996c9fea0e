//! CPU tests of context parallelism (`ring`): the ring of exact f64 attentions equals one exact
//! call (P = 1, 2, 4; contiguous and zig-zag; causal or not; GQA; lengths that do not divide);
//! the ring of quantized emulations (each call smoothing its own K rows, as the GPU ring does)
//! is as accurate as one call; the LSE merge's algebra (commutative bit for bit, associative to
//! rounding, empty partials and -inf rows the identity, a split of the keys merged = all keys);
//! validation through the simulated transport (a bad shard on one rank is an error on every
//! rank); exact smoothing (the whole sequence's K mean from all-reduced shard sums, bit for bit,
//! and INT8 K shards equal to one call's rows). Run in CI.

mod common;

use common::random_tensor;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sageattention::quant_ref::{k_mean, quantize_k};
use sageattention::reference::{
    attention_f64, attention_quantized_emulation, compare_f64, HostTensor, RefOptions, RefOutput,
};
use sageattention::ring::merge::{merge_partials, merge_row};
use sageattention::ring::smooth::{global_k_mean, quantize_kv_shard, QuantizedKvShard};
use sageattention::ring::{
    ring_attention_host, simulate_ring_host, HostShard, RingShift, ShardLayout, Sharding,
    SimulatedRing,
};
use sageattention::{DType, Error};

/// The f64 ring against one f64 call: every value within this (absolute; outputs are O(1) and
/// LSEs O(10)), i.e. the rounding of the merge's few extra operations.
const F64_TOL: f64 = 1e-12;

const LAYOUTS: [ShardLayout; 2] = [ShardLayout::Contiguous, ShardLayout::ZigZag];

fn exact(q: &HostTensor, k: &HostTensor, v: &HostTensor, causal: bool) -> RefOutput {
    attention_f64(
        q,
        k,
        v,
        &RefOptions {
            causal,
            sm_scale: None,
        },
    )
}

/// Q `[batch, q_heads, n, d]` and K, V `[batch, kv_heads, n, d]` of N(0,1), f16-representable.
fn qkv(seed: u64, batch: usize, heads: (usize, usize), n: usize, d: usize) -> [HostTensor; 3] {
    let mut rng = StdRng::seed_from_u64(seed);
    [
        random_tensor(&mut rng, [batch, heads.0, n, d], DType::F16, 1.0, None),
        random_tensor(&mut rng, [batch, heads.1, n, d], DType::F16, 1.0, None),
        random_tensor(&mut rng, [batch, heads.1, n, d], DType::F16, 1.0, None),
    ]
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f64::max)
}

#[test]
fn f64_ring_equals_one_call() {
    let mut seed = 0;
    for world in [1usize, 2, 4] {
        for layout in LAYOUTS {
            for causal in [false, true] {
                for (heads, n) in [((2, 2), 64), ((4, 2), 37), ((6, 1), 130)] {
                    seed += 1;
                    let [q, k, v] = qkv(seed, 2, heads, n, 16);
                    let sharding = Sharding::new(n, world, layout).unwrap();
                    let ring = simulate_ring_host(&q, &k, &v, &sharding, causal, &|q, k, v, c| {
                        exact(q, k, v, c)
                    })
                    .unwrap();
                    let one = exact(&q, &k, &v, causal);
                    let what =
                        format!("P={world} {layout:?} causal={causal} heads={heads:?} N={n}");
                    assert!(max_abs_diff(&ring.o, &one.o) <= F64_TOL, "{what}: o");
                    assert!(max_abs_diff(&ring.lse, &one.lse) <= F64_TOL, "{what}: lse");
                }
            }
        }
    }
}

/// The quantized emulation run per block (each call's own K mean and quantization blocks, what
/// the GPU ring does today) is as accurate as one emulated call against exact attention.
#[test]
fn emulated_ring_is_as_accurate_as_one_call() {
    let n = 512;
    let [q, k, v] = qkv(7, 1, (4, 2), n, 64);
    for (world, layout) in [
        (2, ShardLayout::ZigZag),
        (4, ShardLayout::ZigZag),
        (4, ShardLayout::Contiguous),
    ] {
        for causal in [false, true] {
            let sharding = Sharding::new(n, world, layout).unwrap();
            let emulate = |q: &HostTensor, k: &HostTensor, v: &HostTensor, c: bool| {
                let opts = RefOptions {
                    causal: c,
                    sm_scale: None,
                };
                attention_quantized_emulation(q, k, v, &opts, true, false)
            };
            let ring = simulate_ring_host(&q, &k, &v, &sharding, causal, &emulate).unwrap();
            let one = emulate(&q, &k, &v, causal);
            let truth = exact(&q, &k, &v, causal);
            let (m_ring, m_one) = (
                compare_f64(&ring.o, &truth.o),
                compare_f64(&one.o, &truth.o),
            );
            let between = compare_f64(&ring.o, &one.o).rel_l1;
            eprintln!(
                "P={world} {layout:?} causal={causal}: rel L1 vs exact: ring {:.5}, one call \
                 {:.5}; ring vs one call {between:.5}",
                m_ring.rel_l1, m_one.rel_l1
            );
            assert!(
                m_ring.rel_l1 <= 1.15 * m_one.rel_l1 + 1e-3,
                "{m_ring:?} vs {m_one:?}"
            );
            assert!(m_ring.cos_sim >= 0.9999, "{m_ring:?}");
            assert!(between <= 0.02, "{between}");
        }
    }
}

/// Rows `[rows][width]` with LSEs; some rows empty (-inf).
fn partial() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    let width = 3;
    prop::collection::vec(
        (
            prop::collection::vec(-5.0f64..5.0, width),
            prop_oneof![3 => -30.0f64..30.0, 1 => Just(f64::NEG_INFINITY)],
        ),
        4,
    )
    .prop_map(|rows| {
        let lse = rows.iter().map(|r| r.1).collect();
        // A row without keys holds 0, as a call writes it.
        let o = rows
            .into_iter()
            .flat_map(|(o, l)| {
                if l == f64::NEG_INFINITY {
                    vec![0.0; 3]
                } else {
                    o
                }
            })
            .collect();
        (o, lse)
    })
}

fn merged(a: &(Vec<f64>, Vec<f64>), b: &(Vec<f64>, Vec<f64>)) -> (Vec<f64>, Vec<f64>) {
    merge_partials((&a.0, &a.1), (&b.0, &b.1), 3)
}

/// Relative closeness, equal infinities included.
fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x == y || (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_commutative_and_associative(a in partial(), b in partial(), c in partial()) {
        let (ab, ba) = (merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(&ab, &ba);
        let (left, right) = (merged(&ab, &c), merged(&a, &merged(&b, &c)));
        prop_assert!(close(&left.0, &right.0, 1e-12) && close(&left.1, &right.1, 1e-12), "{:?} vs {:?}", left, right);
    }

    #[test]
    fn empty_partials_are_the_identity(a in partial()) {
        let empty = (vec![f64::NAN; 12], vec![f64::NEG_INFINITY; 4]);
        prop_assert_eq!(merged(&a, &empty), a.clone());
        let zeros = (vec![0.0; 12], vec![f64::NEG_INFINITY; 4]);
        prop_assert_eq!(merged(&zeros, &a), a.clone());
        // Rows empty on both sides stay empty.
        for (row, &l) in a.1.iter().enumerate() {
            if l == f64::NEG_INFINITY {
                let (o, lse) = merged(&a, &zeros);
                prop_assert_eq!(lse[row], f64::NEG_INFINITY);
                prop_assert!(o[row * 3..row * 3 + 3].iter().all(|&x| x == 0.0));
            }
        }
    }

    /// Attention over the keys cut into consecutive parts, merged, is attention over all keys.
    #[test]
    fn merging_a_split_of_the_keys_gives_attention_over_all(
        cuts in prop::collection::vec(1usize..40, 1..4),
        seed in any::<u64>(),
        scale in prop_oneof![Just(1.0f32), Just(8.0f32)],
    ) {
        let n: usize = cuts.iter().sum();
        let mut rng = StdRng::seed_from_u64(seed);
        let q = random_tensor(&mut rng, [1, 2, 5, 8], DType::F32, scale, None);
        let k = random_tensor(&mut rng, [1, 1, n, 8], DType::F32, scale, None);
        let v = random_tensor(&mut rng, [1, 1, n, 8], DType::F32, 1.0, None);
        let whole = exact(&q, &k, &v, false);
        let mut acc = (vec![0.0; whole.o.len()], vec![f64::NEG_INFINITY; whole.lse.len()]);
        let mut start = 0;
        for len in cuts {
            let part = exact(&q, &k.rows(start, len), &v.rows(start, len), false);
            for (row, l) in acc.1.iter_mut().enumerate() {
                merge_row(&mut acc.0[row * 8..row * 8 + 8], l, part.o_row(0, row / 5, row % 5), part.lse[row]);
            }
            start += len;
        }
        prop_assert!(max_abs_diff(&acc.0, &whole.o) <= 1e-12);
        prop_assert!(close(&acc.1, &whole.lse, 1e-13));
    }
}

fn shards(q: &HostTensor, k: &HostTensor, v: &HostTensor, s: &Sharding) -> Vec<HostShard> {
    (0..s.world())
        .map(|r| HostShard {
            q: s.shard_host(q, r),
            k: s.shard_host(k, r),
            v: s.shard_host(v, r),
        })
        .collect()
}

fn assert_peers_failed(out: &[Result<RefOutput, Error>], bad: usize) {
    for (r, res) in out.iter().enumerate() {
        if r == bad {
            continue;
        }
        match res {
            Err(Error::RingPeerFailed { rank, failed, .. }) => {
                assert_eq!((*rank, failed.as_slice()), (r, &[bad][..]))
            }
            other => panic!("rank {r}: {other:?}"),
        }
    }
}

#[test]
fn a_bad_shard_on_one_rank_is_an_error_on_every_rank() {
    let n = 96;
    let [q, k, v] = qkv(3, 1, (4, 2), n, 16);
    let s = Sharding::new(n, 3, ShardLayout::ZigZag).unwrap();
    let attend = |q: &HostTensor, k: &HostTensor, v: &HostTensor, c: bool| exact(q, k, v, c);
    let mut ring = SimulatedRing::new(3).unwrap();

    // Rank 1's K shard is one row short.
    let mut bad = shards(&q, &k, &v, &s);
    bad[1].k = bad[1].k.rows(0, bad[1].k.seq() - 1);
    let out = ring_attention_host(&mut ring, &s, bad, true, &attend);
    assert!(
        matches!(out[1], Err(Error::ShapeMismatch { .. })),
        "{:?}",
        out[1]
    );
    assert_peers_failed(&out, 1);

    // Rank 2 was given a problem of other heads (valid on its own): every rank names it.
    let mut other = shards(&q, &k, &v, &s);
    let [q3, k3, v3] = qkv(4, 1, (2, 2), n, 16);
    other[2] = shards(&q3, &k3, &v3, &s).swap_remove(2);
    for (r, res) in ring_attention_host(&mut ring, &s, other, false, &attend)
        .iter()
        .enumerate()
    {
        match res {
            Err(Error::RingMismatch { rank, what }) => {
                assert_eq!(*rank, r);
                assert_eq!(what, "q_heads: rank 0 has 4, rank 2 has 2");
            }
            other => panic!("rank {r}: {other:?}"),
        }
    }

    // A shard too few for the ring: every rank refuses.
    let mut few = shards(&q, &k, &v, &s);
    few.pop();
    let out = ring_attention_host(&mut ring, &s, few, false, &attend);
    assert_eq!(out.len(), 3);
    assert!(out
        .iter()
        .all(|r| matches!(r, Err(Error::InvalidOption(_)))));

    // The good inputs still work on the same ring.
    let out = ring_attention_host(&mut ring, &s, shards(&q, &k, &v, &s), true, &attend);
    assert!(out.iter().all(Result::is_ok));
}

/// With chunks of whole 256-row segments the ring's K mean is one call's, bit for bit, and each
/// rank's INT8 K (quantized once, the payload that travels) is one call's rows; shifting the
/// payloads hands every rank every other rank's quantized shard.
#[test]
fn exact_smoothing_across_the_ring() {
    for (world, layout, n) in [
        (2, ShardLayout::ZigZag, 4 * 256),
        (4, ShardLayout::ZigZag, 8 * 256),
        (3, ShardLayout::Contiguous, 3 * 512),
    ] {
        let mut rng = StdRng::seed_from_u64(n as u64);
        let offsets = common::channel_offsets(&mut rng, 64, 8.0);
        let k = random_tensor(
            &mut rng,
            [2, 2, n, 64],
            DType::F16,
            1.0,
            Some(offsets.as_slice()),
        );
        let v = random_tensor(&mut rng, [2, 2, n, 64], DType::F16, 1.0, None);
        let s = Sharding::new(n, world, layout).unwrap();
        let mut ring = SimulatedRing::new(world).unwrap();
        let k_shards: Vec<HostTensor> = (0..world).map(|r| s.shard_host(&k, r)).collect();
        let means = global_k_mean(&mut ring, &s, &k_shards).unwrap();
        let one_mean = k_mean(&k);
        let one = quantize_k(&k, Some(&one_mean));
        for m in &means {
            assert!(m
                .iter()
                .zip(&one_mean)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        let mut held: Vec<QuantizedKvShard> = (0..world)
            .map(|r| quantize_kv_shard(&s, r, &k_shards[r], &s.shard_host(&v, r), &means[r]))
            .collect();
        for step in 0..world {
            for (r, payload) in held.iter().enumerate() {
                let source = (r + world - step) % world;
                assert_eq!(payload.source, source);
                for (c, quantized) in s.chunks(source).iter().zip(&payload.k) {
                    for (b, h) in [(0, 0), (1, 1)] {
                        for (i, g) in c.global.clone().enumerate() {
                            assert_eq!(quantized.row(b, h, i), one.row(b, h, g));
                            assert_eq!(
                                quantized.scale_of(b, h, i).to_bits(),
                                one.scale_of(b, h, g).to_bits()
                            );
                        }
                    }
                }
            }
            ring.shift(&mut held).unwrap();
        }
    }
    // Chunks that do not fall on segments: the same mean up to f32 rounding of the order.
    let n = 1000;
    let mut rng = StdRng::seed_from_u64(1);
    let k = random_tensor(
        &mut rng,
        [1, 2, n, 64],
        DType::F16,
        1.0,
        Some(&[3.0; 64][..]),
    );
    let s = Sharding::new(n, 4, ShardLayout::ZigZag).unwrap();
    let mut ring = SimulatedRing::new(4).unwrap();
    let k_shards: Vec<HostTensor> = (0..4).map(|r| s.shard_host(&k, r)).collect();
    let mean = &global_k_mean(&mut ring, &s, &k_shards).unwrap()[0];
    for (a, b) in mean.iter().zip(k_mean(&k)) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
}
