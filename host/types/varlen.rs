//! The sequences of a variable-length (packed) batch: `cu_seqlens` prefix sums checked into row
//! ranges. Pure host code, shared by the varlen call (`crate::varlen`) and the CPU reference
//! (`crate::reference::attention_varlen`), so both read `cu_seqlens` by the same rules.
//!
//! The rules, each with its own [`Error`]: `cu_seqlens` has `batch + 1` entries with
//! `1 <= batch <= MAX_VARLEN_BATCH` ([`Error::SeqlensBatch`]); Q's and K's describe the same batch
//! ([`Error::SeqlensBatchMismatch`]); the first entry is 0 ([`Error::SeqlensFirst`]); the entries
//! never decrease ([`Error::SeqlensNotMonotone`]; equal neighbours, i.e. empty sequences, are
//! allowed); the last entry is the packed tensor's row count ([`Error::SeqlensTotal`]); no
//! sequence is longer than the `max_seqlen` given ([`Error::SeqlenAboveMax`]).

use std::ops::Range;

use super::error::{Error, Result};

/// Most sequences in one varlen call: CUDA's grid y/z limit, the bound a fused kernel with one
/// grid row per sequence will have (the batched call's batch limit is the same).
pub const MAX_VARLEN_BATCH: usize = 65_535;

/// One sequence of a packed batch: its query rows and its key/value rows in the packed tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarlenSequence {
    /// Rows of the packed Q (and of the packed output and LSE).
    pub q: Range<usize>,
    /// Rows of the packed K and V.
    pub k: Range<usize>,
}

/// The checked sequences of a packed batch (see the module's rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarlenBatch {
    sequences: Vec<VarlenSequence>,
    total_q: usize,
    total_k: usize,
}

impl VarlenBatch {
    /// Checks `cu_seqlens_q` against a packed Q of `total_q` rows and sequences of at most
    /// `max_seqlen_q` rows, `cu_seqlens_k` likewise against K, and that both describe the same
    /// number of sequences. Errors in that order: Q's prefix sums, K's, then the batch sizes.
    pub fn new(
        cu_seqlens_q: &[i32],
        cu_seqlens_k: &[i32],
        (total_q, total_k): (usize, usize),
        (max_seqlen_q, max_seqlen_k): (usize, usize),
    ) -> Result<Self> {
        let q = row_ranges("cu_seqlens_q", "q", cu_seqlens_q, total_q, max_seqlen_q)?;
        let k = row_ranges("cu_seqlens_k", "k", cu_seqlens_k, total_k, max_seqlen_k)?;
        if q.len() != k.len() {
            return Err(Error::SeqlensBatchMismatch {
                q_batch: q.len(),
                k_batch: k.len(),
            });
        }
        let sequences = q
            .into_iter()
            .zip(k)
            .map(|(q, k)| VarlenSequence { q, k })
            .collect();
        Ok(VarlenBatch {
            sequences,
            total_q,
            total_k,
        })
    }

    /// The sequences, in order.
    pub fn sequences(&self) -> &[VarlenSequence] {
        &self.sequences
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.sequences.len()
    }

    /// Rows of the packed Q (the last entry of `cu_seqlens_q`).
    pub fn total_q(&self) -> usize {
        self.total_q
    }

    /// Rows of the packed K and V (the last entry of `cu_seqlens_k`).
    pub fn total_k(&self) -> usize {
        self.total_k
    }

    /// The longest query sequence (0 when all are empty).
    pub fn longest_q(&self) -> usize {
        self.sequences.iter().map(|s| s.q.len()).max().unwrap_or(0)
    }
}

/// The row range of every sequence that `cu` (named `tensor`) describes in a packed tensor
/// (named `packed`) of `total` rows, each at most `max` long.
fn row_ranges(
    tensor: &'static str,
    packed: &'static str,
    cu: &[i32],
    total: usize,
    max: usize,
) -> Result<Vec<Range<usize>>> {
    let batch = cu.len().saturating_sub(1);
    if batch == 0 || batch > MAX_VARLEN_BATCH {
        return Err(Error::SeqlensBatch {
            tensor,
            len: cu.len(),
            batch,
            max: MAX_VARLEN_BATCH,
        });
    }
    if cu[0] != 0 {
        return Err(Error::SeqlensFirst {
            tensor,
            first: cu[0],
        });
    }
    let mut ranges = Vec::with_capacity(batch);
    for (index, pair) in cu.windows(2).enumerate() {
        let (prev, next) = (pair[0], pair[1]);
        if next < prev {
            return Err(Error::SeqlensNotMonotone {
                tensor,
                index: index + 1,
                prev,
                next,
            });
        }
        // Both are >= 0 here (the first entry is 0 and none decreases), so the casts are exact.
        let range = prev as usize..next as usize;
        if range.len() > max {
            return Err(Error::SeqlenAboveMax {
                tensor,
                index,
                len: range.len(),
                max,
            });
        }
        ranges.push(range);
    }
    let last = cu[batch];
    if last as usize != total {
        return Err(Error::SeqlensTotal {
            tensor,
            packed,
            last,
            total,
        });
    }
    Ok(ranges)
}
