//! What every reference shares: its options ([`RefOptions`]), its output ([`RefOutput`]), the
//! causal mask ([`visible_key_count`]) and the checked problem sizes with a parallel driver over
//! output rows (`Dims`, `RowTask`).

use rayon::prelude::*;

use super::host_tensor::HostTensor;

/// Options of the reference attention.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RefOptions {
    /// Bottom-right aligned causal mask: query `i` sees key `j` iff `j <= i + kv_len - qo_len`.
    pub causal: bool,
    /// Softmax scale applied to `q · k`; `None` means `1 / sqrt(head_dim)` (see
    /// [`RefOptions::sm_scale_for`]).
    pub sm_scale: Option<f32>,
}

impl RefOptions {
    /// The softmax scale in effect for `head_dim`: the explicit one, or `1 / sqrt(head_dim)` computed
    /// in `f32` (the value the GPU path uses, so both references and the GPU agree on it).
    pub fn sm_scale_for(&self, head_dim: usize) -> f32 {
        self.sm_scale
            .unwrap_or_else(|| 1.0 / (head_dim as f32).sqrt())
    }
}

/// Result of a reference attention.
#[derive(Clone, Debug, PartialEq)]
pub struct RefOutput {
    /// Output, contiguous `[batch][q_heads][qo_len][head_dim]`.
    pub o: Vec<f64>,
    /// Log-sum-exp of the scaled scores (natural log), contiguous `[batch][q_heads][qo_len]`;
    /// `-inf` for rows that see no key.
    pub lse: Vec<f64>,
    /// Batch size.
    pub batch: usize,
    /// Number of query heads.
    pub q_heads: usize,
    /// Number of query rows per head.
    pub qo_len: usize,
    /// Channels per output row (the head dim of V, equal to that of Q and K).
    pub head_dim: usize,
}

impl RefOutput {
    /// Index of row `(b, h, i)` in [`RefOutput::lse`] (times `head_dim` for [`RefOutput::o`]).
    fn row_index(&self, b: usize, h: usize, i: usize) -> usize {
        assert!(
            b < self.batch && h < self.q_heads && i < self.qo_len,
            "RefOutput row (b={b}, h={h}, i={i}) out of range (batch={}, q_heads={}, qo_len={})",
            self.batch,
            self.q_heads,
            self.qo_len
        );
        (b * self.q_heads + h) * self.qo_len + i
    }

    /// The `head_dim` output values of row `(b, h, i)`.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn o_row(&self, b: usize, h: usize, i: usize) -> &[f64] {
        let start = self.row_index(b, h, i) * self.head_dim;
        &self.o[start..start + self.head_dim]
    }

    /// The LSE of row `(b, h, i)` (natural log).
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn lse_at(&self, b: usize, h: usize, i: usize) -> f64 {
        self.lse[self.row_index(b, h, i)]
    }
}

/// Number of keys query row `query` may see: all `kv_len` keys without masking, otherwise the keys
/// `j <= query + kv_len - qo_len` (bottom-right aligned causal mask), i.e. a prefix `0..count`.
pub fn visible_key_count(query: usize, qo_len: usize, kv_len: usize, causal: bool) -> usize {
    if !causal {
        return kv_len;
    }
    // Last visible key is `query + kv_len - qo_len`; the count is one more, clamped to [0, kv_len].
    // Written without subtraction of unsigned values so that `qo_len > kv_len` cannot underflow.
    (query + kv_len + 1).saturating_sub(qo_len).min(kv_len)
}

/// Validated problem sizes shared by the reference functions.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub(super) batch: usize,
    pub(super) q_heads: usize,
    pub(super) kv_heads: usize,
    pub(super) qo_len: usize,
    pub(super) kv_len: usize,
    pub(super) head_dim: usize,
}

impl Dims {
    /// Check that `q`, `k` and `v` describe one attention problem; panics with a clear message if not.
    pub(super) fn of(q: &HostTensor, k: &HostTensor, v: &HostTensor) -> Self {
        let [batch, q_heads, qo_len, head_dim] = q.shape;
        let [k_batch, kv_heads, kv_len, k_dim] = k.shape;
        assert_eq!(
            k.shape, v.shape,
            "K and V must have the same shape (K {:?}, V {:?})",
            k.shape, v.shape
        );
        assert_eq!(
            batch, k_batch,
            "Q and K must have the same batch size (Q {:?}, K {:?})",
            q.shape, k.shape
        );
        assert_eq!(
            head_dim, k_dim,
            "Q and K must have the same head_dim (Q {:?}, K {:?})",
            q.shape, k.shape
        );
        assert!(head_dim > 0, "head_dim must be positive");
        assert!(
            kv_heads > 0 && q_heads % kv_heads == 0,
            "query heads ({q_heads}) must be a positive multiple of kv heads ({kv_heads})"
        );
        Self {
            batch,
            q_heads,
            kv_heads,
            qo_len,
            kv_len,
            head_dim,
        }
    }

    /// Wrap finished output buffers with this problem's shape information.
    pub(super) fn output(&self, o: Vec<f64>, lse: Vec<f64>) -> RefOutput {
        RefOutput {
            o,
            lse,
            batch: self.batch,
            q_heads: self.q_heads,
            qo_len: self.qo_len,
            head_dim: self.head_dim,
        }
    }

    /// `(batch, query head, kv head, query row)` of flat output row `row`.
    pub(super) fn split_row(&self, row: usize) -> (usize, usize, usize, usize) {
        let i = row % self.qo_len;
        let h = (row / self.qo_len) % self.q_heads;
        let b = row / (self.qo_len * self.q_heads);
        let kv_head = h / (self.q_heads / self.kv_heads);
        (b, h, kv_head, i)
    }

    /// Offset of key/value row `(b, kv_head, j)` in a contiguous `[b][kv_heads][kv_len][d]` buffer.
    pub(super) fn kv_offset(&self, b: usize, kv_head: usize, j: usize) -> usize {
        ((b * self.kv_heads + kv_head) * self.kv_len + j) * self.head_dim
    }

    /// Run `row_fn` on every output row in parallel (rayon, one task per (batch, head, query row));
    /// rows that see no key keep 0 / `-inf` and never reach `row_fn`.
    pub(super) fn for_each_row(
        &self,
        causal: bool,
        row_fn: impl Fn(RowTask<'_>) + Sync + Send,
    ) -> RefOutput {
        let rows = self.batch * self.q_heads * self.qo_len;
        let mut o = vec![0.0_f64; rows * self.head_dim];
        let mut lse = vec![f64::NEG_INFINITY; rows];
        o.par_chunks_mut(self.head_dim)
            .zip(lse.par_iter_mut())
            .enumerate()
            .for_each(|(row, (o_row, lse_out))| {
                let (b, h, kv_head, i) = self.split_row(row);
                let visible = visible_key_count(i, self.qo_len, self.kv_len, causal);
                if visible == 0 {
                    // Already 0 and -inf: a row that sees no key has no softmax to normalise.
                    return;
                }
                row_fn(RowTask {
                    b,
                    h,
                    kv_head,
                    i,
                    visible,
                    o_row,
                    lse: lse_out,
                });
            });
        self.output(o, lse)
    }
}

/// One output row handed to a row kernel by [`Dims::for_each_row`].
pub(super) struct RowTask<'a> {
    pub(super) b: usize,
    pub(super) h: usize,
    pub(super) kv_head: usize,
    pub(super) i: usize,
    /// Keys `0..visible` are visible (at least one).
    pub(super) visible: usize,
    pub(super) o_row: &'a mut [f64],
    pub(super) lse: &'a mut f64,
}
