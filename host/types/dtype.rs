//! Element types and memory layouts of attention tensors: plain values, no device code.
//!
//! Every attention tensor is 4-d. Whatever its memory layout, a tensor reports its **logical shape
//! `[batch, heads, seq, head_dim]`** and its **strides in elements, in the same logical order**
//! (see `docs/design.md`). [`Layout`] only decides the default contiguous strides.

use half::{bf16, f16};
use std::fmt;

/// Alignment, in bytes, of the base pointer and of every row (the kernels use 16-byte loads).
pub const ROW_ALIGN_BYTES: usize = 16;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE 754 binary32.
    F32,
    /// Signed 8-bit integer (quantized data).
    I8,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::I8 => 1,
        }
    }

    /// Lower-case name (`"f16"`, `"bf16"`, `"f32"`, `"i8"`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::I8 => "i8",
        }
    }

    /// The multiple, in elements, that every non-trivial seq/head/batch stride must be: 8 elements
    /// (the contract) and at least 16 bytes (so every row starts on a 16-byte boundary).
    /// f16/bf16/f32: 8, i8: 16.
    pub const fn stride_multiple(self) -> usize {
        let sixteen_bytes = ROW_ALIGN_BYTES / self.size_bytes();
        if sixteen_bytes > 8 {
            sixteen_bytes
        } else {
            8
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Memory layout of a contiguous attention tensor. Shapes and strides are always reported in
/// logical order `[batch, heads, seq, head_dim]`; the layout only decides the memory order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Memory order (batch, heads, seq, dim).
    Hnd,
    /// Memory order (batch, seq, heads, dim).
    Nhd,
}

impl Layout {
    /// Contiguous strides, in elements and in logical order `[batch, heads, seq, head_dim]`, of a
    /// tensor of logical shape `shape` stored in this layout.
    ///
    /// Never panics: a stride that does not fit in `i64` saturates at `i64::MAX`, which
    /// [`TensorView::validate`](crate::TensorView::validate) then rejects as
    /// [`Error::TooLarge`](crate::Error::TooLarge) (unless its dimension has
    /// size 1, where the stride is never multiplied by a non-zero index).
    pub fn contiguous_strides(self, shape: [usize; 4]) -> [i64; 4] {
        let [_, h, s, d] = shape.map(|x| i64::try_from(x).unwrap_or(i64::MAX));
        match self {
            Layout::Hnd => {
                let ss = d;
                let sh = s.saturating_mul(ss);
                let sb = h.saturating_mul(sh);
                [sb, sh, ss, 1]
            }
            Layout::Nhd => {
                let sh = d;
                let ss = h.saturating_mul(sh);
                let sb = s.saturating_mul(ss);
                [sb, sh, ss, 1]
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
    impl Sealed for i8 {}
}

/// A Rust element type with a [`DType`]: `half::f16`, `half::bf16`, `f32`, `i8`.
///
/// Sealed: the library relies on `DTYPE` describing the type's size exactly (bounds checks are
/// computed from it), and on every bit pattern being a valid value.
///
/// (No `DeviceRepr` bound: cudarc implements `DeviceRepr` for the `half` types only with its `f16`
/// feature. Views accept `CudaSlice<half::f16>` either way; [`Tensor`](crate::Tensor) stores 16-bit floats as
/// their bits.)
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The element type tag.
    const DTYPE: DType;

    /// Converts from f32: round to nearest even for the float types; for `i8`, round half to
    /// even and saturate to `[-128, 127]`, NaN becoming 0.
    fn from_f32(x: f32) -> Self;

    /// Converts to f32 (exact for every type).
    fn to_f32(self) -> f32;
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for i8 {
    const DTYPE: DType = DType::I8;
    fn from_f32(x: f32) -> Self {
        // `as` saturates and maps NaN to 0.
        x.round_ties_even() as i8
    }
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
}
