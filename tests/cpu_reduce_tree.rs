//! The device's row-max trees (`kernels-gpu/src/reduce.rs`) give the running fold's value. The
//! device source itself is compiled here for the host (with its `unroll.rs`), so this checks the
//! code the kernels run, not a model of it: for every length 1 to 32 that `tree_max` takes, on
//! fresh random scores with ties, ±0, −∞ and NaN mixed in, it must equal
//! `fold(−∞, f32::max)` exactly, except where every element is NaN (then NaN, which the callers'
//! `(−∞).max(..)` turns back into the fold's −∞, also checked). `acc_row_max` must equal the fold
//! over the lane's two scores of row `h` in n-tiles `first..first + N`, for the shapes the
//! softmax calls it with (N = NK and N = 8 at `first` = 0 and 8).
//!
//! Zero's sign is not compared (`==`): maxnum may return either zero, and no exponential sees the
//! difference.

mod common;

#[path = "../kernels-gpu/src/unroll.rs"]
mod unroll;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/reduce.rs"]
mod reduce;

use rand::rngs::StdRng;
use rand::Rng;
use reduce::{acc_row_max, tree_max};

fn fold_max(v: &[f32]) -> f32 {
    v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// A score: mostly normal, with small integers (ties), ±0, −∞ (masked keys) and NaN mixed in.
fn score(rng: &mut StdRng, nan_share: f64) -> f32 {
    if rng.gen_bool(nan_share) {
        return f32::NAN;
    }
    match rng.gen_range(0..10) {
        0 => f32::NEG_INFINITY,
        1 => 0.0,
        2 => -0.0,
        3 | 4 => rng.gen_range(-3i32..=3) as f32,
        _ => rng.gen_range(-40.0f32..40.0),
    }
}

/// Both are the same number, or both NaN (`==` leaves the sign of zero out).
fn same(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn check_tree<const N: usize>(rng: &mut StdRng) {
    for trial in 0..2000 {
        // Every fourth trial is all NaN or all −∞; the others mix NaN in at 0, 10 or 60%.
        let v: [f32; N] = match trial % 8 {
            0 => [f32::NAN; N],
            4 => [f32::NEG_INFINITY; N],
            t => {
                let share = [0.0, 0.1, 0.6][t % 3];
                std::array::from_fn(|_| score(rng, share))
            }
        };
        let tree = tree_max(v);
        let fold = fold_max(&v);
        if v.iter().all(|x| x.is_nan()) {
            assert!(tree.is_nan(), "N = {N}: all NaN gave {tree}, not NaN");
            assert_eq!(
                f32::NEG_INFINITY.max(tree),
                fold,
                "N = {N}: the callers' −∞ guard"
            );
        } else {
            assert!(
                same(tree, fold),
                "N = {N}: tree {tree} against fold {fold} on {v:?}"
            );
        }
    }
}

#[test]
fn tree_max_equals_the_fold_for_every_length() {
    let mut rng = common::fresh_rng("tree_max");
    seq_macro::seq!(N in 1..=32 {
        check_tree::<N>(&mut rng);
    });
}

/// The fold of the old code: row `h`'s two scores of each n-tile in `first..first + n`.
fn fold_row<const NK: usize>(s: &[[f32; 4]; NK], h: usize, first: usize, n: usize) -> f32 {
    let row: Vec<f32> = s[first..first + n]
        .iter()
        .flat_map(|t| [t[2 * h], t[2 * h + 1]])
        .collect();
    fold_max(&row)
}

fn check_rows<const N: usize, const NK: usize>(rng: &mut StdRng, first: usize) {
    for trial in 0..2000 {
        let share = [0.0, 0.05, 0.5][trial % 3];
        let mut s: [[f32; 4]; NK] =
            std::array::from_fn(|_| std::array::from_fn(|_| score(rng, share)));
        if trial % 7 == 0 {
            // One row entirely NaN, the other untouched: the rows must not mix.
            let h = rng.gen_range(0..2);
            for t in s.iter_mut() {
                t[2 * h] = f32::NAN;
                t[2 * h + 1] = f32::NAN;
            }
        }
        for h in 0..2 {
            let tree = acc_row_max::<N, NK>(&s, h, first);
            let fold = fold_row(&s, h, first, N);
            let guarded = f32::NEG_INFINITY.max(tree);
            assert!(
                same(guarded, fold),
                "N = {N}, NK = {NK}, first = {first}, row {h}: tree {tree} against fold {fold}"
            );
            let all_nan = s[first..first + N]
                .iter()
                .all(|t| t[2 * h].is_nan() && t[2 * h + 1].is_nan());
            if !all_nan {
                assert!(
                    same(tree, fold),
                    "N = {N}, NK = {NK}, row {h}: unguarded tree {tree}"
                );
            }
        }
    }
}

#[test]
fn acc_row_max_equals_the_fold_over_the_row() {
    let mut rng = common::fresh_rng("acc_row_max");
    // The whole tile (the masked path: 64- and 128-key tiles of 8-column n-tiles).
    check_rows::<8, 8>(&mut rng, 0);
    check_rows::<16, 16>(&mut rng, 0);
    // The unscaled path's halves of a 128-key tile.
    check_rows::<8, 16>(&mut rng, 0);
    check_rows::<8, 16>(&mut rng, 8);
    // Other lengths, off the start.
    check_rows::<3, 16>(&mut rng, 5);
    check_rows::<13, 16>(&mut rng, 3);
}
