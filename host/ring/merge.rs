//! The LSE merge: two attentions of the same queries over disjoint key sets, each given as its
//! normalised output `o` and log-sum-exp `lse` (natural log), combine into the attention over the
//! union:
//!
//! ```text
//! m   = max(lse_a, lse_b)
//! w_a = e^(lse_a - m),  w_b = e^(lse_b - m)          (one of them is 1)
//! o   = o_a · w_a / (w_a + w_b) + o_b · w_b / (w_a + w_b)
//! lse = m + ln(w_a + w_b)
//! ```
//!
//! A convex combination with weights in [0, 1]: no overflow whatever the LSE magnitudes. A row with
//! `lse = -inf` saw no key and is the identity (its `o` is ignored, whatever it holds); a NaN LSE
//! on either side makes the row NaN (a NaN in a key the row sees poisons it, as in one call).
//! The merge is exactly commutative (same bits either way) and associative up to rounding.

use std::ops::{Add, Div, Mul, Range, Sub};

/// The float types the merge runs in: f64 for the CPU reference, f32 for GPU partials.
pub trait MergeFloat:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Send
    + Sync
    + 'static
{
    /// `-inf`: the LSE of a row without keys.
    const NEG_INFINITY: Self;
    /// 0.
    const ZERO: Self;
    /// NaN.
    const NAN: Self;
    /// `e^x`.
    fn exp(self) -> Self;
    /// Natural log.
    fn ln(self) -> Self;
    /// Whether NaN.
    fn is_nan(self) -> bool;
}

macro_rules! merge_float {
    ($t:ty) => {
        impl MergeFloat for $t {
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const ZERO: Self = 0.0;
            const NAN: Self = <$t>::NAN;
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
merge_float!(f32);
merge_float!(f64);

/// Merges one row's partial `(o, lse)` into the running `(acc_o, acc_lse)`.
///
/// # Panics
/// If `acc_o` and `o` differ in length.
pub fn merge_row<F: MergeFloat>(acc_o: &mut [F], acc_lse: &mut F, o: &[F], lse: F) {
    assert_eq!(acc_o.len(), o.len(), "merge_row: rows of different widths");
    if acc_lse.is_nan() || lse.is_nan() {
        acc_o.fill(F::NAN);
        *acc_lse = F::NAN;
    } else if lse == F::NEG_INFINITY {
        // The partial saw no key: nothing to add.
    } else if *acc_lse == F::NEG_INFINITY {
        acc_o.copy_from_slice(o);
        *acc_lse = lse;
    } else {
        let m = if lse > *acc_lse { lse } else { *acc_lse };
        let (wa, wb) = ((*acc_lse - m).exp(), (lse - m).exp());
        let sum = wa + wb;
        let (fa, fb) = (wa / sum, wb / sum);
        for (acc, &x) in acc_o.iter_mut().zip(o) {
            *acc = *acc * fa + x * fb;
        }
        *acc_lse = m + sum.ln();
    }
}

/// Merges two whole partials (`o`: rows × `width`, `lse`: rows) into a new one.
///
/// # Panics
/// If the shapes disagree.
pub fn merge_partials<F: MergeFloat>(
    a: (&[F], &[F]),
    b: (&[F], &[F]),
    width: usize,
) -> (Vec<F>, Vec<F>) {
    assert!(
        a.0.len() == b.0.len() && a.1.len() == b.1.len() && a.0.len() == a.1.len() * width,
        "merge_partials: shapes disagree"
    );
    let (mut o, mut lse) = (a.0.to_vec(), a.1.to_vec());
    for (row, l) in lse.iter_mut().enumerate() {
        let cols = row * width..(row + 1) * width;
        merge_row(&mut o[cols.clone()], l, &b.0[cols], b.1[row]);
    }
    (o, lse)
}

/// A rank's running result for its Q shard: `o` `[batch][heads][rows][width]` and `lse`
/// `[batch][heads][rows]`, starting as "no key seen" (0 and `-inf`), merged block by block.
#[derive(Clone, Debug, PartialEq)]
pub struct Accumulator<F> {
    /// Output rows, `[batch][heads][rows][width]`.
    pub o: Vec<F>,
    /// LSE per row, `[batch][heads][rows]`.
    pub lse: Vec<F>,
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Rows of the shard.
    pub rows: usize,
    /// Channels per row (head_dim).
    pub width: usize,
}

impl<F: MergeFloat> Accumulator<F> {
    /// All rows without keys.
    pub fn new(batch: usize, heads: usize, rows: usize, width: usize) -> Self {
        Accumulator {
            o: vec![F::ZERO; batch * heads * rows * width],
            lse: vec![F::NEG_INFINITY; batch * heads * rows],
            batch,
            heads,
            rows,
            width,
        }
    }

    /// Merges the partial result of rows `rows` of the shard: `o` `[batch][heads][rows.len()][width]`
    /// and `lse` `[batch][heads][rows.len()]` (a call's output and LSE).
    ///
    /// # Panics
    /// If the sizes disagree or the rows pass the shard's end.
    pub fn merge_block(&mut self, rows: Range<usize>, o: &[F], lse: &[F]) {
        let (len, w) = (rows.len(), self.width);
        assert!(
            rows.end <= self.rows,
            "rows {rows:?} past the shard's {}",
            self.rows
        );
        assert_eq!(lse.len(), self.batch * self.heads * len, "partial LSE size");
        assert_eq!(o.len(), lse.len() * w, "partial output size");
        for bh in 0..self.batch * self.heads {
            for i in 0..len {
                let (src, dst) = (bh * len + i, bh * self.rows + rows.start + i);
                merge_row(
                    &mut self.o[dst * w..(dst + 1) * w],
                    &mut self.lse[dst],
                    &o[src * w..(src + 1) * w],
                    lse[src],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_rows_are_the_identity_and_nan_poisons() {
        let (mut o, mut lse) = (vec![0.0, 0.0], f64::NEG_INFINITY);
        merge_row(&mut o, &mut lse, &[f64::NAN, 7.0], f64::NEG_INFINITY);
        assert_eq!((o.clone(), lse), (vec![0.0, 0.0], f64::NEG_INFINITY));
        merge_row(&mut o, &mut lse, &[1.0, 2.0], 0.5);
        assert_eq!((o.clone(), lse), (vec![1.0, 2.0], 0.5));
        merge_row(&mut o, &mut lse, &[3.0, 4.0], 0.5);
        assert_eq!(o, [2.0, 3.0]);
        assert!((lse - (0.5 + 2f64.ln())).abs() < 1e-15);
        merge_row(&mut o, &mut lse, &[0.0, 0.0], f64::NAN);
        assert!(o.iter().all(|x| x.is_nan()) && lse.is_nan());
    }

    #[test]
    fn huge_lse_gaps_do_not_overflow() {
        let (mut o, mut lse) = (vec![1.0f32], 1.0e30f32);
        merge_row(&mut o, &mut lse, &[5.0], -1.0e30);
        assert_eq!((o[0], lse), (1.0, 1.0e30));
    }
}
