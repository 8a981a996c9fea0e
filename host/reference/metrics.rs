//! NaN-aware error metrics of an output against a reference: [`compare`], [`compare_f64`].

/// Error metrics of an output against a reference (see [`compare`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// Cosine similarity `Σab / sqrt(Σa² Σb²)` over the compared positions; 1 when both sides are
    /// all zero, 0 when exactly one side is.
    pub cos_sim: f64,
    /// Relative L1 error `Σ|a - b| / Σ|b|`; 0 when both sums are 0, `inf` when only `Σ|b|` is.
    pub rel_l1: f64,
    /// Root mean square of `a - b` over the compared positions (0 when none).
    pub rmse: f64,
    /// Largest `|a - b|` over the compared positions.
    pub max_abs: f64,
    /// Positions where exactly one side is NaN, or more generally where the two sides disagree about
    /// a non-finite value (an infinity against a finite value, or infinities of opposite sign).
    /// These positions are excluded from the sums.
    pub n_nan_mismatch: usize,
    /// Positions where both sides are finite and entered the sums. Positions where both sides are
    /// NaN, or the same infinity, count as equal and are excluded.
    pub n_compared: usize,
}

/// Compare a GPU output (converted to `f32`) with a reference, NaN-aware.
///
/// Positions where both values are NaN (or the same infinity, e.g. `-inf` LSE of empty rows) are
/// equal and skipped; positions where only one side is non-finite are counted in
/// [`Metrics::n_nan_mismatch`] and skipped; the metrics are computed over the remaining positions.
///
/// # Panics
/// If the slices have different lengths.
pub fn compare(out: &[f32], reference: &[f64]) -> Metrics {
    assert_eq!(
        out.len(),
        reference.len(),
        "compare: output and reference lengths differ"
    );
    metrics(
        out.iter()
            .map(|&a| f64::from(a))
            .zip(reference.iter().copied()),
    )
}

/// [`compare`] for an `f64` output, e.g. [`attention_quantized_emulation`](super::attention_quantized_emulation) against
/// [`attention_f64`](super::attention_f64).
///
/// # Panics
/// If the slices have different lengths.
pub fn compare_f64(out: &[f64], reference: &[f64]) -> Metrics {
    assert_eq!(
        out.len(),
        reference.len(),
        "compare_f64: output and reference lengths differ"
    );
    metrics(out.iter().copied().zip(reference.iter().copied()))
}

/// Shared body of [`compare`] and [`compare_f64`] over `(output, reference)` pairs.
fn metrics(pairs: impl Iterator<Item = (f64, f64)>) -> Metrics {
    let (mut dot_ab, mut norm_a, mut norm_b) = (0.0_f64, 0.0_f64, 0.0_f64);
    let (mut abs_diff, mut abs_ref, mut sq_diff, mut max_abs) =
        (0.0_f64, 0.0_f64, 0.0_f64, 0.0_f64);
    let (mut n_nan_mismatch, mut n_compared) = (0_usize, 0_usize);
    for (a, b) in pairs {
        if !(a.is_finite() && b.is_finite()) {
            let both_nan = a.is_nan() && b.is_nan();
            // `a == b` here means the same infinity on both sides.
            if !(both_nan || a == b) {
                n_nan_mismatch += 1;
            }
            continue;
        }
        let diff = (a - b).abs();
        dot_ab += a * b;
        norm_a += a * a;
        norm_b += b * b;
        abs_diff += diff;
        abs_ref += b.abs();
        sq_diff += diff * diff;
        max_abs = max_abs.max(diff);
        n_compared += 1;
    }
    let cos_sim = match (norm_a == 0.0, norm_b == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) => dot_ab / (norm_a.sqrt() * norm_b.sqrt()),
    };
    let rel_l1 = if abs_ref > 0.0 {
        abs_diff / abs_ref
    } else if abs_diff == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    let rmse = if n_compared > 0 {
        (sq_diff / n_compared as f64).sqrt()
    } else {
        0.0
    };
    Metrics {
        cos_sim,
        rel_l1,
        rmse,
        max_abs,
        n_nan_mismatch,
        n_compared,
    }
}
