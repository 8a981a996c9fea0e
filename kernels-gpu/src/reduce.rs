//! Balanced reductions over register arrays. LLVM does not reassociate `f32::max` (maxnum), so a
//! max taken as a running fold stays a chain of N dependent `max.f32` (SASS `FMNMX`) all the way
//! to ptxas; these helpers take the same max as a pairwise tree, ⌈log2 N⌉ deep.

use crate::unroll::unroll;

/// The max of `v` (`f32::max` pairwise, a balanced tree: N − 1 maxes, ⌈log2 N⌉ deep). `N` must be
/// 1 to 32.
///
/// Equal to the fold `v.iter().fold(f32::NEG_INFINITY, f32::max)` unless every element is NaN:
/// maxnum drops a NaN operand, so both give the largest non-NaN element (when any), but where
/// all are NaN the tree gives NaN and the fold −∞. Callers that need the fold's −∞ there take
/// `f32::NEG_INFINITY.max(..)` of the result (one more max, after the tree).
#[inline(always)]
pub(crate) fn tree_max<const N: usize>(mut v: [f32; N]) -> f32 {
    const { assert!(N >= 1 && N <= 32, "tree_max takes 1 to 32 values") };
    // Each level folds the upper part of the `n` live values onto the lower `⌈n/2⌉`; `n` is a
    // constant after unrolling, so every index is too.
    let mut n = N;
    unroll::<5>(
        #[inline(always)]
        |_| {
            let w = n.div_ceil(2);
            unroll::<16>(
                #[inline(always)]
                |i| {
                    if i + w < n {
                        v[i] = v[i].max(v[i + w]);
                    }
                },
            );
            n = w;
        },
    );
    v[0]
}

/// The max of row `h`'s scores in the `N` n-tiles `first..first + N` of an mma accumulator tile
/// (elements `2h`, `2h + 1` of each n-tile: the lane's part of the row), as a tree
/// ([`tree_max`], with its NaN caveat): one max per n-tile, then ⌈log2 N⌉ levels.
#[inline(always)]
pub(crate) fn acc_row_max<const N: usize, const NK: usize>(
    s: &[[f32; 4]; NK],
    h: usize,
    first: usize,
) -> f32 {
    let mut pair = [0.0f32; N];
    unroll::<N>(
        #[inline(always)]
        |j| pair[j] = s[first + j][2 * h].max(s[first + j][2 * h + 1]),
    );
    tree_max(pair)
}
