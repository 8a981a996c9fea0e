//! Scratch memory of one attention call: the INT8 Q (unless the kernel quantizes Q itself) and K,
//! their scales, K's mean, the LSE bias and bf16 V converted to f16, carved out of ONE raw
//! stream-ordered allocation
//! ([`DeviceAlloc`](crate::device::alloc::DeviceAlloc)). `sageattn` and `sageattn_into` reuse the
//! runtime's workspace; a [`Prepared`](crate::Prepared) owns its own allocation.

use crate::device_config::{padded_len, K_BLOCK, MEAN_SEGMENT_ROWS, Q_BLOCK, V8_TILE};
use crate::launch::tma::TMA_MAPS_BYTES;
use crate::types::error::{Error, Result};

/// Alignment of every region (the kernels need 16 bytes; 256 matches cudaMalloc).
const REGION_ALIGN: usize = 256;

/// Byte offsets of each buffer inside the scratch allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScratchLayout {
    /// The prepared Q; `None` when the attention kernel quantizes the caller's Q itself.
    pub q: Option<QRegions>,
    pub k_i8: usize,
    pub k_scale: usize,
    pub k_mean: Option<usize>,
    pub k_partials: Option<usize>,
    pub lse_bias: Option<usize>,
    pub v_f16: Option<usize>,
    pub v8: Option<V8Regions>,
    pub o_pad: Option<usize>,
    /// The sm_90a kernels' TMA descriptors of K and V (`launch::tma`).
    pub tma: Option<usize>,
    pub bytes: usize,
}

/// The INT8 Q, `[batch][q_heads][padded_qo][kernel_head_dim]`, and its per-token scales
/// `[batch][q_heads][padded_qo]` (0 on padding rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QRegions {
    pub i8: usize,
    pub scale: usize,
}

/// The 8-bit P·V path's V (`kernels-gpu/src/v8.rs`): its segment statistics, per-channel mean and
/// scales, and the INT8 Vᵀ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct V8Regions {
    pub partials: usize,
    pub mean: usize,
    pub scale: usize,
    pub vt: usize,
}

/// Sizes that decide the layout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScratchShape {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub qo_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    /// Row width of the quantized Q/K, the V copy and the padded output (≥ head_dim).
    pub kernel_head_dim: usize,
    /// The preparation quantizes Q (false when the sm_90a kernel quantizes the caller's Q).
    pub quantize_q: bool,
    pub smooth_k: bool,
    pub lse_bias: bool,
    /// V is copied to f16 (bf16 input, or rows padded to kernel_head_dim).
    pub copy_v: bool,
    /// The kernel writes a kernel_head_dim-wide output here, copied to the caller's after.
    pub pad_output: bool,
    /// 8-bit P·V: V is quantized to an INT8 Vᵀ (instead of any f16 copy).
    pub v8: bool,
    /// The attention kernel may read K and V through TMA descriptors (sm_90a; always with the
    /// 8-bit P·V, with f16 P·V when the caller's V can be described).
    pub tma: bool,
}

