//! Attention tensors in .safetensors files, for the tools: the element types they read and write
//! ([`FileDType`]), decoding to f32 and encoding back, and where the rows of a 4-d tensor lie in
//! each [`Layout`]. The one safetensors reader of the crate: the `sageattn` tool and the bench both
//! use it.

use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensorError, TensorView as StView};

use crate::reference::host_tensor::HostTensor;
use crate::types::dtype::{DType, Layout};

/// The element types of the tensors the tools read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDType {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE binary32; rounded to f16 for the GPU.
    F32,
}

impl FileDType {
    /// The supported safetensors dtypes.
    pub const SUPPORTED: &'static str = "F16, BF16, F32";

    /// `None` for a dtype the tool does not read.
    pub fn from_safetensors(d: Dtype) -> Option<Self> {
        match d {
            Dtype::F16 => Some(FileDType::F16),
            Dtype::BF16 => Some(FileDType::BF16),
            Dtype::F32 => Some(FileDType::F32),
            _ => None,
        }
    }

    /// The safetensors dtype.
    pub fn to_safetensors(self) -> Dtype {
        match self {
            FileDType::F16 => Dtype::F16,
            FileDType::BF16 => Dtype::BF16,
            FileDType::F32 => Dtype::F32,
        }
    }

    /// The dtype the GPU computes in (f32 inputs are rounded to f16).
    pub fn gpu_dtype(self) -> DType {
        match self {
            FileDType::F16 | FileDType::F32 => DType::F16,
            FileDType::BF16 => DType::BF16,
        }
    }

    /// Name as safetensors spells it.
    pub fn name(self) -> &'static str {
        match self {
            FileDType::F16 => "F16",
            FileDType::BF16 => "BF16",
            FileDType::F32 => "F32",
        }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            FileDType::F16 | FileDType::BF16 => 2,
            FileDType::F32 => 4,
        }
    }

    /// Little-endian element `i` of `bytes` as f32 (exact for all three types).
    pub fn decode_at(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            FileDType::F16 => f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            FileDType::BF16 => bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            FileDType::F32 => f32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]),
        }
    }

    /// Appends `x`, rounded to this type (nearest even), in little-endian order.
    pub fn encode_into(self, x: f32, out: &mut Vec<u8>) {
        match self {
            FileDType::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
            FileDType::BF16 => out.extend_from_slice(&bf16::from_f32(x).to_le_bytes()),
            FileDType::F32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// Every element of a tensor, in the file's order, as f32 (exact), with its element type; the
/// safetensors dtype back when the tools do not read it.
pub fn decode(view: &StView<'_>) -> Result<(Vec<f32>, FileDType), Dtype> {
    let dtype = FileDType::from_safetensors(view.dtype()).ok_or(view.dtype())?;
    let bytes = view.data();
    let n = bytes.len() / dtype.size_bytes();
    Ok(((0..n).map(|i| dtype.decode_at(bytes, i)).collect(), dtype))
}

/// `values` rounded to `dtype` (nearest even), as little-endian bytes.
pub fn encode(values: &[f32], dtype: FileDType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size_bytes());
    for &x in values {
        dtype.encode_into(x, &mut out);
    }
    out
}

/// The values of a 4-d tensor of `dtype` whose `bytes` hold `file_shape` stored in `layout`, as f32
/// (exact) in logical contiguous order.
pub fn decode_logical(
    bytes: &[u8],
    dtype: FileDType,
    file_shape: [usize; 4],
    layout: Layout,
) -> HostTensor {
    let logical = logical_shape(file_shape, layout);
    let [batch, heads, seq, dim] = logical;
    let mut data = Vec::with_capacity(batch * heads * seq * dim);
    for b in 0..batch {
        for hd in 0..heads {
            for s in 0..seq {
                let row = row_offset(logical, layout, b, hd, s);
                data.extend((row..row + dim).map(|i| dtype.decode_at(bytes, i)));
            }
        }
    }
    HostTensor::from_parts(
        data,
        logical,
        HostTensor::contiguous_strides(logical, false),
    )
}

/// Logical `[batch, heads, seq, head_dim]` of a shape stored in `layout`. The two layouts only swap
/// dims 1 and 2, so the same function converts back.
pub fn logical_shape(file_shape: [usize; 4], layout: Layout) -> [usize; 4] {
    let [a, b, c, d] = file_shape;
    match layout {
        Layout::Hnd => [a, b, c, d],
        Layout::Nhd => [a, c, b, d],
    }
}

/// The file shape of a logical shape stored in `layout`.
pub fn file_shape(logical: [usize; 4], layout: Layout) -> [usize; 4] {
    logical_shape(logical, layout)
}

/// Offset of logical row `(b, h, s)` in a contiguous buffer of logical shape `shape` stored in
/// `layout`.
pub fn row_offset(shape: [usize; 4], layout: Layout, b: usize, h: usize, s: usize) -> usize {
    let [_, heads, seq, dim] = shape;
    match layout {
        Layout::Hnd => ((b * heads + h) * seq + s) * dim,
        Layout::Nhd => ((b * seq + s) * heads + h) * dim,
    }
}

/// Plain-words description of a safetensors parse error.
pub fn describe_error(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            "it is shorter than the 8-byte header length that starts every such file".into()
        }
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => {
            "its first 8 bytes are not a valid header length".into()
        }
        SafeTensorError::InvalidHeader => "its header is not UTF-8 text".into(),
        SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization
        | SafeTensorError::JsonError(_) => "its header is not valid safetensors JSON".into(),
        SafeTensorError::MetadataIncompleteBuffer => {
            "the size of its data section does not match its header (truncated file?)".into()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("the header gives invalid data offsets for tensor `{name}`")
        }
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow => {
            "its header has inconsistent shapes, dtypes or offsets".into()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_gives_the_rounded_values() {
        let values = [0.0f32, 1.5, -2.25, 65504.0];
        for dtype in [FileDType::F16, FileDType::BF16, FileDType::F32] {
            let bytes = encode(&values, dtype);
            assert_eq!(bytes.len(), values.len() * dtype.size_bytes());
            let view = StView::new(dtype.to_safetensors(), vec![1, 1, 1, 4], &bytes).unwrap();
            let (back, got) = decode(&view).unwrap();
            assert_eq!(got, dtype);
            let want: Vec<f32> = match dtype {
                FileDType::BF16 => values.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
                _ => values.to_vec(),
            };
            assert_eq!(back, want, "{}", dtype.name());
        }
        let ints = [0u8; 8];
        let view = StView::new(Dtype::I32, vec![2], &ints).unwrap();
        assert_eq!(decode(&view).unwrap_err(), Dtype::I32);
    }

    #[test]
    fn logical_order_from_either_layout() {
        // File shape [1, 2 (seq), 3 (heads), 8] in NHD; value = 100 s + 10 h + d.
        let file = [1, 2, 3, 8];
        let values: Vec<f32> = (0..48)
            .map(|i| (100 * (i / 24) + 10 * ((i / 8) % 3) + i % 8) as f32)
            .collect();
        let bytes = encode(&values, FileDType::F32);
        let t = decode_logical(&bytes, FileDType::F32, file, Layout::Nhd);
        assert_eq!(t.shape, [1, 3, 2, 8]);
        assert_eq!(t.get(0, 2, 1, 5), 125.0);
        assert_eq!(file_shape(t.shape, Layout::Nhd), file);
        let t = decode_logical(&bytes, FileDType::F32, file, Layout::Hnd);
        assert_eq!(
            t.get(0, 1, 2, 5),
            values[row_offset(file, Layout::Hnd, 0, 1, 2) + 5]
        );
    }
}
