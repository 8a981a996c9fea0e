//! CPU reference implementations of attention, used to check GPU results.
//!
//! * [`attention_f64`]: exact attention (scores, softmax and the weighted sum of V all in `f64`),
//!   parallel over rows with rayon. This is the ground truth for accuracy metrics.
//! * [`attention_quantized_emulation`]: the quantized algorithm the GPU runs (INT8 Q/K from
//!   [`crate::quant_ref`], base-2 softmax, f16 V and f16 P), otherwise in `f64`. GPU results should be
//!   much closer to this than to the exact reference, so tests can use a tight bound against it.
//! * [`naive_attention_f64`]: the most literal formulation, without rayon or any numerical trick;
//!   only meant to cross-check [`attention_f64`] in tests.
//! * [`compare`] / [`compare_f64`]: NaN-aware error metrics ([`Metrics`]).
//!
//! Semantics follow `docs/design.md`, "Attention semantics": tensors have the logical shape
//! `[batch, heads, seq, head_dim]`; grouped-query attention maps query head `h` to kv head
//! `h / (q_heads / kv_heads)`; `qo_len` may differ from `kv_len`; causal masking is bottom-right
//! aligned (query `i` sees key `j` iff `j <= i + kv_len - qo_len`); a row that sees no key outputs 0
//! with LSE `-inf`. NaN and infinities in the inputs are not special-cased: they flow through the
//! arithmetic exactly as plain `f64` math makes them.

use half::f16;
use rayon::prelude::*;

use crate::quant_ref::{self, K_BLOCK};

/// A 4-d `f32` tensor on the host, described in **logical order** `[batch, heads, seq, head_dim]`.
///
/// `strides` are in elements and in the same logical order, whatever the memory layout, so
/// `data[b*strides[0] + h*strides[1] + s*strides[2] + d*strides[3]]` is element `(b, h, s, d)`.
/// GPU inputs in f16/bf16/f32 convert to `f32` exactly, so a `HostTensor` built from the same data the
/// GPU reads represents exactly the GPU's input.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Element storage; only the elements addressed by `shape`/`strides` are meaningful.
    pub data: Vec<f32>,
    /// Logical shape `[batch, heads, seq, head_dim]`.
    pub shape: [usize; 4],
    /// Strides in elements, in logical order `[batch, heads, seq, head_dim]`.
    pub strides: [usize; 4],
}

impl HostTensor {
    /// Contiguous strides for `shape`: memory order (batch, heads, seq, dim) when `nhd` is false
    /// (HND), (batch, seq, heads, dim) when `nhd` is true (NHD). Returned in logical order.
    pub fn contiguous_strides(shape: [usize; 4], nhd: bool) -> [usize; 4] {
        let [_, heads, seq, head_dim] = shape;
        if nhd {
            [seq * heads * head_dim, head_dim, heads * head_dim, 1]
        } else {
            [heads * seq * head_dim, seq * head_dim, head_dim, 1]
        }
    }

    /// A zero-filled contiguous tensor in HND (`nhd == false`) or NHD (`nhd == true`) memory order.
    pub fn contiguous(shape: [usize; 4], nhd: bool) -> Self {
        Self {
            data: vec![0.0; shape.iter().product()],
            shape,
            strides: Self::contiguous_strides(shape, nhd),
        }
    }

    /// A zero-filled tensor with arbitrary strides (e.g. padded rows), with just enough storage.
    pub fn with_strides(shape: [usize; 4], strides: [usize; 4]) -> Self {
        Self {
            data: vec![0.0; required_len(shape, strides)],
            shape,
            strides,
        }
    }

    /// Wrap existing storage.
    ///
    /// # Panics
    /// If `data` is too short for the largest offset that `shape` and `strides` address.
    pub fn from_parts(data: Vec<f32>, shape: [usize; 4], strides: [usize; 4]) -> Self {
        let needed = required_len(shape, strides);
        assert!(
            data.len() >= needed,
            "HostTensor::from_parts: shape {shape:?} with strides {strides:?} needs {needed} \
             elements, data has {}",
            data.len()
        );
        Self {
            data,
            shape,
            strides,
        }
    }

