//! The portable f16 kernel's online softmax (`kernels-gpu/src/attention/softmax.rs`, with
//! `softmax16::exponentiate_row`, `retry.rs` and `frag::probs_to_frag_a`), its own source compiled
//! for the host and run as one warp of 32 lockstep threads (`device_on_host/ptx.rs`: shuffles and
//! `vote.all` through a barrier, `ex2` as the exact `2^x` with flushed subnormals). This is the
//! softmax of the path that RTX 3090 / 4090 / A100 run, which no GPU here can test natively.
//!
//! Each lane takes the step of `attention/mainloop.rs` (modelled here: dequantize, mask, and the
//! choice between the probabilities against the lagging max and the exact softmax, with the
//! warp's vote and the retry backoff) over a row of key tiles, in increasing or decreasing order
//! as the kernel visits causal tiles, and folds a one-channel `P·V` (`O = O · rescale + Σ p·v`).
//! It must give the f64 softmax-weighted average (2e-5 relative), every probability must stay
//! within what the f16 P·V accumulator allows (≤ 1 on the exact path, lane sums ≤ the limit on the
//! fast one), and each f16 A fragment must hold its probabilities rounded to nearest even. Score
//! shapes: random, rising along the keys (the recency slope that makes tiles retry), falling, and
//! a jump; with both accumulators' limits and headrooms, the f16 accumulator's shifted second
//! pass (every probability ≤ 2^-7), masked tails, causal rows without keys, and a NaN row. The
//! LSE (`max + log2 Σ p`) must match too.

#![allow(unexpected_cfgs)] // the device crate's features in the included files

mod common;

#[path = "device_on_host/ptx.rs"]
mod ptx;

#[path = "device_on_host/softmax_ref.rs"]
mod softmax_ref;

#[path = "../kernels-gpu/src/unroll.rs"]
mod unroll;

#[path = "../kernels-gpu/src/acc_layout.rs"]
mod acc_layout;

#[allow(dead_code)]
#[path = "../abi/config.rs"]
mod config;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/tile.rs"]
mod tile;

#[allow(dead_code, unused_imports)]
#[path = "../kernels-gpu/src/frag.rs"]
mod frag;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/reduce.rs"]
mod reduce;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/softmax16.rs"]
mod softmax16;

#[path = "../kernels-gpu/src/retry.rs"]
mod retry;

#[path = "../kernels-gpu/src/attention/softmax.rs"]
mod portable_softmax;

use acc_layout::{acc_col, acc_row};
use half::f16;
use portable_softmax::OnlineSoftmax;
use rand::rngs::StdRng;
use rand::Rng;
use retry::RetryBackoff;

#[derive(Clone, Copy, Debug)]
enum Shape {
    Random,
    Rising,
    Falling,
    Jump,
}

/// One warp's `16·MT` rows against `tiles` key tiles of `8·KT` keys.
struct Case {
    tiles: usize,
    kv_len: usize,
    qo_len: usize,
    row0: usize,
    causal: bool,
    /// Tiles in decreasing order (the kernel's causal order since v30).
    reverse: bool,
    /// The f32 P·V accumulator's limit and headroom, else the f16 one's.
    pv_f32: bool,
    /// The f16 accumulator's second pass (`config::F16_ACC_OVERFLOW_SHIFT`): no headroom, every
    /// probability at most 2^-7, the limit scaled by 2^-7.
    shifted: bool,
    s_int: Vec<Vec<i32>>,
    q_scale: Vec<f32>,
    k_scale: Vec<f32>,
    v: Vec<f32>,
    force_mask: Vec<bool>,
    shape: Shape,
}

impl Case {
    fn visible(&self, row: usize, key: usize) -> bool {
        let diag = self.kv_len as i64 - self.qo_len as i64;
        key < self.kv_len && (!self.causal || key as i64 <= (self.row0 + row) as i64 + diag)
    }
}

