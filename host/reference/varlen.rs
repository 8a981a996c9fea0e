//! The references of a variable-length (packed) batch: each sequence is cut out of the packed
//! tensors and run through a batched reference on its own, so the varlen references hold no
//! attention arithmetic of their own.

use super::emulation::attention_quantized_emulation;
use super::exact::attention_f64;
use super::host_tensor::HostTensor;
use super::rows::{RefOptions, RefOutput};
use crate::types::varlen::VarlenBatch;

/// Runs `per_sequence` on every sequence of a packed batch and packs the results.
///
/// `q` is the packed `[total_q, q_heads, head_dim]` as the logical shape
/// `[1, q_heads, total_q, head_dim]` (any strides), `k` and `v` likewise with `total_k` rows;
/// `cu_seqlens` are Q's and K's `batch + 1` prefix sums (the rules of
/// [`VarlenBatch`](crate::varlen::VarlenBatch)). `per_sequence` gets one sequence's Q, K and V,
/// each `[1, heads, len, head_dim]`, and returns its batched reference (e.g. a closure calling
/// [`attention_pv8_emulation`](super::attention_pv8_emulation)).
///
/// The result has batch 1 and `qo_len = total_q`: `o` is `[1][q_heads][total_q][head_dim]`, `lse`
/// `[1][q_heads][total_q]`. Sequences without queries add nothing; the query rows of a sequence
/// without keys are 0 with LSE `-inf`, as rows that see no key are in every reference.
///
/// # Panics
/// If a packed tensor has batch ≠ 1, if the prefix sums break a rule (the message is the
/// library's error), or if the shapes are inconsistent as for the batched references.
pub fn attention_varlen(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    (cu_seqlens_q, cu_seqlens_k): (&[i32], &[i32]),
    per_sequence: impl Fn(&HostTensor, &HostTensor, &HostTensor) -> RefOutput,
) -> RefOutput {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        assert_eq!(
            t.batch(),
            1,
            "packed `{name}` must have batch 1 (shape {:?})",
            t.shape
        );
    }
    let batch = VarlenBatch::new(
        cu_seqlens_q,
        cu_seqlens_k,
        (q.seq(), k.seq()),
        (usize::MAX, usize::MAX),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let [_, q_heads, total_q, head_dim] = q.shape;
    let mut o = vec![0.0; q_heads * total_q * head_dim];
    let mut lse = vec![f64::NEG_INFINITY; q_heads * total_q];
    for seq in batch.sequences() {
        if seq.q.is_empty() || seq.k.is_empty() {
            continue;
        }
        let part = per_sequence(
            &q.rows(seq.q.start, seq.q.len()),
            &k.rows(seq.k.start, seq.k.len()),
            &v.rows(seq.k.start, seq.k.len()),
        );
        for h in 0..q_heads {
            for i in 0..seq.q.len() {
                let row = h * total_q + seq.q.start + i;
                o[row * head_dim..(row + 1) * head_dim].copy_from_slice(part.o_row(0, h, i));
                lse[row] = part.lse_at(0, h, i);
            }
        }
    }
    RefOutput {
        o,
        lse,
        batch: 1,
        q_heads,
        qo_len: total_q,
        head_dim,
    }
}

/// [`attention_f64`] per sequence of a packed batch (see [`attention_varlen`]).
pub fn attention_varlen_f64(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    cu_seqlens: (&[i32], &[i32]),
    opts: &RefOptions,
) -> RefOutput {
    attention_varlen(q, k, v, cu_seqlens, |q, k, v| attention_f64(q, k, v, opts))
}

/// [`attention_quantized_emulation`] per sequence of a packed batch (see [`attention_varlen`]):
/// K's mean and the quantization blocks are per sequence, as the GPU's varlen call computes them,
/// so the quantized Q and K are bit-exact with the GPU's.
pub fn attention_varlen_quantized_emulation(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    cu_seqlens: (&[i32], &[i32]),
    opts: &RefOptions,
    smooth_k: bool,
    pv_f16_accum: bool,
) -> RefOutput {
    attention_varlen(q, k, v, cu_seqlens, |q, k, v| {
        attention_quantized_emulation(q, k, v, opts, smooth_k, pv_f16_accum)
    })
}
