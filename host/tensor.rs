//! Tensors: element types, layouts, borrowed views of device memory and an owned device tensor.
//!
//! Every attention tensor is 4-d. Whatever its memory layout, a view reports its **logical shape
//! `[batch, heads, seq, head_dim]`** and its **strides in elements, in the same logical order**
//! (see `docs/design.md`). [`Layout`] only decides the default contiguous strides.
//!
//! Views made from a cudarc [`CudaSlice`] keep cudarc's stream-ordering guarantees: the pointer
//! is only handed out together with an [`AccessGuard`] (see [`TensorView::device_ptr`]). Views made
//! from raw pointers ([`TensorView::from_raw`]) are the caller's responsibility.

use crate::error::{CudaResultExt, Error, Result};
use crate::runtime::Runtime;
use cudarc::driver::{
    result as cu_result, sys, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    DeviceSlice, SyncOnDrop,
};
use half::{bf16, f16};
use std::fmt;

/// Alignment, in bytes, of the base pointer and of every row (the kernels use 16-byte loads).
pub const ROW_ALIGN_BYTES: usize = 16;

/// Name used in errors raised by view constructors, which do not know the tensor's role.
const UNNAMED: &str = "view";

// ---------------------------------------------------------------------------------------------
// DType, Layout, Element
// ---------------------------------------------------------------------------------------------

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
    /// [`TensorView::validate`] then rejects as [`Error::TooLarge`] (unless its dimension has
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
/// feature. Views accept `CudaSlice<half::f16>` either way; [`Tensor`] stores 16-bit floats as
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

// ---------------------------------------------------------------------------------------------
// Type erasure over CudaSlice<T>
// ---------------------------------------------------------------------------------------------

/// A `CudaSlice<T>` with `T` erased (the element type is tracked separately as a [`DType`]).
trait ErasedSlice: Send + Sync {
    /// Size of the allocation in bytes.
    fn num_bytes(&self) -> usize;
    /// Device ordinal of the allocation.
    fn ordinal(&self) -> usize;
    /// The slice's own stream.
    fn own_stream(&self) -> &CudaStream;
    /// cudarc's read access: `stream` waits for earlier writes; the guard records the read.
    fn read_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>);
}

/// Write access on top of [`ErasedSlice`].
trait ErasedSliceMut: ErasedSlice {
    /// cudarc's write access: `stream` waits for earlier reads and writes; the guard records the
    /// write.
    fn write_ptr<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>);
}

impl<T> ErasedSlice for CudaSlice<T> {
    fn num_bytes(&self) -> usize {
        DeviceSlice::num_bytes(self)
    }
    fn ordinal(&self) -> usize {
        CudaSlice::ordinal(self)
    }
    fn own_stream(&self) -> &CudaStream {
        DeviceSlice::stream(self)
    }
    fn read_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        DevicePtr::device_ptr(self, stream)
    }
}

impl<T> ErasedSliceMut for CudaSlice<T> {
    fn write_ptr<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        DevicePtrMut::device_ptr_mut(self, stream)
    }
}

/// Reads the base address of a slice. cudarc only hands the address out through
/// `device_ptr`, which makes the given stream wait for the slice's last write; we pass the
/// slice's own stream (a no-op unless the last write happened on another stream) and forget the
/// guard, which records nothing because no access is made through this address.
fn base_address(slice: &dyn ErasedSlice) -> u64 {
    let (ptr, guard) = slice.read_ptr(slice.own_stream());
    // The guard only holds references; forgetting it leaks nothing.
    std::mem::forget(guard);
    ptr
}

/// Keeps a view's memory access ordered with cudarc's stream tracking.
///
/// Returned with the pointer by [`TensorView::device_ptr`] / [`TensorViewMut::device_ptr_mut`].
/// Keep it alive until the kernel that uses the pointer has been launched, then drop it: for views
/// of a [`CudaSlice`], dropping it records the access on the launch stream, so later users of the
/// slice on other streams wait for the kernel. For raw views it does nothing.
#[must_use = "drop the guard only after the kernel using the pointer has been launched"]
pub struct AccessGuard<'a> {
    _sync: Option<SyncOnDrop<'a>>,
}

