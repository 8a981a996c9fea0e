//! [`Tensor`]: an owned, contiguous device tensor (zeros, NaN poison, or host data), and its
//! copies to and from the host.

use super::view::{base_address, ErasedSlice, ErasedSliceMut, TensorView, TensorViewMut};
use crate::device::runtime::Runtime;
use crate::types::dtype::{DType, Element, Layout};
use crate::types::error::{CudaResultExt, Error, Result};
use cudarc::driver::{CudaSlice, DeviceRepr};
use half::{bf16, f16};
use std::fmt;

/// The device buffer of a [`Tensor`]. 16-bit floats (f16, bf16) are stored as their bits, so
/// that no `DeviceRepr` impl for the `half` types is needed; the [`DType`] is kept beside it.
enum Buffer {
    Bits16(CudaSlice<u16>),
    F32(CudaSlice<f32>),
    I8(CudaSlice<i8>),
}

impl Buffer {
    fn erased(&self) -> &dyn ErasedSlice {
        match self {
            Buffer::Bits16(s) => s,
            Buffer::F32(s) => s,
            Buffer::I8(s) => s,
        }
    }
    fn erased_mut(&mut self) -> &mut dyn ErasedSliceMut {
        match self {
            Buffer::Bits16(s) => s,
            Buffer::F32(s) => s,
            Buffer::I8(s) => s,
        }
    }
}

/// An owned, contiguous device tensor of logical shape `[batch, heads, seq, head_dim]` stored in
/// a [`Layout`]. Memory is always initialised (zeros, NaN poison, or host data).
pub struct Tensor {
    buf: Buffer,
    /// Base address of `buf`, read once at creation.
    ptr: u64,
    dtype: DType,
    shape: [usize; 4],
    strides: [i64; 4],
    layout: Layout,
}

/// Number of elements of a non-empty shape whose byte size fits in i64.
fn checked_numel(tensor: &'static str, dtype: DType, shape: [usize; 4]) -> Result<usize> {
    if shape.contains(&0) {
        return Err(Error::EmptyTensor { tensor, shape });
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size_bytes()).map(|b| (n, b)))
        .filter(|&(_, bytes)| i64::try_from(bytes).is_ok())
        .map(|(n, _)| n)
        .ok_or_else(|| Error::TooLarge {
            tensor,
            reason: format!("{shape:?} elements of {dtype} do not fit in i64 bytes"),
        })
}

/// Memory index of every logical index, in logical order `[b][h][s][d]`.
fn for_each_logical(shape: [usize; 4], strides: [i64; 4], mut f: impl FnMut(usize, usize)) {
    // Strides are contiguous strides of a validated shape: all non-negative and every offset
    // fits in usize (the buffer exists).
    let st = strides.map(|s| s as usize);
    let mut logical = 0;
    for b in 0..shape[0] {
        for h in 0..shape[1] {
            for s in 0..shape[2] {
                let row = b * st[0] + h * st[1] + s * st[2];
                for d in 0..shape[3] {
                    f(logical, row + d);
                    logical += 1;
                }
            }
        }
    }
}

/// Converts logical-order f32 data to memory order with `convert` and uploads it.
fn upload<S: DeviceRepr + Copy>(
    rt: &Runtime,
    dtype: DType,
    data: &[f32],
    shape: [usize; 4],
    strides: [i64; 4],
    convert: impl Fn(f32) -> S,
) -> Result<CudaSlice<S>> {
    let mut host = vec![convert(0.0); data.len()];
    for_each_logical(shape, strides, |logical, mem| {
        host[mem] = convert(data[logical]);
    });
    rt.stream()
        .clone_htod(&host)
        .with_op(|| format!("copying {} elements of {dtype} to the device", data.len()))
}

/// Downloads a buffer and converts it with `convert` to f32 in logical order.
fn download<S: DeviceRepr + Copy + Default>(
    rt: &Runtime,
    dtype: DType,
    slice: &CudaSlice<S>,
    shape: [usize; 4],
    strides: [i64; 4],
    convert: impl Fn(S) -> f32,
) -> Result<Vec<f32>> {
    let host = rt
        .stream()
        .clone_dtoh(slice)
        .with_op(|| format!("copying {} elements of {dtype} to the host", slice.len()))?;
    let mut out = vec![0.0f32; host.len()];
    for_each_logical(shape, strides, |logical, mem| {
        out[logical] = convert(host[mem]);
    });
    Ok(out)
}

impl Tensor {
    /// A zero-filled tensor on the runtime's device, allocated on its stream.
    pub fn alloc(rt: &Runtime, dtype: DType, shape: [usize; 4], layout: Layout) -> Result<Self> {
        let numel = checked_numel("tensor", dtype, shape)?;
        let buf = match dtype {
            // All-zero bits are +0.0 for f16 and bf16.
            DType::F16 | DType::BF16 => Buffer::Bits16(rt.alloc_zeros(numel)?),
            DType::F32 => Buffer::F32(rt.alloc_zeros(numel)?),
            DType::I8 => Buffer::I8(rt.alloc_zeros(numel)?),
        };
        Ok(Self::from_parts(buf, dtype, shape, layout))
    }

