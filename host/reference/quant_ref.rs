//! Bit-exact CPU emulation of the GPU quantization (smoothing of K and per-block INT8 quantization
//! of Q and K).
//!
//! This module follows the "Quantization" section of `docs/design.md` to the letter: every step is
//! done in `f32` with IEEE round-to-nearest-even, in the same order of operations as the kernels, and
//! without fused multiply-add (Rust never contracts `a * b + c` on its own). A GPU implementation that
//! honours the contract produces exactly the same `i8` values and `f32` scales as the functions here,
//! so GPU tests can compare quantized buffers for equality, bit for bit.
//!
//! Summary of the contract:
//!
//! * [`k_mean`]: per (batch, kv head, channel) mean of K over the sequence, summed in
//!   [`MEAN_LANES`] = 16 sequential lanes and then combined by a tree with strides 8, 4, 2, 1,
//!   finally divided by `kv_len as f32`.
//! * [`quantize_q`]: `q * (sm_scale * LOG2_E)`, one scale per token, rows padded with zeros to
//!   whole [`Q_BLOCK`] = 128-row blocks (padding rows have scale 0).
//! * [`quantize_k`]: blocks of [`K_BLOCK`] = 64 tokens of `k - mean` (or `k` without smoothing).
//! * [`quantize_block`]: `amax = max |v|` (NaN propagates), `inv = 127 / amax` (0 when `amax == 0`),
//!   `scale = amax / 127`, `q = clamp(round_ties_even(v * inv), -127, 127)`, NaN products give 0.
//!
//! Inputs are [`HostTensor`]s holding `f32` values; f16/bf16 GPU inputs convert to `f32` exactly, so
//! building the host tensor from the same f16/bf16 data the GPU sees reproduces the GPU's inputs.

use rayon::prelude::*;

use super::host_tensor::HostTensor;

// The block sizes, `log2(e)` and the lane count are the device crate's own constants (one source
// file, `abi/config.rs`), so the emulation cannot drift from the kernels.
pub use crate::device_config::{
    K_BLOCK, LOG2_E, MEAN_SEGMENT_ROWS, MEAN_SEQ_LANES as MEAN_LANES, Q_BLOCK,
};

/// Largest magnitude of a quantized value; `-128` is never produced, so the range is symmetric.
pub const INT8_MAX: f32 = 127.0;

/// Per-channel mean of K over the sequence, exactly as the smoothing kernels compute it.
///
/// Returns a contiguous `[batch][kv_heads][head_dim]` vector. For each (batch, head, channel) the
/// sequence is cut into segments of [`MEAN_SEGMENT_ROWS`] rows. Within a segment the rows are split
/// into [`MEAN_LANES`] lanes (row offset `% 16`), each lane is summed sequentially in increasing
/// row order starting from `0.0`, and the lanes are combined by a tree (`partial[l] +=
/// partial[l + stride]` for `l < stride`, strides 8, 4, 2, 1). The segment sums are then added in
/// segment order starting from `0.0`, and the total is divided by `kv_len as f32`. With
/// `kv_len == 0` the result is `0 / 0 = NaN`, as IEEE arithmetic gives.
pub fn k_mean(k: &HostTensor) -> Vec<f32> {
    let [batch, heads, kv_len, head_dim] = k.shape;
    let mut mean = vec![0.0_f32; batch * heads * head_dim];
    if head_dim == 0 {
        return mean;
    }
    mean.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(bh, channels)| {
            let (b, h) = (bh / heads, bh % heads);
            for (d, out) in channels.iter_mut().enumerate() {
                let mut total = 0.0_f32;
                for start in (0..kv_len).step_by(MEAN_SEGMENT_ROWS) {
                    let end = (start + MEAN_SEGMENT_ROWS).min(kv_len);
                    total += lane_tree_sum((start..end).map(|s| k.get(b, h, s, d)));
                }
                *out = total / (kv_len as f32);
            }
        });
    mean
}

/// Sum `values` (one segment, in sequence order) in 16 lanes and combine the lanes by the 8/4/2/1
/// tree. Kept separate so the summation order is written down in exactly one place.
pub(crate) fn lane_tree_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut partial = [0.0_f32; MEAN_LANES];
    for (s, x) in values.enumerate() {
        let lane = s % MEAN_LANES;
        partial[lane] += x;
    }
    let mut stride = MEAN_LANES / 2;
    while stride > 0 {
        for lane in 0..stride {
            partial[lane] += partial[lane + stride];
        }
        stride /= 2;
    }
    partial[0]
}