impl AccessGuard<'_> {
    /// A guard that does nothing (raw views).
    fn none() -> Self {
        AccessGuard { _sync: None }
    }
}

impl fmt::Debug for AccessGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessGuard")
            .field("tracked", &self._sync.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry shared by both views
// ---------------------------------------------------------------------------------------------

/// Pointer, type, shape and strides of a view, with the pure validation logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    ptr: u64,
    dtype: DType,
    shape: [usize; 4],
    strides: [i64; 4],
    ordinal: usize,
}

/// Names of the logical dimensions, for messages.
const DIM_NAMES: [&str; 4] = ["batch", "heads", "seq", "head_dim"];

/// Extent of a strided view: elements and bytes from the base to one past the furthest element.
#[derive(Debug, Clone, Copy)]
struct Extent {
    elems: u64,
    bytes: u64,
}

impl Geometry {
    fn check_non_negative(&self, tensor: &'static str) -> Result<()> {
        for (i, &st) in self.strides.iter().enumerate() {
            if st < 0 {
                return Err(Error::InvalidStride {
                    tensor,
                    reason: format!(
                        "{} stride is {st} (strides {:?}); negative strides are not supported",
                        DIM_NAMES[i], self.strides
                    ),
                });
            }
        }
        Ok(())
    }

    /// Furthest element + 1, in elements and bytes, and the number of elements, all of which must
    /// fit in `i64`; the end address must fit in `u64`. Assumes non-negative strides. An empty
    /// view has extent 0.
    /// `[first byte, one past the last byte)` of a valid view, `None` if its extent is invalid.
    fn byte_range(&self) -> Option<(u64, u64)> {
        let e = self.extent("view").ok()?;
        Some((self.ptr, self.ptr.checked_add(e.bytes)?))
    }

    fn extent(&self, tensor: &'static str) -> Result<Extent> {
        let too_large = |reason: String| Error::TooLarge { tensor, reason };
        let mut numel: i64 = 1;
        let mut last: i64 = 0;
        for ((&n, &stride), dim_name) in self.shape.iter().zip(&self.strides).zip(DIM_NAMES) {
            let dim = i64::try_from(n).map_err(|_| {
                too_large(format!(
                    "{dim_name} = {n} does not fit in i64 (shape {:?})",
                    self.shape
                ))
            })?;
            numel = numel.checked_mul(dim).ok_or_else(|| {
                too_large(format!(
                    "element count of shape {:?} overflows i64",
                    self.shape
                ))
            })?;
            if dim == 0 {
                continue;
            }
            last = (dim - 1)
                .checked_mul(stride)
                .and_then(|o| last.checked_add(o))
                .ok_or_else(|| {
                    too_large(format!(
                        "element offset of the last element overflows i64 (shape {:?}, strides {:?})",
                        self.shape, self.strides
                    ))
                })?;
        }
        if numel == 0 {
            return Ok(Extent { elems: 0, bytes: 0 });
        }
        let elems = last.checked_add(1).ok_or_else(|| {
            too_large(format!(
                "element extent overflows i64 (shape {:?}, strides {:?})",
                self.shape, self.strides
            ))
        })?;
        // `size_bytes` is 1, 2 or 4, so the cast cannot truncate.
        let bytes = elems
            .checked_mul(self.dtype.size_bytes() as i64)
            .ok_or_else(|| {
                too_large(format!(
                    "byte extent ({elems} elements of {}) overflows i64 (shape {:?}, strides {:?})",
                    self.dtype, self.shape, self.strides
                ))
            })?;
        // Both are positive here.
        let (elems, bytes) = (elems as u64, bytes as u64);
        if self.ptr.checked_add(bytes).is_none() {
            return Err(too_large(format!(
                "base pointer {:#x} + {bytes} bytes overflows the 64-bit address space",
                self.ptr
            )));
        }
        Ok(Extent { elems, bytes })
    }