fn random_case(rng: &mut StdRng, rows: usize, tile_keys: usize, shape: Shape) -> Case {
    let tiles = rng.gen_range(1..=32usize.min(2048 / tile_keys));
    let keys = tiles * tile_keys;
    let kv_len = keys - rng.gen_range(0..tile_keys.min(keys));
    let qo_len = (kv_len as i64 + rng.gen_range(-40i64..=40)).max(rows as i64) as usize;
    let row0 = rows * rng.gen_range(0..qo_len.div_ceil(rows));
    let range = 127 * 127 * 32;
    let jump_at = rng.gen_range(0..keys);
    let s_int = (0..rows)
        .map(|_| {
            let slope = rng.gen_range(0.5f64..2.0) * range as f64 / 4096.0;
            (0..keys)
                .map(|k| {
                    let noise = rng.gen_range(-range / 8..=range / 8) as f64;
                    let x = match shape {
                        Shape::Random => rng.gen_range(-range..=range) as f64,
                        Shape::Rising => noise + slope * k as f64 - range as f64,
                        Shape::Falling => noise - slope * k as f64 + range as f64,
                        Shape::Jump => noise + if k >= jump_at { range as f64 } else { 0.0 },
                    };
                    x as i32
                })
                .collect()
        })
        .collect();
    // Scores up to about ±10–40 log2 units (the 1/√d scale and log2 e are in q_scale).
    let q_scale = (0..rows)
        .map(|_| rng.gen_range(10.0f32..40.0) / range as f32)
        .collect();
    let k_scale = (0..tiles).map(|_| rng.gen_range(0.5f32..1.0)).collect();
    let v = (0..keys).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let force_mask = (0..tiles).map(|_| rng.gen_bool(0.15)).collect();
    Case {
        tiles,
        kv_len,
        qo_len,
        row0,
        causal: rng.gen_bool(0.5),
        reverse: rng.gen_bool(0.5),
        pv_f32: rng.gen_bool(0.5),
        shifted: false,
        s_int,
        q_scale,
        k_scale,
        v,
        force_mask,
        shape,
    }
}

/// One lane's results: per (m-tile, h) the lane-partial `O`, the quad's row sum, the final max;
/// and the numbers of tiles kept on the fast path, retried, and held back.
struct LaneOut<const MT: usize> {
    rows: [[(f32, f32, f32); 2]; MT],
    kept: usize,
    retried: usize,
    waited: usize,
}

