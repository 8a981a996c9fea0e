//! CPU emulation of the 8-bit P·V path's V preparation, bit-exact with `kernels-gpu/src/v8.rs`
//! (the contract is docs/design.md, "8-bit P·V").
//!
//! Per (batch, kv head, channel): `mean` is the K mean's exact summation order over V
//! (`lane_tree_sum` per 256-row segment, segments in order, divided by `seq`);
//! `amax = max(max_v - mean, mean - min_v)` (NaN-propagating), `scale = amax / 127`,
//! `inv = 127 / amax` (0 where that is not finite: amax 0, subnormal or NaN), and
//! `q = clamp(round_ties_even((v - mean) · inv), -127, 127)`. The GPU stores q transposed (keys
//! contiguous) and key-permuted within 16-key groups ([`v8_key_slot`]); [`QuantizedV8::value`]
//! undoes that.
//!
//! The FP8 P·V ([`VFormat::E4m3`], the sm_89 module's preparation) is the same but for the scale
//! bound and the rounding: `scale = amax / V_FP8_MAX`, `inv = V_FP8_MAX / amax`, and
//! `q = e4m3((v - mean) · inv)` (round to nearest even, saturating: `float8::F8E4M3::from_f32`,
//! the semantics of `cvt.rn.satfinite.e4m3x2.f32`), stored as its bit pattern.

use rayon::prelude::*;

use super::host_tensor::HostTensor;
use super::quant_ref::{lane_tree_sum, nan_propagating_max, round_to_int8, INT8_MAX};
use crate::device_config::{padded_len, v8_key_slot, MEAN_SEGMENT_ROWS, V8_TILE, V_FP8_MAX};
use float8::F8E4M3;

/// The element format of the 8-bit Vᵀ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VFormat {
    /// INT8, `|q| ≤ 127` ([`PvPrecision::Int8`](crate::PvPrecision)).
    Int8,
    /// e4m3 bit patterns, `|q| ≤ V_FP8_MAX` ([`PvPrecision::Fp8`](crate::PvPrecision)).
    E4m3,
}

impl VFormat {
    /// The largest |V − mean| after scaling.
    pub fn max(self) -> f32 {
        match self {
            VFormat::Int8 => INT8_MAX,
            VFormat::E4m3 => V_FP8_MAX,
        }
    }

    /// One smoothed, scaled value as the stored byte.
    pub fn encode(self, x: f32) -> i8 {
        match self {
            VFormat::Int8 => round_to_int8(x),
            VFormat::E4m3 => F8E4M3::from_f32(x).to_bits() as i8,
        }
    }

    /// The value a stored byte stands for.
    pub fn decode(self, q: i8) -> f32 {
        match self {
            VFormat::Int8 => f32::from(q),
            VFormat::E4m3 => F8E4M3::from_bits(q as u8).to_f32(),
        }
    }
}

/// V as the 8-bit P·V kernels read it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedV8 {
    /// Vᵀ `[batch][heads][out_head_dim][padded_seq]`, keys in slot order; zero past `seq` and
    /// past `head_dim`. INT8 values, or e4m3 bit patterns for [`VFormat::E4m3`].
    pub data: Vec<i8>,
    /// What `data` holds.
    pub format: VFormat,
    /// Per-channel mean `[batch][heads][out_head_dim]` (0 past `head_dim`).
    pub mean: Vec<f32>,
    /// `[batch][heads][2][out_head_dim]`: the dequantization scale, then its inverse.
    pub scale: Vec<f32>,
    /// Batch size.
    pub batch: usize,
    /// KV heads.
    pub heads: usize,
    /// Keys.
    pub seq: usize,
    /// Channels of the input.
    pub head_dim: usize,
    /// Channels stored (≥ `head_dim`).
    pub out_head_dim: usize,
    /// `seq` rounded up to whole 64-key tiles.
    pub padded_seq: usize,
}

