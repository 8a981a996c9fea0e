//! The f64 softmax that the host warp tests hold the device's online softmaxes to.
#![allow(dead_code)]

/// A row's softmax over its visible keys (scores in log2 units).
pub struct RowSoftmax {
    /// The largest score.
    pub top: f64,
    /// `Σ 2^(s − top)`.
    pub sum_w: f64,
    /// The softmax-weighted average of the values.
    pub average: f64,
    /// The same of their magnitudes (the scale of the tolerance).
    pub magnitude: f64,
}

/// The softmax of `scores` applied to `values` (one per visible key).
pub fn row_softmax(scores: &[f64], values: &[f64]) -> RowSoftmax {
    let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - top).exp2()).collect();
    let sum_w: f64 = w.iter().sum();
    let weighted = |f: fn(f64) -> f64| -> f64 {
        w.iter().zip(values).map(|(w, v)| f(w * v)).sum::<f64>() / sum_w
    };
    RowSoftmax {
        top,
        sum_w,
        average: weighted(|x| x),
        magnitude: weighted(f64::abs),
    }
}

/// Asserts that a row's `O / l` is the softmax average within `2e-5` of its magnitude (f32
/// arithmetic over a few dozen tiles).
pub fn assert_average(got: f64, want: &RowSoftmax, what: &str) {
    assert!(
        (got - want.average).abs() <= 2e-5 * want.magnitude + 1e-30,
        "{what}: O {got} against {} (scale {})",
        want.average,
        want.magnitude
    );
}