fn lane_step<const MT: usize, const KT: usize>(c: &Case, lane: u32) -> LaneOut<MT> {
    let tile_keys = 8 * KT;
    let (limit, headroom, shift) = if c.pv_f32 {
        (16384.0, 0.0, 0.0)
    } else if c.shifted {
        ((tile_keys / 4) as f32 / 128.0, 0.0, 7.0)
    } else {
        ((tile_keys / 4) as f32, 3.0, 0.0)
    };
    let p_max = f32::exp2(-shift);
    let mut sm = OnlineSoftmax::<MT>::new();
    let mut backoff = RetryBackoff::new();
    let mut o = [[0.0f32; 2]; MT];
    let (mut kept, mut retried, mut waited) = (0, 0, 0);
    let q_scale: [[f32; 2]; MT] = std::array::from_fn(|mt| {
        std::array::from_fn(|h| c.q_scale[16 * mt + acc_row(lane, 2 * h) as usize])
    });
    for i in 0..c.tiles {
        let t = if c.reverse { c.tiles - 1 - i } else { i };
        let key0 = t * tile_keys;
        let key = |nt: usize, e: usize| key0 + 8 * nt + acc_col(lane, e) as usize;
        let row = |mt: usize, e: usize| 16 * mt + acc_row(lane, e) as usize;
        let s_int: [[[i32; 4]; KT]; MT] = std::array::from_fn(|mt| {
            std::array::from_fn(|nt| std::array::from_fn(|e| c.s_int[row(mt, e)][key(nt, e)]))
        });
        let hides = (0..16 * MT).any(|r| (key0..key0 + tile_keys).any(|k| !c.visible(r, k)));
        let mask = hides || c.force_mask[t];
        let k_scale = c.k_scale[t];

        // The step of `attention/mainloop.rs`: the lagging max where allowed, else exact.
        let exact = |sm: &mut OnlineSoftmax<MT>, o: &mut [[f32; 2]; MT]| {
            let mut s: [[[f32; 4]; KT]; MT] = std::array::from_fn(|mt| {
                std::array::from_fn(|nt| {
                    std::array::from_fn(|e| {
                        let scale = q_scale[mt][e >> 1] * k_scale;
                        if mask && !c.visible(row(mt, e), key(nt, e)) {
                            f32::NEG_INFINITY
                        } else {
                            s_int[mt][nt][e] as f32 * scale
                        }
                    })
                })
            });
            let rescale = sm.update(&mut s, headroom, shift);
            for mt in 0..MT {
                for h in 0..2 {
                    o[mt][h] *= rescale[mt][h];
                }
            }
            s
        };
        let lagging = !mask && i > 0;
        let p = if lagging && backoff.may_try() {
            let (p, sums, within) = sm.probabilities_against_max(&s_int, &q_scale, k_scale, limit);
            if ptx::vote_all(within) {
                backoff.kept();
                sm.add_sums(&sums);
                kept += 1;
                for (mt, sums) in sums.iter().enumerate() {
                    for (h, &sum) in sums.iter().enumerate() {
                        let finite = c.q_scale[row(mt, 2 * h)].is_nan() || sum <= limit;
                        assert!(finite, "fast path: lane {lane} sum {sum} past {limit}");
                    }
                }
                p
            } else {
                backoff.retried();
                retried += 1;
                exact(&mut sm, &mut o)
            }
        } else {
            if lagging {
                backoff.waited();
                waited += 1;
            }
            let p = exact(&mut sm, &mut o);
            for (mt, p) in p.iter().enumerate() {
                for (nt, p) in p.iter().enumerate() {
                    for (e, &x) in p.iter().enumerate() {
                        // `tile max + shift` and the subtraction round in f32: a few ulps over.
                        let ok = c.q_scale[row(mt, e)].is_nan()
                            || (0.0..=p_max * (1.0 + 1e-5)).contains(&x);
                        assert!(ok, "exact path: lane {lane} m{mt} n{nt} e{e}: p = {x}");
                    }
                }
            }
            p
        };
        // The f16 A fragments the P·V takes: each probability rounded to nearest even.
        for (mt, p) in p.iter().enumerate() {
            for kk in 0..KT / 2 {
                let frag = frag::probs_to_frag_a(&p[2 * kk], &p[2 * kk + 1]);
                let want = [
                    (p[2 * kk][0], p[2 * kk][1]),
                    (p[2 * kk][2], p[2 * kk][3]),
                    (p[2 * kk + 1][0], p[2 * kk + 1][1]),
                    (p[2 * kk + 1][2], p[2 * kk + 1][3]),
                ];
                for (r, (lo, hi)) in frag.iter().zip(want) {
                    let (a, b) = (f16::from_bits(*r as u16), f16::from_bits((*r >> 16) as u16));
                    assert_eq!(
                        (a.to_bits(), b.to_bits()),
                        (f16::from_f32(lo).to_bits(), f16::from_f32(hi).to_bits()),
                        "m{mt} k-step {kk}: f16 fragment"
                    );
                }
            }
            for (h, o) in o[mt].iter_mut().enumerate() {
                let mut pv = 0.0f32;
                for (nt, pn) in p.iter().enumerate() {
                    for e in [2 * h, 2 * h + 1] {
                        pv += pn[e] * c.v[key(nt, e)];
                    }
                }
                *o += pv;
            }
        }
    }
    let rows = std::array::from_fn(|mt| {
        std::array::from_fn(|h| (o[mt][h], sm.row_sum(mt, h), sm.max[mt][h]))
    });
    LaneOut {
        rows,
        kept,
        retried,
        waited,
    }
}