impl QuantizedV8 {
    /// The quantized value of `key`, channel `c`.
    pub fn value(&self, b: usize, h: usize, key: usize, c: usize) -> i8 {
        assert!(b < self.batch && h < self.heads && key < self.padded_seq && c < self.out_head_dim);
        self.data
            [((b * self.heads + h) * self.out_head_dim + c) * self.padded_seq + v8_key_slot(key)]
    }

    /// [`Self::value`] as the number it stands for (in units of the channel's scale).
    pub fn value_f64(&self, b: usize, h: usize, key: usize, c: usize) -> f64 {
        f64::from(self.format.decode(self.value(b, h, key, c)))
    }

    /// The mean smoothing subtracted from channel `c`.
    pub fn mean_of(&self, b: usize, h: usize, c: usize) -> f32 {
        self.mean[(b * self.heads + h) * self.out_head_dim + c]
    }

    /// The dequantization scale of channel `c`.
    pub fn scale_of(&self, b: usize, h: usize, c: usize) -> f32 {
        self.scale[(b * self.heads + h) * 2 * self.out_head_dim + c]
    }
}

/// Quantizes V (`[batch][heads][seq][head_dim]`) for the 8-bit P·V kernels, with `out_head_dim`
/// stored channels (the kernel's head dim: 128 for d = 96 on Hopper).
///
/// # Panics
/// If `out_head_dim < head_dim`.
pub fn quantize_v8(v: &HostTensor, out_head_dim: usize) -> QuantizedV8 {
    quantize_v8_as(v, out_head_dim, VFormat::Int8)
}

/// [`quantize_v8`] in either format: the e4m3 Vᵀ of the FP8 P·V with [`VFormat::E4m3`].
///
/// # Panics
/// If `out_head_dim < head_dim`.
pub fn quantize_v8_as(v: &HostTensor, out_head_dim: usize, format: VFormat) -> QuantizedV8 {
    let [batch, heads, seq, head_dim] = v.shape;
    assert!(
        out_head_dim >= head_dim,
        "out_head_dim {out_head_dim} < head_dim {head_dim}"
    );
    let padded_seq = padded_len(seq, V8_TILE);
    let mut data = vec![0_i8; batch * heads * out_head_dim * padded_seq];
    let mut mean = vec![0.0_f32; batch * heads * out_head_dim];
    let mut scale = vec![0.0_f32; batch * heads * 2 * out_head_dim];
    data.par_chunks_mut((out_head_dim * padded_seq).max(1))
        .zip(mean.par_chunks_mut(out_head_dim.max(1)))
        .zip(scale.par_chunks_mut((2 * out_head_dim).max(1)))
        .enumerate()
        .for_each(|(bh, ((head_data, head_mean), head_scale))| {
            let (b, h) = (bh / heads, bh % heads);
            for c in 0..head_dim {
                let mut total = 0.0_f32;
                for start in (0..seq).step_by(MEAN_SEGMENT_ROWS) {
                    let end = (start + MEAN_SEGMENT_ROWS).min(seq);
                    total += lane_tree_sum((start..end).map(|s| v.get(b, h, s, c)));
                }
                let (mut max, mut min) = (f32::NEG_INFINITY, f32::INFINITY);
                for s in 0..seq {
                    let x = v.get(b, h, s, c);
                    max = nan_propagating_max(max, x);
                    min = -nan_propagating_max(-min, -x);
                }
                let m = total / seq as f32;
                let amax = nan_propagating_max(max - m, m - min);
                let v_max = format.max();
                // 0 where not finite (amax 0, subnormal or NaN), as the GPU has it.
                let inv = v_max / amax;
                let inv = if inv.is_finite() { inv } else { 0.0 };
                head_mean[c] = m;
                head_scale[c] = amax / v_max;
                head_scale[out_head_dim + c] = inv;
                let row = &mut head_data[c * padded_seq..(c + 1) * padded_seq];
                for s in 0..seq {
                    row[v8_key_slot(s)] = format.encode((v.get(b, h, s, c) - m) * inv);
                }
            }
        });
    QuantizedV8 {
        data,
        format,
        mean,
        scale,
        batch,
        heads,
        seq,
        head_dim,
        out_head_dim,
        padded_seq,
    }
}