    /// The pure checks, in the documented order; returns the extent.
    fn validate(&self, tensor: &'static str, origin_bytes: Option<usize>) -> Result<Extent> {
        // 1. Non-empty.
        if self.shape.contains(&0) {
            return Err(Error::EmptyTensor {
                tensor,
                shape: self.shape,
            });
        }
        // 2. Non-negative strides, unit stride on head_dim.
        self.check_non_negative(tensor)?;
        if self.strides[3] != 1 {
            return Err(Error::InvalidStride {
                tensor,
                reason: format!(
                    "head_dim stride is {} (strides {:?}); it must be 1 (each row contiguous)",
                    self.strides[3], self.strides
                ),
            });
        }
        // 3. Row alignment of seq/head/batch strides (dims of size 1 are never stepped along).
        let multiple = self.dtype.stride_multiple();
        for ((&n, &stride), dim_name) in self.shape.iter().zip(&self.strides).zip(DIM_NAMES).take(3)
        {
            // `multiple` is 8 or 16, so the cast cannot truncate; `stride` is non-negative.
            if n > 1 && stride % multiple as i64 != 0 {
                return Err(Error::InvalidStride {
                    tensor,
                    reason: format!(
                        "{dim_name} stride is {stride} elements (strides {:?}), not a multiple of \
                         {multiple} elements of {}: every row must start on a \
                         {ROW_ALIGN_BYTES}-byte boundary because the kernels read rows with \
                         {ROW_ALIGN_BYTES}-byte vector loads",
                        self.strides, self.dtype
                    ),
                });
            }
        }
        // 4. Base pointer.
        if self.ptr == 0 {
            return Err(Error::NotDeviceMemory { tensor, ptr: 0 });
        }
        if !self.ptr.is_multiple_of(ROW_ALIGN_BYTES as u64) {
            return Err(Error::Misaligned {
                tensor,
                reason: format!(
                    "base pointer {:#x} is not {ROW_ALIGN_BYTES}-byte aligned (offset {} bytes); \
                     the kernels read rows with {ROW_ALIGN_BYTES}-byte vector loads",
                    self.ptr,
                    self.ptr % ROW_ALIGN_BYTES as u64
                ),
            });
        }
        // 5. Extents fit.
        let extent = self.extent(tensor)?;
        // 6. Inside the originating slice.
        if let Some(available) = origin_bytes {
            check_in_bounds(tensor, extent, available, self)?;
        }
        Ok(extent)
    }

    /// Rejects strides under which two logical elements share an address (a write race for
    /// outputs). Sufficient test: taking the dimensions of size > 1 by increasing stride, each
    /// stride must exceed the largest offset reachable with the dimensions before it. Assumes
    /// [`Geometry::extent`] succeeded (so the sums below fit in i64).
    fn check_no_self_overlap(&self, tensor: &'static str) -> Result<()> {
        let mut dims: Vec<usize> = (0..4).filter(|&i| self.shape[i] > 1).collect();
        dims.sort_by_key(|&i| self.strides[i]);
        let mut reach: i64 = 0;
        for i in dims {
            let stride = self.strides[i];
            if stride <= reach {
                return Err(Error::InvalidStride {
                    tensor,
                    reason: format!(
                        "output elements overlap: {} stride {} does not step past the {reach} \
                         elements spanned by the smaller strides (shape {:?}, strides {:?})",
                        DIM_NAMES[i], stride, self.shape, self.strides
                    ),
                });
            }
            // Fits: bounded by the extent, which fits in i64.
            let dim = self.shape[i] as i64;
            reach = reach.saturating_add((dim - 1).saturating_mul(stride));
        }
        Ok(())
    }

    fn check_ordinal(&self, tensor: &'static str, expected: usize) -> Result<()> {
        if self.ordinal != expected {
            return Err(Error::WrongDevice {
                tensor,
                expected,
                got: self.ordinal,
            });
        }
        Ok(())
    }

    /// Device check; for raw views, driver-side checks that the first and the last byte are
    /// device memory of the runtime's device.
    fn check_memory(&self, tensor: &'static str, tracked: bool, rt: &Runtime) -> Result<()> {
        let expected = rt.ordinal();
        self.check_ordinal(tensor, expected)?;
        if tracked {
            return Ok(());
        }
        let extent = self.validate(tensor, None)?;
        rt.bind()?;
        check_device_pointer(tensor, self.ptr, expected)?;
        // extent.bytes >= 1 and ptr + bytes fits (validated).
        let last = self.ptr + (extent.bytes - 1);
        check_device_pointer(tensor, last, expected)
    }
}

