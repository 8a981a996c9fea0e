//! The 8-bit kernels' online softmax (`kernels-gpu/src/softmax16.rs`), its own source compiled for
//! the host and run as one warp: 32 threads in lockstep at every shuffle (`device_on_host/ptx.rs`,
//! `ex2` modelled as the exact `2^x` with flushed subnormals). Each lane drives `update_tile` over
//! a row of key tiles as the kernels do and folds a one-channel `P·V` the kernels' way (`O = O ·
//! rescale + factor · Σ p·v`); the quad's result over `row_sum` must be the softmax-weighted
//! average in f64, and `row_sum` the sum of `2^(s − max + unit)` against the lane's final reference
//! max.
//!
//! Fresh random integer scores and scales, on the paths both 8-bit kernels take: unmasked tiles
//! (the unscaled path), masked ones (kv_len inside the tile, causal with bottom-right alignment,
//! rows that see no key), the lazy reference max (`PER_TILE`) with tile maxima that pass it by
//! less and by more than its slack, and the f16 P·V's running max (`PER_TILE = false`) with the
//! sm_90a f16 kernel's step: unmasked tiles against the lagging max (`probabilities_against_max`),
//! kept on the warp's vote or retried exactly, with the retry backoff (`retry.rs`). A row with a
//! NaN Q scale must come out NaN. Tolerance: 2e-5 relative (f32 arithmetic over at most 24
//! tiles; the GPU's `ex2.approx` adds its 2 ulp, which the GPU tests cover).

#![allow(unexpected_cfgs)] // the device crate's features (`hopper`) in the included file

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
#[path = "../kernels-gpu/src/reduce.rs"]
mod reduce;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/softmax16.rs"]
mod softmax16;

#[path = "../kernels-gpu/src/retry.rs"]
mod retry;

use acc_layout::{acc_col, acc_row};
use rand::rngs::StdRng;
use rand::Rng;
use retry::RetryBackoff;
use softmax16::{OnlineSoftmax, TileBounds, LAZY_MAX_SLACK};

/// One warp's 16 rows against `tiles` key tiles of `8·NK` keys.
struct Case {
    nk: usize,
    tiles: usize,
    kv_len: usize,
    qo_len: usize,
    /// The warp's first query row.
    row0: usize,
    causal: bool,
    per_tile: bool,
    /// The sm_90a f16 kernel's step (`per_tile` false): unmasked tiles after the first try the
    /// probabilities against the lagging max, kept on the warp's vote, with the retry backoff.
    lagging: bool,
    p_scale_log2: f32,
    /// Integer scores, `[row][key]` (16 rows).
    s_int: Vec<Vec<i32>>,
    q_scale: [f32; 16],
    /// Per tile, per 64-key half.
    k_scales: Vec<[f32; 2]>,
    /// One V channel per key.
    v: Vec<f32>,
    /// Tiles the driver takes masked even where no key is hidden (the kernels' masked loop
    /// covers such tiles too, e.g. a CTA's rows that a causal diagonal does not reach).
    force_mask: Vec<bool>,
}

impl Case {
    fn keys(&self) -> usize {
        self.tiles * 8 * self.nk
    }

    fn visible(&self, row: usize, key: usize) -> bool {
        let diag = self.kv_len as i64 - self.qo_len as i64;
        key < self.kv_len && (!self.causal || key as i64 <= (self.row0 + row) as i64 + diag)
    }

    /// Score of (row, key) in log2 units as the kernel dequantizes it.
    fn score(&self, row: usize, key: usize) -> f32 {
        let t = key / (8 * self.nk);
        let half = (key % (8 * self.nk)) / 64;
        self.s_int[row][key] as f32 * (self.q_scale[row] * self.k_scales[t][half])
    }

    /// Whether tile `t` hides no key from any of the warp's rows (the kernels' unmasked tiles).
    fn unmasked(&self, t: usize) -> bool {
        (0..16).all(|r| ((t * 8 * self.nk)..((t + 1) * 8 * self.nk)).all(|k| self.visible(r, k)))
    }
}