    /// A contiguous tensor (HND or NHD memory order) with `element(b, h, s, d)` at every position.
    pub fn from_fn(
        shape: [usize; 4],
        nhd: bool,
        mut element: impl FnMut(usize, usize, usize, usize) -> f32,
    ) -> Self {
        let mut tensor = Self::contiguous(shape, nhd);
        let [batch, heads, seq, head_dim] = shape;
        for b in 0..batch {
            for h in 0..heads {
                for s in 0..seq {
                    for d in 0..head_dim {
                        tensor.set(b, h, s, d, element(b, h, s, d));
                    }
                }
            }
        }
        tensor
    }

    /// Batch size (`shape[0]`).
    pub fn batch(&self) -> usize {
        self.shape[0]
    }

    /// Number of heads (`shape[1]`).
    pub fn heads(&self) -> usize {
        self.shape[1]
    }

    /// Sequence length (`shape[2]`).
    pub fn seq(&self) -> usize {
        self.shape[2]
    }

    /// Channels per token (`shape[3]`).
    pub fn head_dim(&self) -> usize {
        self.shape[3]
    }

    /// Position of element `(b, h, s, d)` in [`HostTensor::data`].
    ///
    /// # Panics
    /// If an index is outside `shape` (checked so that a wrong index never silently aliases another
    /// element through the strides).
    pub fn offset(&self, b: usize, h: usize, s: usize, d: usize) -> usize {
        let index = [b, h, s, d];
        assert!(
            index.iter().zip(&self.shape).all(|(i, n)| i < n),
            "HostTensor index {index:?} out of range for shape {:?}",
            self.shape
        );
        index.iter().zip(&self.strides).map(|(i, st)| i * st).sum()
    }

    /// Element `(b, h, s, d)`.
    ///
    /// # Panics
    /// If an index is outside `shape`.
    pub fn get(&self, b: usize, h: usize, s: usize, d: usize) -> f32 {
        self.data[self.offset(b, h, s, d)]
    }

    /// Overwrite element `(b, h, s, d)`.
    ///
    /// # Panics
    /// If an index is outside `shape`.
    pub fn set(&mut self, b: usize, h: usize, s: usize, d: usize, value: f32) {
        let offset = self.offset(b, h, s, d);
        self.data[offset] = value;
    }

    /// Copy into a contiguous `[batch][heads][seq][head_dim]` `f64` vector, applying `convert` to
    /// each element (used to gather K and V once per call instead of striding in the hot loop).
    fn to_contiguous_f64(&self, convert: impl Fn(f32) -> f64) -> Vec<f64> {
        let [batch, heads, seq, head_dim] = self.shape;
        let mut out = Vec::with_capacity(batch * heads * seq * head_dim);
        for b in 0..batch {
            for h in 0..heads {
                for s in 0..seq {
                    for d in 0..head_dim {
                        out.push(convert(self.get(b, h, s, d)));
                    }
                }
            }
        }
        out
    }
}

/// Number of elements a buffer needs for `shape` and `strides` (largest offset + 1; 0 if empty).
fn required_len(shape: [usize; 4], strides: [usize; 4]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    1 + shape
        .iter()
        .zip(&strides)
        .map(|(n, st)| (n - 1) * st)
        .sum::<usize>()
}

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
struct Dims {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    qo_len: usize,
    kv_len: usize,
    head_dim: usize,
}