fn check_in_bounds(
    tensor: &'static str,
    extent: Extent,
    available: usize,
    g: &Geometry,
) -> Result<()> {
    if extent.bytes > available as u64 {
        return Err(Error::OutOfBounds {
            tensor,
            reason: format!(
                "the view spans {} elements ({} bytes of {}; shape {:?}, strides {:?}) but its \
                 slice holds only {} bytes",
                extent.elems, extent.bytes, g.dtype, g.shape, g.strides, available
            ),
        });
    }
    Ok(())
}

/// Construction checks for views of a slice: non-negative strides, extent fits, extent inside the
/// slice.
fn check_slice_view(g: &Geometry, available_bytes: usize) -> Result<()> {
    g.check_non_negative(UNNAMED)?;
    let extent = g.extent(UNNAMED)?;
    check_in_bounds(UNNAMED, extent, available_bytes, g)
}

// ---------------------------------------------------------------------------------------------
// TensorView
// ---------------------------------------------------------------------------------------------

/// A read-only view of caller-owned device memory with a logical shape
/// `[batch, heads, seq, head_dim]` and element strides in the same order.
pub struct TensorView<'a> {
    geom: Geometry,
    /// The slice the view was made from (`None` for raw views).
    origin: Option<&'a dyn ErasedSlice>,
}

impl<'a> TensorView<'a> {
    /// A view of a whole slice with the contiguous strides of `layout`.
    ///
    /// Errors: [`Error::TooLarge`] if the extent overflows, [`Error::OutOfBounds`] if the shape
    /// needs more elements than the slice holds. Shape rules are checked by
    /// [`TensorView::validate`].
    pub fn from_slice<T: Element>(
        slice: &'a CudaSlice<T>,
        shape: [usize; 4],
        layout: Layout,
    ) -> Result<Self> {
        Self::from_slice_strided(slice, shape, layout.contiguous_strides(shape))
    }

    /// A view of a slice with explicit strides (elements, logical order), starting at the slice's
    /// first element.
    ///
    /// Errors: [`Error::InvalidStride`] for a negative stride, [`Error::TooLarge`] if the extent
    /// overflows, [`Error::OutOfBounds`] if the furthest element lies past the slice's end.
    pub fn from_slice_strided<T: Element>(
        slice: &'a CudaSlice<T>,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<Self> {
        let origin: &'a dyn ErasedSlice = slice;
        Self::from_erased(origin, T::DTYPE, shape, strides)
    }

    fn from_erased(
        origin: &'a dyn ErasedSlice,
        dtype: DType,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<Self> {
        let geom = Geometry {
            ptr: base_address(origin),
            dtype,
            shape,
            strides,
            ordinal: origin.ordinal(),
        };
        check_slice_view(&geom, origin.num_bytes())?;
        Ok(TensorView {
            geom,
            origin: Some(origin),
        })
    }

    /// A view of raw device memory. Nothing is checked here; call [`TensorView::validate`] and,
    /// before a launch, [`TensorView::check_device_memory`].
    ///
    /// # Safety
    ///
    /// For as long as the view (or anything launched with its pointer) is in use, `ptr` must point
    /// to device memory of device `ordinal` that is valid to read for the view's whole extent
    /// (from `ptr` to the furthest element given by `shape` and `strides`), and nothing may write
    /// it concurrently. Ordering with other streams is the caller's job: the view has no
    /// stream tracking.
    pub unsafe fn from_raw(
        ptr: u64,
        dtype: DType,
        shape: [usize; 4],
        strides: [i64; 4],
        ordinal: usize,
    ) -> Self {
        TensorView {
            geom: Geometry {
                ptr,
                dtype,
                shape,
                strides,
                ordinal,
            },
            origin: None,
        }
    }

    /// The device address, for a kernel launched on `stream`, and the guard that orders the
    /// access. For a view of a [`CudaSlice`], `stream` first waits for earlier writes of the slice
    /// (on any stream), and dropping the guard records the read so that later writers wait for
    /// it; keep the guard alive until the kernel has been launched. Raw views return a no-op
    /// guard.
    pub fn device_ptr<'s>(&'s self, stream: &'s CudaStream) -> (u64, AccessGuard<'s>) {
        match self.origin {
            Some(origin) => {
                let (ptr, sync) = origin.read_ptr(stream);
                (ptr, AccessGuard { _sync: Some(sync) })
            }
            None => (self.geom.ptr, AccessGuard::none()),
        }
    }