    /// A tensor filled with `0xFF` bytes: NaN for f16/bf16/f32 (poison, to catch elements a
    /// kernel forgets to write) and -1 for i8.
    pub fn alloc_filled_nan(
        rt: &Runtime,
        dtype: DType,
        shape: [usize; 4],
        layout: Layout,
    ) -> Result<Self> {
        let mut t = Self::alloc(rt, dtype, shape, layout)?;
        // SAFETY: any bit pattern is a valid u16, f32 or i8.
        unsafe {
            match &mut t.buf {
                Buffer::Bits16(s) => rt.memset_bytes(s, 0xFF)?,
                Buffer::F32(s) => rt.memset_bytes(s, 0xFF)?,
                Buffer::I8(s) => rt.memset_bytes(s, 0xFF)?,
            }
        }
        Ok(t)
    }

    /// Uploads `data`, given in logical contiguous order `[b][h][s][d]`, converting to `dtype`
    /// (see [`Element::from_f32`]) and storing it in `layout`.
    ///
    /// Errors: [`Error::ShapeMismatch`] if `data.len()` is not the shape's element count.
    pub fn from_host_f32(
        rt: &Runtime,
        data: &[f32],
        dtype: DType,
        shape: [usize; 4],
        layout: Layout,
    ) -> Result<Self> {
        let numel = checked_numel("tensor", dtype, shape)?;
        if data.len() != numel {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "host data has {} elements but shape {shape:?} needs {numel}",
                    data.len()
                ),
            });
        }
        let strides = layout.contiguous_strides(shape);
        let (d, sh, st) = (data, shape, strides);
        let buf = match dtype {
            DType::F16 => Buffer::Bits16(upload(rt, dtype, d, sh, st, |x| {
                f16::from_f32(x).to_bits()
            })?),
            DType::BF16 => Buffer::Bits16(upload(rt, dtype, d, sh, st, |x| {
                bf16::from_f32(x).to_bits()
            })?),
            DType::F32 => Buffer::F32(upload(rt, dtype, d, sh, st, |x| x)?),
            DType::I8 => Buffer::I8(upload(rt, dtype, d, sh, st, <i8 as Element>::from_f32)?),
        };
        Ok(Self::from_parts(buf, dtype, shape, layout))
    }

    fn from_parts(buf: Buffer, dtype: DType, shape: [usize; 4], layout: Layout) -> Self {
        Tensor {
            ptr: base_address(buf.erased()),
            buf,
            dtype,
            shape,
            strides: layout.contiguous_strides(shape),
            layout,
        }
    }

    /// Downloads the tensor as f32 in logical order `[b][h][s][d]` (waits for the copy).
    ///
    /// Errors: [`Error::WrongDevice`] if `rt` is on another device.
    pub fn to_host_f32(&self, rt: &Runtime) -> Result<Vec<f32>> {
        let ordinal = self.ordinal();
        if ordinal != rt.ordinal() {
            return Err(Error::WrongDevice {
                tensor: "tensor",
                expected: rt.ordinal(),
                got: ordinal,
            });
        }
        let (dt, sh, st) = (self.dtype, self.shape, self.strides);
        match (&self.buf, dt) {
            (Buffer::Bits16(s), DType::BF16) => {
                download(rt, dt, s, sh, st, |b| bf16::from_bits(b).to_f32())
            }
            (Buffer::Bits16(s), _) => download(rt, dt, s, sh, st, |b| f16::from_bits(b).to_f32()),
            (Buffer::F32(s), _) => download(rt, dt, s, sh, st, |x| x),
            (Buffer::I8(s), _) => download(rt, dt, s, sh, st, f32::from),
        }
    }

    /// A read-only view of the whole tensor.
    pub fn view(&self) -> TensorView<'_> {
        let geom = (self.dtype, self.shape, self.strides);
        TensorView::of_buffer(self.buf.erased(), self.ptr, geom)
    }

    /// A writable view of the whole tensor.
    pub fn view_mut(&mut self) -> TensorViewMut<'_> {
        let geom = (self.dtype, self.shape, self.strides);
        TensorViewMut::of_buffer(self.buf.erased_mut(), self.ptr, geom)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Logical shape `[batch, heads, seq, head_dim]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }
    /// Contiguous strides of the layout, logical order.
    pub fn strides(&self) -> [i64; 4] {
        self.strides
    }
    /// Memory layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Device ordinal of the buffer.
    pub fn ordinal(&self) -> usize {
        self.buf.erased().ordinal()
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("layout", &self.layout)
            .field("ordinal", &self.ordinal())
            .finish()
    }
}
