//! CPU tests of the 8-bit P·V's emulation (`sageattention::reference::v8`, and
//! `attention_pv8_emulation`): the key permutation matches the P fragments (of the wgmma and of
//! the portable kernel's mma.sync, simulated lane by lane), the V quantization keeps its stated
//! error bound and layout, the emulated algorithm meets the accuracy the GPU path promises, and
//! the portable kernel's key-tile range per CTA covers exactly the visible keys. Run in CI.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use sageattention::device_config::{key_tiles, p8_tile, padded_len, v8_key_slot, P8_TILE, V8_TILE};
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
        head_dim in prop::sample::select(vec![8usize, 64, 96, 128, 256]),
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
/// cos ≥ 0.9998, the bar the GPU path is held to in tests/gpu_pv8.rs; d = 256 with its 64-key P
/// tiles (`p8_tile`) too.
#[test]
fn pv8_emulation_meets_the_accuracy_bar() {
    let mut rng = StdRng::seed_from_u64(42);
    assert_eq!((p8_tile(128), p8_tile(256)), (128, 64));
    for (head_dim, causal) in [(64, false), (128, true), (256, false), (256, true)] {
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

/// The portable kernel's 8-bit P·V (`kernels-gpu/src/attention_pv8/`) on one warp, simulated lane
/// by lane from the register layouts, against the plain product `P·V` of a 128-key tile:
/// * the Q·Kᵀ accumulator: lane `4g + t`, n-tile j, element e holds row `g + 8(e >> 1)`, key
///   `8j + 2t + (e & 1)`;
/// * `p8::pack_probs_u8`: k-step kk, register r, byte b takes n-tile `4kk + 2(r >> 1) + (b >> 1)`,
///   element `2(r & 1) + (b & 1)`;
/// * mma.sync m16n8k32 A: register r, byte b of lane `4g + t` is row `g + 8(r & 1)`, k
///   `16(r >> 1) + 4t + b`; B: register r, byte b is k `16r + 4t + b`, column g;
/// * `frag::load_b_rows_pair` on the Vᵀ tile (one channel per row, 128 key slots): ldmatrix
///   gives lane `4g + t` row `g` (channel `c0 + g` or `c0 + 8 + g`), bytes `4t..4t+4` of each 8×16
///   byte matrix, at byte `32kk` (b0) and `32kk + 16` (b1) of the row;
/// * the tile holds the prepared Vᵀ: key k of the tile at slot [`v8_key_slot`]`(k)`.
#[test]
fn portable_pv8_fragments_give_the_tile_product() {
    let mut rng = StdRng::seed_from_u64(7);
    let keys = P8_TILE;
    let channels = 16;
    let p: Vec<Vec<u8>> = (0..16)
        .map(|_| (0..keys).map(|_| rng.gen::<u8>()).collect())
        .collect();
    let v: Vec<Vec<i8>> = (0..keys)
        .map(|_| (0..channels).map(|_| rng.gen_range(-127..=127)).collect())
        .collect();
    // The Vᵀ tile in shared memory, as the kernel copies it from the prepared Vᵀ.
    let mut vt = vec![vec![0i8; keys]; channels];
    for (key, row) in v.iter().enumerate() {
        for (c, &x) in row.iter().enumerate() {
            vt[c][v8_key_slot(key)] = x;
        }
    }
    let mut d = vec![vec![0i32; channels]; 16];
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        // What the lane holds after Q·Kᵀ: acc[j][e] = (row, key).
        let held = |j: usize, e: usize| (g + 8 * (e >> 1), 8 * j + 2 * t + (e & 1));
        for kk in 0..keys / 32 {
            // A fragment bytes, from the packing.
            let a = |r: usize, b: usize| {
                let (row, key) = held(4 * kk + 2 * (r >> 1) + (b >> 1), 2 * (r & 1) + (b & 1));
                // The mma reads this byte as A[g + 8(r & 1)][16(r >> 1) + 4t + b].
                assert_eq!(row, g + 8 * (r & 1));
                (row, p[row][key])
            };
            for nt in 0..channels / 8 {
                // B fragment bytes, from the ldmatrix of the Vᵀ tile (channel row c, slots).
                let b = |r: usize, byte: usize| vt[8 * nt + g][32 * kk + 16 * r + 4 * t + byte];
                // The mma: the lane's accumulator rows g, g + 8, columns 2t, 2t + 1 get the sum
                // over k; simulate it by distributing each k to the lanes that own A's row and
                // B's column (A row g, B column g': k = 16r + 4t + b is held by lane (g, t) for
                // A and lane (g', t) for B).
                for r in 0..2 {
                    for byte in 0..4 {
                        for half in 0..2 {
                            let (row, pa) = a(2 * r + half, byte);
                            for col in 0..8 {
                                let vb = vt[8 * nt + col][32 * kk + 16 * r + 4 * t + byte];
                                if col == g {
                                    assert_eq!(vb, b(r, byte));
                                }
                                d[row][8 * nt + col] += i32::from(pa) * i32::from(vb);
                            }
                        }
                    }
                }
            }
        }
    }
    for row in 0..16 {
        for c in 0..channels {
            let exact: i32 = (0..keys)
                .map(|key| i32::from(p[row][key]) * i32::from(v[key][c]))
                .sum();
            assert_eq!(d[row][c], exact, "row {row} channel {c}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `config::key_tiles` (the portable 8-bit kernel's key range per CTA) against brute force:
    /// every visible (row, key) pair of the CTA lies in one of its `n_tiles` tiles and the last of
    /// them has one; its first `n_unmasked` tiles are whole and visible to every row, and the next
    /// one is not.
    #[test]
    fn key_tiles_cover_exactly_the_visible_keys(
        qo_len in 1usize..600,
        kv_len in 1usize..600,
        row_frac in 0.0f64..1.0,
        rows in prop::sample::select(vec![64usize, 128, 192]),
        tile in prop::sample::select(vec![64usize, 128]),
        causal in any::<bool>(),
    ) {
        let q_row0 = ((qo_len - 1) as f64 * row_frac) as usize / rows * rows;
        let (n_tiles, n_unmasked) = key_tiles(q_row0, rows, tile, qo_len, kv_len, causal);
        let row_end = (q_row0 + rows).min(qo_len);
        let visible = |i: usize, j: usize| j < kv_len && (!causal || j + qo_len <= i + kv_len);
        let mut last_visible = None;
        for i in q_row0..row_end {
            for j in 0..kv_len {
                if visible(i, j) {
                    prop_assert!(j / tile < n_tiles, "row {i} key {j}: n_tiles {n_tiles}");
                    last_visible = Some(last_visible.map_or(j, |m: usize| m.max(j)));
                }
            }
        }
        prop_assert_eq!(n_tiles, last_visible.map_or(0, |j| j / tile + 1));
        let whole = |t: usize| (q_row0..row_end)
            .all(|i| (t * tile..(t + 1) * tile).all(|j| visible(i, j)));
        prop_assert!(n_unmasked <= n_tiles);
        for t in 0..n_unmasked {
            prop_assert!(whole(t), "tile {t} is not unmasked");
        }
        prop_assert!(n_unmasked == n_tiles || !whole(n_unmasked));
    }
}