impl Dims {
    /// Check that `q`, `k` and `v` describe one attention problem; panics with a clear message if not.
    fn of(q: &HostTensor, k: &HostTensor, v: &HostTensor) -> Self {
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
    fn output(&self, o: Vec<f64>, lse: Vec<f64>) -> RefOutput {
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
    fn split_row(&self, row: usize) -> (usize, usize, usize, usize) {
        let i = row % self.qo_len;
        let h = (row / self.qo_len) % self.q_heads;
        let b = row / (self.qo_len * self.q_heads);
        let kv_head = h / (self.q_heads / self.kv_heads);
        (b, h, kv_head, i)
    }

    /// Offset of key/value row `(b, kv_head, j)` in a contiguous `[b][kv_heads][kv_len][d]` buffer.
    fn kv_offset(&self, b: usize, kv_head: usize, j: usize) -> usize {
        ((b * self.kv_heads + kv_head) * self.kv_len + j) * self.head_dim
    }

    /// Run `row_fn` on every output row in parallel (rayon, one task per (batch, head, query row));
    /// rows that see no key keep 0 / `-inf` and never reach `row_fn`.
    fn for_each_row(&self, causal: bool, row_fn: impl Fn(RowTask<'_>) + Sync + Send) -> RefOutput {
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
struct RowTask<'a> {
    b: usize,
    h: usize,
    kv_head: usize,
    i: usize,
    /// Keys `0..visible` are visible (at least one).
    visible: usize,
    o_row: &'a mut [f64],
    lse: &'a mut f64,
}

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

/// CPU emulation of the quantized algorithm the GPU runs; an oracle for the **quantization** error.
///
/// Steps:
/// 1. Q and K are quantized bit-exactly as the GPU does ([`quant_ref::quantize_q`] with the
///    effective `sm_scale`, [`quant_ref::quantize_k`] with [`quant_ref::k_mean`] when `smooth_k`).
/// 2. Scores in log2 units, in `f32` as the GPU computes them:
///    `s = (q_i8 · k_i8) as f32 * (q_scale * k_scale)`.
/// 3. Base-2 softmax with the **final** row max `m` (not the online running max):
///    `p = 2^(s - m)` computed in `f64`, held as `f32` and rounded to f16 as the GPU rounds P before
///    the P·V product. The denominator sums the unrounded `p` (as kernels that accumulate the row sum
///    on CUDA cores from the f32 probabilities do).
/// 4. V is rounded to f16 (`f16::from_f32(v)`), and `o = Σ p16 · v16 / Σ p`. With
///    `pv_f16_accum == false` the sum is in `f64`. With `pv_f16_accum == true` it models an f16
///    accumulator: for each key block of [`K_BLOCK`] keys, chunks of 16 keys (one MMA k-step) are
///    summed exactly and added to an f16 block accumulator (rounding to f16 after each chunk), and the
///    block accumulator is then added to an `f64` total.
/// 5. `lse = (m + log2 Σ p) · ln 2 + c` (natural log), where with `smooth_k` the correction
///    `c = sm_scale · (q_i · mean)` (in `f64`) restores the scores of the original K, so the LSE means
///    the same as [`attention_f64`]'s; `c = 0` without smoothing.
///
/// Because it uses the final row max and `f64` exponentials, this is not bit-exact against the GPU's
/// online softmax (which rescales with running maxima and uses `ex2.approx`); it isolates the error
/// that quantization and f16 rounding cause, so GPU results should sit within a tight bound of it.
/// Non-finite inputs follow the design contract: a NaN/Inf in a Q block makes every row of that
/// block NaN, a NaN/Inf in a K block makes every row that sees a key of that block NaN (with
/// `smooth_k` the NaN/Inf also reaches every K block of that head through the mean, so every row of
/// the head that sees any key is NaN).
///
/// # Panics
/// On inconsistent shapes, as [`attention_f64`].
pub fn attention_quantized_emulation(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
    smooth_k: bool,
    pv_f16_accum: bool,
) -> RefOutput {
    let dims = Dims::of(q, k, v);
    let sm_scale = opts.sm_scale_for(dims.head_dim);
    let q_quant = quant_ref::quantize_q(q, sm_scale);
    let mean = smooth_k.then(|| quant_ref::k_mean(k));
    let k_quant = quant_ref::quantize_k(k, mean.as_deref());
    let values = v.to_contiguous_f64(|x| f64::from(f16::from_f32(x).to_f32()));
    let d = dims.head_dim;

    dims.for_each_row(opts.causal, |task| {
        let q_row = q_quant.row(task.b, task.h, task.i);
        let q_scale = q_quant.scale_of(task.b, task.h, task.i);
        let scores: Vec<f64> = (0..task.visible)
            .map(|j| {
                let k_row = k_quant.row(task.b, task.kv_head, j);
                let k_scale = k_quant.scale_of(task.b, task.kv_head, j);
                let int_dot: i32 = q_row
                    .iter()
                    .zip(k_row)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
                f64::from(int_dot as f32 * (q_scale * k_scale))
            })
            .collect();
        let row_max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let probabilities: Vec<f64> = scores.iter().map(|&s| (s - row_max).exp2()).collect();
        let denominator: f64 = probabilities.iter().sum();
        let base = dims.kv_offset(task.b, task.kv_head, 0);
        let p_f16 = |j: usize| f64::from(f16::from_f32(probabilities[j] as f32).to_f32());

        if pv_f16_accum {
            accumulate_pv_f16(task.o_row, task.visible, p_f16, |j| {
                &values[base + j * d..base + (j + 1) * d]
            });
        } else {
            for j in 0..task.visible {
                let p = p_f16(j);
                let value = &values[base + j * d..base + (j + 1) * d];
                for (acc, &x) in task.o_row.iter_mut().zip(value) {
                    *acc += p * x;
                }
            }
        }
        for acc in task.o_row.iter_mut() {
            *acc /= denominator;
        }
        // Smoothing subtracted `mean` from every key, which lowered every score of the row by
        // `sm_scale * q_i · mean`; add it back so the LSE refers to the original K, as the contract
        // defines it (the output itself is invariant to the shift).
        let smoothing_correction = mean.as_deref().map_or(0.0, |mean| {
            let start = (task.b * dims.kv_heads + task.kv_head) * d;
            let q_dot_mean: f64 = mean[start..start + d]
                .iter()
                .enumerate()
                .map(|(c, &m)| f64::from(q.get(task.b, task.h, task.i, c)) * f64::from(m))
                .sum();
            f64::from(sm_scale) * q_dot_mean
        });
        *task.lse = (row_max + denominator.log2()) * std::f64::consts::LN_2 + smoothing_correction;
    })
}

/// Keys summed exactly before each rounding of the f16 accumulator (the k extent of one MMA).
const PV_MMA_K: usize = 16;

/// Model of P·V with an f16 accumulator: per key block of [`K_BLOCK`] keys, chunks of [`PV_MMA_K`]
/// keys are summed exactly and added to an f16 accumulator (one rounding per chunk); each block's
/// f16 partial is then added to `o_row` in `f64`.
fn accumulate_pv_f16<'v>(
    o_row: &mut [f64],
    visible: usize,
    probability: impl Fn(usize) -> f64,
    value: impl Fn(usize) -> &'v [f64],
) {
    let mut block_acc = vec![f16::ZERO; o_row.len()];
    let mut chunk_sum = vec![0.0_f64; o_row.len()];
    for block_start in (0..visible).step_by(K_BLOCK) {
        let block_end = (block_start + K_BLOCK).min(visible);
        block_acc.fill(f16::ZERO);
        for chunk_start in (block_start..block_end).step_by(PV_MMA_K) {
            let chunk_end = (chunk_start + PV_MMA_K).min(block_end);
            chunk_sum.fill(0.0);
            for j in chunk_start..chunk_end {
                let p = probability(j);
                for (sum, &x) in chunk_sum.iter_mut().zip(value(j)) {
                    *sum += p * x;
                }
            }
            for (acc, &sum) in block_acc.iter_mut().zip(&chunk_sum) {
                *acc = f16::from_f32((f64::from(acc.to_f32()) + sum) as f32);
            }
        }
        for (total, acc) in o_row.iter_mut().zip(&block_acc) {
            *total += f64::from(acc.to_f32());
        }
    }
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

/// [`compare`] for an `f64` output, e.g. [`attention_quantized_emulation`] against
/// [`attention_f64`].
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