/// Quantized Q or K as the GPU stores it.
///
/// `data` is contiguous `[batch][heads][padded_seq][head_dim]`; rows past `seq` (up to the block
/// boundary) are 0. `scale` is contiguous `[batch][heads][n_blocks]`; the dequantized value of an
/// element is `data as f32 * scale[block of its row]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// Quantized values in `[-127, 127]`, `[batch][heads][padded_seq][head_dim]`.
    pub data: Vec<i8>,
    /// One scale per block, `[batch][heads][n_blocks]`.
    pub scale: Vec<f32>,
    /// Batch size.
    pub batch: usize,
    /// Number of heads (query heads for Q, kv heads for K).
    pub heads: usize,
    /// Number of real tokens.
    pub seq: usize,
    /// Channels per token.
    pub head_dim: usize,
    /// `seq` rounded up to a multiple of the padding unit ([`Q_BLOCK`] for Q, [`K_BLOCK`] for K).
    pub padded_seq: usize,
    /// Number of scales per (batch, head): `padded_seq / block`.
    pub n_blocks: usize,
    /// Tokens per scale (1 for Q: per token; [`K_BLOCK`] for K).
    pub block: usize,
}

impl Quantized {
    /// Index of the first element of row `s` of head `h` in batch `b` in [`Quantized::data`].
    fn row_offset(&self, b: usize, h: usize, s: usize) -> usize {
        assert!(
            b < self.batch && h < self.heads && s < self.padded_seq,
            "Quantized index (b={b}, h={h}, s={s}) out of range (batch={}, heads={}, padded_seq={})",
            self.batch,
            self.heads,
            self.padded_seq
        );
        ((b * self.heads + h) * self.padded_seq + s) * self.head_dim
    }

    /// The `head_dim` quantized values of row `s` (padding rows included, they are all 0).
    ///
    /// # Panics
    /// If an index is out of range (`s` may go up to `padded_seq - 1`).
    pub fn row(&self, b: usize, h: usize, s: usize) -> &[i8] {
        let start = self.row_offset(b, h, s);
        &self.data[start..start + self.head_dim]
    }

    /// One quantized value.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn value(&self, b: usize, h: usize, s: usize, d: usize) -> i8 {
        assert!(
            d < self.head_dim,
            "channel {d} out of range (head_dim={})",
            self.head_dim
        );
        self.data[self.row_offset(b, h, s) + d]
    }

    /// The scale of the block that contains row `s`.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn scale_of(&self, b: usize, h: usize, s: usize) -> f32 {
        assert!(
            b < self.batch && h < self.heads && s < self.padded_seq,
            "Quantized index (b={b}, h={h}, s={s}) out of range"
        );
        self.scale[(b * self.heads + h) * self.n_blocks + s / self.block]
    }

    /// The dequantized value `data * scale` of one element, in `f32` as the GPU computes it.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn dequantize(&self, b: usize, h: usize, s: usize, d: usize) -> f32 {
        f32::from(self.value(b, h, s, d)) * self.scale_of(b, h, s)
    }
}

/// Quantize Q per token after folding in the softmax scale and the base change to log2:
/// `v = q * mult` with `mult = sm_scale * LOG2_E` (an `f32` product); rows padded with zeros (scale
/// 0) to whole [`Q_BLOCK`]-row blocks, as the GPU stores them.
///
/// The resulting scores `(q_i8 · k_i8) * q_scale * k_scale` are therefore in log2 units, ready for
/// `exp2`.
///
/// # Panics
/// If `head_dim == 0`.
pub fn quantize_q(q: &HostTensor, sm_scale: f32) -> Quantized {
    let mult = sm_scale * LOG2_E;
    quantize_blocks(q, 1, Q_BLOCK, |_, _, _, x| x * mult)
}