    /// Checks that the kernels can use this view, in this order: every dimension ≥ 1; strides
    /// non-negative and head_dim stride 1; seq/heads/batch strides (of dimensions larger than 1)
    /// multiples of [`DType::stride_multiple`] elements (16-byte rows); base pointer non-null and
    /// 16-byte aligned; element count, element extent and byte extent fit in `i64`; for views of a
    /// slice, the extent lies inside the slice. Pure: no driver call, never panics. `name` is
    /// used in the error.
    pub fn validate(&self, name: &'static str) -> Result<()> {
        self.geom
            .validate(name, self.origin.map(|o| o.num_bytes()))
            .map(|_| ())
    }

    /// Checks that the view is on the runtime's device ([`Error::WrongDevice`]); for raw views
    /// also asks the driver that its first and last bytes are device or managed memory of that
    /// device ([`Error::NotDeviceMemory`] / [`Error::WrongDevice`]), after running
    /// [`TensorView::validate`]. Binds the runtime's context to the calling thread.
    pub fn check_device_memory(&self, name: &'static str, rt: &Runtime) -> Result<()> {
        self.geom.check_memory(name, self.origin.is_some(), rt)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.geom.dtype
    }
    /// Logical shape `[batch, heads, seq, head_dim]`.
    pub fn shape(&self) -> [usize; 4] {
        self.geom.shape
    }
    /// Strides in elements, logical order `[batch, heads, seq, head_dim]`.
    pub fn strides(&self) -> [i64; 4] {
        self.geom.strides
    }
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.geom.shape[0]
    }
    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.geom.shape[1]
    }
    /// Sequence length.
    pub fn seq(&self) -> usize {
        self.geom.shape[2]
    }
    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.geom.shape[3]
    }
    /// Device ordinal of the memory.
    pub fn ordinal(&self) -> usize {
        self.geom.ordinal
    }
    /// The bytes the view spans, `[start, end)` (`None` if the extent is invalid); used to
    /// refuse outputs that overlap inputs.
    pub(crate) fn byte_range(&self) -> Option<(u64, u64)> {
        self.geom.byte_range()
    }

    /// Whether the view was made from a cudarc slice (stream-tracked) rather than a raw pointer.
    pub fn is_tracked(&self) -> bool {
        self.origin.is_some()
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("ptr", &format_args!("{:#x}", self.geom.ptr))
            .field("dtype", &self.geom.dtype)
            .field("shape", &self.geom.shape)
            .field("strides", &self.geom.strides)
            .field("ordinal", &self.geom.ordinal)
            .field("tracked", &self.origin.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// TensorViewMut
// ---------------------------------------------------------------------------------------------

/// A writable view of caller-owned device memory (an output), with the same geometry rules as
/// [`TensorView`] plus: its elements must not overlap.
pub struct TensorViewMut<'a> {
    geom: Geometry,
    origin: Option<&'a mut dyn ErasedSliceMut>,
}

impl<'a> TensorViewMut<'a> {
    /// A writable view of a whole slice with the contiguous strides of `layout`.
    /// Errors as [`TensorView::from_slice`].
    pub fn from_slice<T: Element>(
        slice: &'a mut CudaSlice<T>,
        shape: [usize; 4],
        layout: Layout,
    ) -> Result<Self> {
        Self::from_slice_strided(slice, shape, layout.contiguous_strides(shape))
    }

    /// A writable view of a slice with explicit strides (elements, logical order).
    /// Errors as [`TensorView::from_slice_strided`].
    pub fn from_slice_strided<T: Element>(
        slice: &'a mut CudaSlice<T>,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<Self> {
        let origin: &'a mut dyn ErasedSliceMut = slice;
        Self::from_erased(origin, T::DTYPE, shape, strides)
    }

    fn from_erased(
        origin: &'a mut dyn ErasedSliceMut,
        dtype: DType,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<Self> {
        let geom = Geometry {
            ptr: base_address(&*origin),
            dtype,
            shape,
            strides,
            ordinal: origin.ordinal(),
        };
        check_slice_view(&geom, origin.num_bytes())?;
        Ok(TensorViewMut {
            geom,
            origin: Some(origin),
        })
    }

    /// A writable view of raw device memory. Nothing is checked here; call
    /// [`TensorViewMut::validate`] and, before a launch, [`TensorViewMut::check_device_memory`].
    ///
    /// # Safety
    ///
    /// For as long as the view (or anything launched with its pointer) is in use, `ptr` must point
    /// to device memory of device `ordinal` that is valid to read and write for the view's whole
    /// extent, and nothing else may access it concurrently. Ordering with other streams is the
    /// caller's job: the view has no stream tracking.
    pub unsafe fn from_raw(
        ptr: u64,
        dtype: DType,
        shape: [usize; 4],
        strides: [i64; 4],
        ordinal: usize,
    ) -> Self {
        TensorViewMut {
            geom: Geometry {
                ptr,
                dtype,
                shape,
                strides,
                ordinal,
            },
            origin: None,
        }
    }

    /// The device address for a kernel that writes the view on `stream`, and the guard that
    /// orders the access. For a view of a [`CudaSlice`], `stream` first waits for earlier reads
    /// and writes of the slice, and dropping the guard records the write; keep the guard alive
    /// until the kernel has been launched. Raw views return a no-op guard.
    pub fn device_ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, AccessGuard<'s>) {
        match self.origin.as_deref_mut() {
            Some(origin) => {
                let (ptr, sync) = origin.write_ptr(stream);
                (ptr, AccessGuard { _sync: Some(sync) })
            }
            None => (self.geom.ptr, AccessGuard::none()),
        }
    }

    /// A read-only view of the same memory, borrowing this one.
    pub fn as_view(&self) -> TensorView<'_> {
        TensorView {
            geom: self.geom,
            origin: self.origin.as_deref().map(|o| o as &dyn ErasedSlice),
        }
    }

    /// The checks of [`TensorView::validate`], then (as this is an output) that no two elements
    /// share an address ([`Error::InvalidStride`]). Pure: no driver call, never panics.
    pub fn validate(&self, name: &'static str) -> Result<()> {
        self.geom
            .validate(name, self.origin.as_deref().map(|o| o.num_bytes()))?;
        self.geom.check_no_self_overlap(name)
    }

    /// As [`TensorView::check_device_memory`].
    pub fn check_device_memory(&self, name: &'static str, rt: &Runtime) -> Result<()> {
        self.geom.check_memory(name, self.origin.is_some(), rt)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.geom.dtype
    }
    /// Logical shape `[batch, heads, seq, head_dim]`.
    pub fn shape(&self) -> [usize; 4] {
        self.geom.shape
    }
    /// Strides in elements, logical order `[batch, heads, seq, head_dim]`.
    pub fn strides(&self) -> [i64; 4] {
        self.geom.strides
    }
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.geom.shape[0]
    }
    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.geom.shape[1]
    }
    /// Sequence length.
    pub fn seq(&self) -> usize {
        self.geom.shape[2]
    }
    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.geom.shape[3]
    }
    /// Device ordinal of the memory.
    pub fn ordinal(&self) -> usize {
        self.geom.ordinal
    }
    /// The bytes the view spans, `[start, end)` (`None` if the extent is invalid); used to
    /// refuse outputs that overlap inputs.
    pub(crate) fn byte_range(&self) -> Option<(u64, u64)> {
        self.geom.byte_range()
    }

    /// Whether the view was made from a cudarc slice (stream-tracked) rather than a raw pointer.
    pub fn is_tracked(&self) -> bool {
        self.origin.is_some()
    }
}