impl ScratchLayout {
    /// Lays out the buffers; `TooLarge` if the total overflows.
    pub(crate) fn new(s: ScratchShape) -> Result<Self> {
        let mut end = 0usize;
        let mut region = |bytes: Option<usize>| -> Result<usize> {
            let bytes = bytes.ok_or_else(too_large)?;
            let start = end
                .checked_next_multiple_of(REGION_ALIGN)
                .ok_or_else(too_large)?;
            end = start.checked_add(bytes.max(1)).ok_or_else(too_large)?;
            Ok(start)
        };
        let mul = |xs: &[usize]| xs.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
        let q = if s.quantize_q {
            let rows = padded_len(s.qo_len, Q_BLOCK);
            Some(QRegions {
                i8: region(mul(&[s.batch, s.q_heads, rows, s.kernel_head_dim]))?,
                // One scale per token, padding rows included (0).
                scale: region(mul(&[s.batch, s.q_heads, rows, 4]))?,
            })
        } else {
            None
        };
        let k_i8 = region(mul(&[
            s.batch,
            s.kv_heads,
            padded_len(s.kv_len, K_BLOCK),
            s.kernel_head_dim,
        ]))?;
        let k_scale = region(mul(&[s.batch, s.kv_heads, s.kv_len.div_ceil(K_BLOCK), 4]))?;
        let k_mean = if s.smooth_k {
            Some(region(mul(&[s.batch, s.kv_heads, s.head_dim, 4]))?)
        } else {
            None
        };
        let segments = s.kv_len.div_ceil(MEAN_SEGMENT_ROWS);
        let k_partials = if s.smooth_k {
            Some(region(mul(&[
                s.batch, s.kv_heads, segments, s.head_dim, 4,
            ]))?)
        } else {
            None
        };
        let lse_bias = if s.lse_bias {
            Some(region(mul(&[s.batch, s.q_heads, s.qo_len, 4]))?)
        } else {
            None
        };
        let v_f16 = if s.copy_v {
            Some(region(mul(&[
                s.batch,
                s.kv_heads,
                s.kv_len,
                s.kernel_head_dim,
                2,
            ]))?)
        } else {
            None
        };
        let v8 = if s.v8 {
            let (b_h, hd) = (s.batch * s.kv_heads, s.kernel_head_dim);
            Some(V8Regions {
                partials: region(mul(&[b_h, segments, 3, s.head_dim, 4]))?,
                mean: region(mul(&[b_h, hd, 4]))?,
                scale: region(mul(&[b_h, 2, hd, 4]))?,
                vt: region(mul(&[b_h, hd, padded_len(s.kv_len, V8_TILE)]))?,
            })
        } else {
            None
        };
        let o_pad = if s.pad_output {
            Some(region(mul(&[
                s.batch,
                s.q_heads,
                s.qo_len,
                s.kernel_head_dim,
                2,
            ]))?)
        } else {
            None
        };
        // REGION_ALIGN (256) is a multiple of the 64 bytes a descriptor needs.
        let tma = if s.tma {
            Some(region(Some(TMA_MAPS_BYTES))?)
        } else {
            None
        };
        Ok(ScratchLayout {
            q,
            k_i8,
            k_scale,
            k_mean,
            k_partials,
            lse_bias,
            v_f16,
            v8,
            o_pad,
            tma,
            bytes: end,
        })
    }
}

fn too_large() -> Error {
    Error::TooLarge {
        tensor: "scratch",
        reason: "the quantized copies do not fit in usize bytes".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_disjoint_and_sized() {
        let shape = ScratchShape {
            batch: 2,
            q_heads: 6,
            kv_heads: 3,
            qo_len: 130,
            kv_len: 65,
            head_dim: 96,
            kernel_head_dim: 128,
            quantize_q: true,
            smooth_k: true,
            lse_bias: true,
            copy_v: true,
            pad_output: true,
            v8: false,
            tma: true,
        };
        let l = ScratchLayout::new(shape).unwrap();
        let regions = [
            (l.q.unwrap().i8, 2 * 6 * 256 * 128),
            (l.q.unwrap().scale, 2 * 6 * 256 * 4),
            (l.k_i8, 2 * 3 * 128 * 128),
            (l.k_scale, 2 * 3 * 2 * 4),
            (l.k_mean.unwrap(), 2 * 3 * 96 * 4),
            (l.k_partials.unwrap(), 2 * 3 * 96 * 4),
            (l.lse_bias.unwrap(), 2 * 6 * 130 * 4),
            (l.v_f16.unwrap(), 2 * 3 * 65 * 128 * 2),
            (l.o_pad.unwrap(), 2 * 6 * 130 * 128 * 2),
            (l.tma.unwrap(), TMA_MAPS_BYTES),
        ];
        for w in regions.windows(2) {
            assert_eq!(w[0].0 % REGION_ALIGN, 0);
            assert!(w[0].0 + w[0].1 <= w[1].0, "{regions:?}");
        }
        assert_eq!(l.bytes, regions[9].0 + regions[9].1);
        let none = ScratchLayout::new(ScratchShape {
            quantize_q: false,
            smooth_k: false,
            lse_bias: false,
            copy_v: false,
            pad_output: false,
            tma: false,
            ..shape
        })
        .unwrap();
        assert_eq!(
            (none.k_mean, none.lse_bias, none.v_f16, none.o_pad, none.tma),
            (None, None, None, None, None)
        );
        assert!(none.q.is_none() && none.bytes < l.bytes);
        let huge = ScratchLayout::new(ScratchShape {
            batch: usize::MAX / 2,
            ..shape
        });
        assert!(matches!(huge, Err(Error::TooLarge { .. })));
    }
}