/// Quantize K in blocks of [`K_BLOCK`] tokens, subtracting the per-channel `mean` first when given
/// (smooth_k): `v = k - mean[b][h][d]`, or `v = k` without smoothing.
///
/// `mean` is laid out as [`k_mean`] returns it: `[batch][kv_heads][head_dim]`.
///
/// # Panics
/// If `head_dim == 0` or `mean` does not have `batch * kv_heads * head_dim` elements.
pub fn quantize_k(k: &HostTensor, mean: Option<&[f32]>) -> Quantized {
    let [batch, heads, _, head_dim] = k.shape;
    match mean {
        Some(mean) => {
            assert_eq!(
                mean.len(),
                batch * heads * head_dim,
                "K mean must have batch * kv_heads * head_dim = {batch} * {heads} * {head_dim} elements"
            );
            quantize_blocks(k, K_BLOCK, K_BLOCK, |b, h, d, x| {
                x - mean[(b * heads + h) * head_dim + d]
            })
        }
        None => quantize_blocks(k, K_BLOCK, K_BLOCK, |_, _, _, x| x),
    }
}

/// Quantize one block of already transformed values (`v` in the contract) to INT8 and return the
/// block's scale.
///
/// `values` and `out` have the same length (rows × head_dim, any order: the scale is shared by the
/// whole block). `amax = max |v|` propagates NaN; `inv = 127 / amax` (0 when `amax == 0`);
/// `scale = amax / 127`; `out = clamp(round_ties_even(v * inv), -127, 127)`, and a NaN product gives
/// 0. An infinite `amax` gives `inv = 0` and `scale = inf`, so every score using the block becomes
/// NaN downstream, as the contract requires.
///
/// # Panics
/// If `values.len() != out.len()`.
pub fn quantize_block(values: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(
        values.len(),
        out.len(),
        "quantize_block: values and out must have the same length"
    );
    let amax = values
        .iter()
        .fold(0.0_f32, |acc, &v| nan_propagating_max(acc, v.abs()));
    let inv = if amax == 0.0 { 0.0 } else { INT8_MAX / amax };
    let scale = amax / INT8_MAX;
    for (q, &v) in out.iter_mut().zip(values) {
        *q = round_to_int8(v * inv);
    }
    scale
}

/// `max(a, b)` that returns NaN when either side is NaN (unlike [`f32::max`], which drops NaN), so a
/// NaN anywhere in a block reaches its scale.
pub(crate) fn nan_propagating_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// `clamp(round_ties_even(x), -127, 127)` as `i8`; NaN maps to 0 (what `cvt.rni.sat.s8` would give).
pub(crate) fn round_to_int8(x: f32) -> i8 {
    let rounded = x.round_ties_even();
    if rounded.is_nan() {
        0
    } else {
        // After the clamp the value is an integer in [-127, 127], so the cast is exact.
        rounded.clamp(-INT8_MAX, INT8_MAX) as i8
    }
}

/// Shared driver of [`quantize_q`] and [`quantize_k`]: walks every (batch, head) in parallel, builds
/// each block's transformed values with `transform(b, h, d, x)` and quantizes it with
/// [`quantize_block`] (`block` rows per scale), the rows padded to a multiple of `pad` (a multiple
/// of `block`). Padding rows stay 0, and so do the scales of blocks of padding rows only.
fn quantize_blocks(
    input: &HostTensor,
    block: usize,
    pad: usize,
    transform: impl Fn(usize, usize, usize, f32) -> f32 + Sync,
) -> Quantized {
    let [batch, heads, seq, head_dim] = input.shape;
    assert!(head_dim > 0, "cannot quantize a tensor with head_dim == 0");
    assert!(pad.is_multiple_of(block));
    let padded_seq = seq.div_ceil(pad) * pad;
    let n_blocks = padded_seq / block;
    let mut data = vec![0_i8; batch * heads * padded_seq * head_dim];
    let mut scale = vec![0.0_f32; batch * heads * n_blocks];

    if n_blocks > 0 {
        data.par_chunks_mut(padded_seq * head_dim)
            .zip(scale.par_chunks_mut(n_blocks))
            .enumerate()
            .for_each(|(bh, (head_data, head_scales))| {
                let (b, h) = (bh / heads, bh % heads);
                let mut values = Vec::with_capacity(block * head_dim);
                for (blk, block_scale) in head_scales.iter_mut().enumerate() {
                    let first = blk * block;
                    let rows = seq.saturating_sub(first).min(block);
                    values.clear();
                    for s in first..first + rows {
                        for d in 0..head_dim {
                            values.push(transform(b, h, d, input.get(b, h, s, d)));
                        }
                    }
                    let out = &mut head_data[first * head_dim..(first + rows) * head_dim];
                    *block_scale = quantize_block(&values, out);
                }
            });
    }

    Quantized {
        data,
        scale,
        batch,
        heads,
        seq,
        head_dim,
        padded_seq,
        n_blocks,
        block,
    }
}