fn random_case(rng: &mut StdRng, nk: usize, per_tile: bool) -> Case {
    let tile_keys = 8 * nk;
    let tiles = rng.gen_range(1..=24usize.min(3072 / tile_keys));
    let keys = tiles * tile_keys;
    // kv_len inside the last tile or at its end; qo_len around it (causal rows that see no key
    // when qo_len > kv_len).
    let kv_len = keys - rng.gen_range(0..tile_keys.min(keys));
    let qo_len = (kv_len as i64 + rng.gen_range(-40i64..=40)).max(16) as usize;
    let row0 = 16 * rng.gen_range(0..qo_len.div_ceil(16));
    let causal = rng.gen_bool(0.5);
    let range = 127 * 127 * 32;
    let s_int = (0..16)
        .map(|r| {
            (0..keys)
                .map(|_| match (r, rng.gen_range(0..20)) {
                    (3, _) => 1234, // a row of ties
                    (_, 0) => 0,
                    _ => rng.gen_range(-range..=range),
                })
                .collect()
        })
        .collect();
    // Scores up to about ±40 log2 units; per-tile K scales spread so that tile maxima jump by
    // more and by less than the lazy max's slack.
    let q_scale = std::array::from_fn(|_| rng.gen_range(2.0f32..20.0) / range as f32);
    let k_scales = (0..tiles)
        .map(|_| [rng.gen_range(0.05f32..2.0), rng.gen_range(0.05f32..2.0)])
        .collect();
    let v = (0..keys).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let force_mask = (0..tiles).map(|_| rng.gen_bool(0.2)).collect();
    let p_scale_log2 = if per_tile && rng.gen_bool(0.5) {
        8.807_355 // log2 448, the FP8 P's unit
    } else {
        0.0
    };
    Case {
        nk,
        tiles,
        kv_len,
        qo_len,
        row0,
        causal,
        per_tile,
        lagging: !per_tile && rng.gen_bool(0.75),
        p_scale_log2,
        s_int,
        q_scale,
        k_scales,
        v,
        force_mask,
    }
}

/// One lane's result for its rows g and g + 8: the lane-partial `O`, the quad's row sum and the
/// final reference max; and the tiles kept on the lagging max, retried and held back.
type LaneRows = ([(f32, f32, f32); 2], [usize; 3]);

fn step<const PER_TILE: bool, const NK: usize>(
    sm: &mut OnlineSoftmax,
    s: &[[i32; 4]; NK],
    q_scale: [f32; 2],
    k_scales: [f32; 2],
    bounds: &TileBounds,
    (masked, causal): (bool, bool),
    p_scale_log2: f32,
) -> ([[f32; 4]; NK], [f32; 2], [f32; 2]) {
    match (masked, causal) {
        (false, _) => {
            sm.update_tile::<PER_TILE, false, false, NK>(s, q_scale, k_scales, bounds, p_scale_log2)
        }
        (true, false) => {
            sm.update_tile::<PER_TILE, true, false, NK>(s, q_scale, k_scales, bounds, p_scale_log2)
        }
        (true, true) => {
            sm.update_tile::<PER_TILE, true, true, NK>(s, q_scale, k_scales, bounds, p_scale_log2)
        }
    }
}

/// The kernels' loop for one lane.
fn lane_rows<const PER_TILE: bool, const NK: usize>(c: &Case, lane: u32) -> LaneRows {
    let mut sm = OnlineSoftmax::new();
    let mut backoff = RetryBackoff::new();
    let mut counts = [0usize; 3];
    let mut o = [0.0f32; 2];
    let g = (lane >> 2) as usize;
    for t in 0..c.tiles {
        let key0 = t * 8 * NK;
        let s: [[i32; 4]; NK] = std::array::from_fn(|j| {
            std::array::from_fn(|e| {
                c.s_int[acc_row(lane, e) as usize][key0 + 8 * j + acc_col(lane, e) as usize]
            })
        });
        let bounds = TileBounds {
            key0: key0 as u32,
            row0: c.row0 as u32,
            lane,
            kv_len: c.kv_len as u32,
            diag: c.kv_len as i32 - c.qo_len as i32,
        };
        let masked = c.force_mask[t] || !c.unmasked(t);
        let q_scale = [c.q_scale[g], c.q_scale[g + 8]];
        // The sm_90a f16 step (`hopper/attention.rs`): the lagging max where allowed.
        let lagging = c.lagging && !PER_TILE && !masked && t > 0;
        let mut kept = None;
        if lagging && backoff.may_try() {
            let (p, sums, within) = sm.probabilities_against_max::<NK>(&s, q_scale, c.k_scales[t]);
            if ptx::vote_all(within) {
                backoff.kept();
                sm.add_sums(sums);
                counts[0] += 1;
                kept = Some((p, [1.0; 2], [1.0; 2]));
            } else {
                backoff.retried();
                counts[1] += 1;
            }
        } else if lagging {
            backoff.waited();
            counts[2] += 1;
        }
        let (p, rescale, factor) = kept.unwrap_or_else(|| {
            step::<PER_TILE, NK>(
                &mut sm,
                &s,
                q_scale,
                c.k_scales[t],
                &bounds,
                (masked, c.causal),
                c.p_scale_log2,
            )
        });
        for (h, o) in o.iter_mut().enumerate() {
            let mut pv = 0.0f32;
            for (j, pj) in p.iter().enumerate() {
                for e in [2 * h, 2 * h + 1] {
                    pv += pj[e] * c.v[key0 + 8 * j + acc_col(lane, e) as usize];
                }
            }
            *o = *o * rescale[h] + factor[h] * pv;
        }
    }
    // Every lane reduces its quad's sums (shuffles), as the epilogue does.
    let l = [sm.row_sum(0), sm.row_sum(1)];
    ([(o[0], l[0], sm.max[0]), (o[1], l[1], sm.max[1])], counts)
}