/// Checks every row; returns (kept, retried, waited) of lane 0.
fn check_case<const MT: usize, const KT: usize>(c: &Case, what: &str) -> (usize, usize, usize) {
    let lanes = ptx::run_warp(|lane| lane_step::<MT, KT>(c, lane));
    for mt in 0..MT {
        for r in 0..16 {
            let (g, h) = (r % 8, r / 8);
            let row = 16 * mt + r;
            let quad = &lanes[4 * g..4 * g + 4];
            let o: f64 = quad.iter().map(|x| f64::from(x.rows[mt][h].0)).sum();
            let l = quad[0].rows[mt][h].1;
            let visible: Vec<usize> = (0..c.s_int[0].len())
                .filter(|&k| c.visible(row, k))
                .collect();
            if visible.is_empty() {
                assert_eq!((o, l), (0.0, 0.0), "{what} row {row}: no key visible");
                continue;
            }
            if c.q_scale[row].is_nan() {
                assert!(
                    (o / f64::from(l)).is_nan(),
                    "{what} row {row}: NaN row gave {o}/{l}"
                );
                continue;
            }
            let k_scale = |k: usize| c.k_scale[k / (8 * KT)];
            let scores: Vec<f64> = visible
                .iter()
                .map(|&k| f64::from(c.s_int[row][k] as f32 * (c.q_scale[row] * k_scale(k))))
                .collect();
            let values: Vec<f64> = visible.iter().map(|&k| f64::from(c.v[k])).collect();
            let want = softmax_ref::row_softmax(&scores, &values);
            softmax_ref::assert_average(o / f64::from(l), &want, &format!("{what} row {row}"));
            // The LSE the epilogue writes (log2 units), shifted or not.
            let lse = f64::from(quad[0].rows[mt][h].2) + f64::from(l).log2();
            let want_lse = want.top + want.sum_w.log2();
            assert!(
                (lse - want_lse).abs() <= 1e-4 * want_lse.abs().max(1.0),
                "{what} row {row}: LSE {lse} against {want_lse}"
            );
        }
    }
    (lanes[0].kept, lanes[0].retried, lanes[0].waited)
}

#[test]
fn portable_softmax_of_a_warp_equals_the_softmax() {
    let mut rng = common::fresh_rng("portable softmax");
    let (mut kept, mut retried, mut waited) = (0, 0, 0);
    let shapes = [Shape::Random, Shape::Rising, Shape::Falling, Shape::Jump];
    for i in 0..96 {
        let shape = shapes[i % 4];
        // (m-tiles, n-tiles per key tile): d ≤ 64 (2, 8), d = 96/128 f16 (1, 8), 32-key tiles
        // (2, 4).
        let (mt, kt) = [(2, 8), (1, 8), (2, 4)][i / 4 % 3];
        let mut c = random_case(&mut rng, 16 * mt, 8 * kt, shape);
        c.shifted = !c.pv_f32 && i % 3 == 1;
        if i % 12 == 5 {
            c.causal = false;
            c.q_scale[3] = f32::NAN;
        }
        if i % 12 == 7 {
            // The warp at row 0 of a causal call with qo_len = kv_len + 24: rows 0..24 see no key.
            c.causal = true;
            c.qo_len = c.kv_len + 24;
            c.row0 = 0;
        }
        let what = format!(
            "case {i} ({:?}, MT {mt}, KT {kt}, tiles {}, kv {}, qo {}, row0 {}, causal {}, \
             reverse {}, pv_f32 {}, shifted {})",
            c.shape, c.tiles, c.kv_len, c.qo_len, c.row0, c.causal, c.reverse, c.pv_f32, c.shifted
        );
        let counts = match (mt, kt) {
            (2, 8) => check_case::<2, 8>(&c, &what),
            (1, 8) => check_case::<1, 8>(&c, &what),
            _ => check_case::<2, 4>(&c, &what),
        };
        kept += counts.0;
        retried += counts.1;
        waited += counts.2;
    }
    eprintln!("tiles on the fast path {kept}, retried {retried}, held back {waited}");
    assert!(kept > 0 && retried > 0 && waited > 0, "every path taken");
}
