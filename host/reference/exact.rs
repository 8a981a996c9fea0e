//! Exact attention on the CPU, in `f64`: [`attention_f64`] (the ground truth) and
//! [`naive_attention_f64`] (the most literal formulation, to cross-check it).

use super::host_tensor::HostTensor;
use super::rows::{Dims, RefOptions, RefOutput};

/// Exact attention on the CPU: `f64` scores, max-subtracted softmax and `f64` accumulation,
/// parallel over (batch, head, query row) with rayon.
///
/// `q` is `[batch, q_heads, qo_len, head_dim]`, `k` and `v` are `[batch, kv_heads, kv_len, head_dim]`
/// (any strides). Score `s_j = sm_scale * (q_i · k_j)`; `o_i = Σ_j exp(s_j - m) v_j / Σ_j exp(s_j - m)`
/// with `m = max_j s_j`; `lse_i = m + ln Σ_j exp(s_j - m)` (natural log). Rows that see no key give
/// `o = 0`, `lse = -inf`. NaN/Inf inputs are not special-cased (a NaN in `q_i` makes row `i` NaN, a
/// NaN in a visible `k_j`/`v_j` makes the rows that see it NaN).
///
/// # Panics
/// If the shapes are inconsistent: K and V differ, batch or head_dim differ between Q and K,
/// `head_dim == 0`, or `q_heads` is not a positive multiple of `kv_heads`.
pub fn attention_f64(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
) -> RefOutput {
    let dims = Dims::of(q, k, v);
    let sm_scale = f64::from(opts.sm_scale_for(dims.head_dim));
    let keys = k.to_contiguous_f64(f64::from);
    let values = v.to_contiguous_f64(f64::from);
    let d = dims.head_dim;

    dims.for_each_row(opts.causal, |task| {
        let q_row: Vec<f64> = (0..d)
            .map(|c| f64::from(q.get(task.b, task.h, task.i, c)))
            .collect();
        let base = dims.kv_offset(task.b, task.kv_head, 0);
        let scores: Vec<f64> = (0..task.visible)
            .map(|j| {
                let key = &keys[base + j * d..base + (j + 1) * d];
                sm_scale * dot(&q_row, key)
            })
            .collect();
        // f64::max ignores NaN, but a NaN score still poisons the row through exp() below.
        let row_max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut denominator = 0.0_f64;
        for (j, &s) in scores.iter().enumerate() {
            let weight = (s - row_max).exp();
            denominator += weight;
            let value = &values[base + j * d..base + (j + 1) * d];
            for (acc, &x) in task.o_row.iter_mut().zip(value) {
                *acc += weight * x;
            }
        }
        for acc in task.o_row.iter_mut() {
            *acc /= denominator;
        }
        *task.lse = row_max + denominator.ln();
    })
}

/// `Σ a[c] * b[c]` in `f64`, in increasing `c`.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The most literal attention: a plain loop over rows and keys, no rayon, no max subtraction, no
/// gathering. Only meant to cross-check [`attention_f64`] in tests.
///
/// `o_i = Σ_j exp(s_j) v_j / Σ_j exp(s_j)`, `lse_i = ln Σ_j exp(s_j)` with
/// `s_j = sm_scale * (q_i · k_j)` over the visible keys (`j + qo_len <= i + kv_len` when causal).
/// Without max subtraction `exp` overflows for scores above ~709, so keep test inputs moderate.
/// Rows that see no key give `o = 0`, `lse = -inf`.
///
/// # Panics
/// On inconsistent shapes, as [`attention_f64`].
pub fn naive_attention_f64(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
) -> RefOutput {
    let dims = Dims::of(q, k, v);
    let sm_scale = f64::from(opts.sm_scale_for(dims.head_dim));
    let group = dims.q_heads / dims.kv_heads;
    let (qo_len, kv_len, d) = (dims.qo_len, dims.kv_len, dims.head_dim);
    let mut o = Vec::new();
    let mut lse = Vec::new();
    for b in 0..dims.batch {
        for h in 0..dims.q_heads {
            let kv_head = h / group;
            for i in 0..qo_len {
                let mut weights = Vec::new();
                let mut visible_keys = Vec::new();
                for j in 0..kv_len {
                    if opts.causal && j + qo_len > i + kv_len {
                        continue;
                    }
                    let mut score = 0.0_f64;
                    for c in 0..d {
                        score += f64::from(q.get(b, h, i, c)) * f64::from(k.get(b, kv_head, j, c));
                    }
                    weights.push((sm_scale * score).exp());
                    visible_keys.push(j);
                }
                if visible_keys.is_empty() {
                    o.extend(std::iter::repeat_n(0.0, d));
                    lse.push(f64::NEG_INFINITY);
                    continue;
                }
                let total: f64 = weights.iter().sum();
                for c in 0..d {
                    let mut acc = 0.0_f64;
                    for (w, &j) in weights.iter().zip(&visible_keys) {
                        acc += w * f64::from(v.get(b, kv_head, j, c));
                    }
                    o.push(acc / total);
                }
                lse.push(total.ln());
            }
        }
    }
    dims.output(o, lse)
}