fn run_case(c: &Case) -> Vec<LaneRows> {
    match (c.per_tile, c.nk) {
        (true, 8) => ptx::run_warp(|lane| lane_rows::<true, 8>(c, lane)),
        (true, 16) => ptx::run_warp(|lane| lane_rows::<true, 16>(c, lane)),
        (false, 8) => ptx::run_warp(|lane| lane_rows::<false, 8>(c, lane)),
        (false, 16) => ptx::run_warp(|lane| lane_rows::<false, 16>(c, lane)),
        _ => unreachable!("NK is 8 or 16"),
    }
}

/// Checks every row; returns lane 0's tile counts.
fn check_case(c: &Case, what: &str) -> [usize; 3] {
    let (lanes, counts): (Vec<_>, Vec<_>) = run_case(c).into_iter().unzip();
    for row in 0..16 {
        let (g, h) = (row % 8, row / 8);
        let quad = &lanes[4 * g..4 * g + 4];
        let o: f64 = quad.iter().map(|r| f64::from(r[h].0)).sum();
        let (l, max) = (quad[0][h].1, quad[0][h].2);
        for r in quad {
            assert_eq!(
                r[h].1.to_bits(),
                l.to_bits(),
                "{what} row {row}: the quad's sums"
            );
            assert_eq!(
                r[h].2.to_bits(),
                max.to_bits(),
                "{what} row {row}: the quad's max"
            );
        }
        let visible: Vec<usize> = (0..c.keys()).filter(|&k| c.visible(row, k)).collect();
        if c.q_scale[row].is_nan() && !visible.is_empty() {
            assert!(
                (o / f64::from(l)).is_nan(),
                "{what} row {row}: a NaN row gave {o} / {l}"
            );
            continue;
        }
        if visible.is_empty() {
            assert_eq!((o, l), (0.0, 0.0), "{what} row {row}: no key visible");
            continue;
        }
        let scores: Vec<f64> = visible
            .iter()
            .map(|&k| f64::from(c.score(row, k)))
            .collect();
        let values: Vec<f64> = visible.iter().map(|&k| f64::from(c.v[k])).collect();
        let want = softmax_ref::row_softmax(&scores, &values);
        softmax_ref::assert_average(o / f64::from(l), &want, &format!("{what} row {row}"));
        let (top, sum_w) = (want.top, want.sum_w);
        // The row sum, in the unit 2^p_scale_log2 against the final reference max.
        let l_want = sum_w * (top - f64::from(max) + f64::from(c.p_scale_log2)).exp2();
        assert!(
            (f64::from(l) - l_want).abs() <= 2e-5 * l_want,
            "{what} row {row}: sum {l} against {l_want}"
        );
        if c.per_tile {
            // The lazy max stays within its slack of the true one, never above it.
            assert!(
                f64::from(max) <= top && top - f64::from(max) <= f64::from(LAZY_MAX_SLACK) + 1e-3,
                "{what} row {row}: reference max {max} against {top}"
            );
        } else if c.lagging {
            // Tiles kept on the lagging max leave it up to 2^14 below their probabilities.
            assert!(
                f64::from(max) <= top && top - f64::from(max) <= 14.0 + 1e-3,
                "{what} row {row}: lagging max {max} against {top}"
            );
        } else {
            assert_eq!(f64::from(max), top, "{what} row {row}: running max");
        }
    }
    counts[0]
}

#[test]
fn online_softmax_of_a_warp_equals_the_softmax() {
    let mut rng = common::fresh_rng("softmax16");
    let (mut cases, mut counts) = (0, [0usize; 3]);
    for per_tile in [true, false] {
        for nk in [8, 16] {
            for i in 0..40 {
                let mut c = random_case(&mut rng, nk, per_tile);
                if i % 8 == 0 {
                    // A NaN Q scale in one row (as a NaN in Q gives), with keys visible to it.
                    c.causal = false;
                    c.q_scale[5] = f32::NAN;
                }
                if i % 8 == 1 {
                    // Causal with qo_len = kv_len + 24 and the warp at row 0: rows 0..24 see no
                    // key, so this warp's 16 rows see none and the next warp's (row0 = 16) some.
                    c.causal = true;
                    c.qo_len = c.kv_len + 24;
                    c.row0 = 16 * (i / 8 % 2);
                }
                let what = format!(
                    "case {i} (per_tile {per_tile}, lagging {}, NK {nk}, tiles {}, kv {}, qo {}, \
                     row0 {}, causal {}, unit 2^{})",
                    c.lagging, c.tiles, c.kv_len, c.qo_len, c.row0, c.causal, c.p_scale_log2
                );
                let n = check_case(&c, &what);
                (0..3).for_each(|k| counts[k] += n[k]);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 160);
    eprintln!(
        "lagging max: tiles kept {}, retried {}, held back {}",
        counts[0], counts[1], counts[2]
    );
    assert!(
        counts.iter().all(|&n| n > 0),
        "every path of the lagging max taken: {counts:?}"
    );
}