impl fmt::Debug for TensorViewMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorViewMut")
            .field("ptr", &format_args!("{:#x}", self.geom.ptr))
            .field("dtype", &self.geom.dtype)
            .field("shape", &self.geom.shape)
            .field("strides", &self.geom.strides)
            .field("ordinal", &self.geom.ordinal)
            .field("tracked", &self.origin.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Driver pointer check
// ---------------------------------------------------------------------------------------------

/// Asks the driver whether `ptr` is CUDA device memory of device `ordinal`, or managed memory.
///
/// Errors: [`Error::NotDeviceMemory`] for a null pointer, memory unknown to CUDA or host memory;
/// [`Error::WrongDevice`] for device memory of another device (managed memory is accepted on any
/// device); [`Error::DriverUnavailable`] without a driver. `tensor` names the tensor in errors.
/// Used on raw views at launch time ([`TensorView::check_device_memory`]); the driver may need a
/// current context, so call it with the runtime's context bound ([`Runtime::bind`]).
pub fn check_device_pointer(tensor: &'static str, ptr: u64, ordinal: usize) -> Result<()> {
    use sys::CUpointer_attribute as A;
    if ptr == 0 {
        return Err(Error::NotDeviceMemory { tensor, ptr });
    }
    crate::runtime::require_driver()?;
    cu_result::init().op("initialising the CUDA driver")?;

    // Queries one attribute into a zero-initialised 4-byte integer; `None` when CUDA does not
    // know the address (plain host memory, garbage).
    let query = |attribute: sys::CUpointer_attribute| -> Result<Option<u32>> {
        let mut value: u32 = 0;
        // SAFETY: the three attributes queried here (IS_MANAGED, MEMORY_TYPE, DEVICE_ORDINAL)
        // each write at most 4 bytes (a bool, a CUmemorytype enum, an int) into `data`, which
        // points to a live, zero-initialised u32. `ptr` is only inspected, never dereferenced.
        let rc =
            unsafe { sys::cuPointerGetAttribute((&mut value as *mut u32).cast(), attribute, ptr) };
        match rc {
            sys::CUresult::CUDA_SUCCESS => Ok(Some(value)),
            sys::CUresult::CUDA_ERROR_INVALID_VALUE => Ok(None),
            other => Err(Error::Cuda {
                op: format!(
                    "querying pointer attribute {attribute:?} of tensor `{tensor}` ({ptr:#x})"
                ),
                source: cudarc::driver::DriverError(other),
            }),
        }
    };

    let Some(managed) = query(A::CU_POINTER_ATTRIBUTE_IS_MANAGED)? else {
        return Err(Error::NotDeviceMemory { tensor, ptr });
    };
    // A bool written into the low byte (little-endian) or a full int: non-zero either way.
    if managed != 0 {
        return Ok(());
    }
    let Some(mem_type) = query(A::CU_POINTER_ATTRIBUTE_MEMORY_TYPE)? else {
        return Err(Error::NotDeviceMemory { tensor, ptr });
    };
    if mem_type != sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
        return Err(Error::NotDeviceMemory { tensor, ptr });
    }
    let Some(device) = query(A::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL)? else {
        return Err(Error::NotDeviceMemory { tensor, ptr });
    };
    // The driver wrote a non-negative int; compare as i64 to avoid any cast surprise.
    let device = i64::from(device as i32);
    if usize::try_from(device).ok() != Some(ordinal) {
        return Err(Error::WrongDevice {
            tensor,
            expected: ordinal,
            got: usize::try_from(device).unwrap_or(usize::MAX),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Owned tensor
// ---------------------------------------------------------------------------------------------

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
        let origin = self.buf.erased();
        TensorView {
            geom: Geometry {
                ptr: self.ptr,
                dtype: self.dtype,
                shape: self.shape,
                strides: self.strides,
                ordinal: origin.ordinal(),
            },
            origin: Some(origin),
        }
    }

    /// A writable view of the whole tensor.
    pub fn view_mut(&mut self) -> TensorViewMut<'_> {
        let ptr = self.ptr;
        let origin = self.buf.erased_mut();
        let geom = Geometry {
            ptr,
            dtype: self.dtype,
            shape: self.shape,
            strides: self.strides,
            ordinal: origin.ordinal(),
        };
        TensorViewMut {
            geom,
            origin: Some(origin),
        }
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
