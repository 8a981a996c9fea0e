//! Borrowed views of device memory: [`TensorView`] (inputs) and [`TensorViewMut`] (outputs). Both
//! dereference to their [`ViewGeometry`] for the accessors and checks they share.
//!
//! Views made from a cudarc [`CudaSlice`] keep cudarc's stream-ordering guarantees: the pointer
//! is only handed out together with an [`AccessGuard`] (see [`TensorView::device_ptr`]). Views made
//! from raw pointers ([`TensorView::from_raw`]) are the caller's responsibility.

use super::geometry::{check_slice_view, ViewGeometry};
use crate::types::dtype::{DType, Element, Layout};
use crate::types::error::Result;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};
use std::fmt;
use std::ops::Deref;

/// A `CudaSlice<T>` with `T` erased (the element type is tracked separately as a [`DType`]).
pub(super) trait ErasedSlice: Send + Sync {
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
pub(super) trait ErasedSliceMut: ErasedSlice {
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
pub(super) fn base_address(slice: &dyn ErasedSlice) -> u64 {
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

impl ViewGeometry {
    /// The geometry of a view of `origin` from its element `start`, and that element's byte
    /// offset, with the construction checks: start inside the slice, non-negative strides, extent
    /// fits, extent inside the slice.
    fn of_slice(
        origin: &dyn ErasedSlice,
        dtype: DType,
        start: usize,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<(Self, u64)> {
        let whole = ViewGeometry {
            ptr: base_address(origin),
            dtype,
            shape,
            strides,
            ordinal: origin.ordinal(),
            origin_bytes: Some(origin.num_bytes()),
        };
        let (geom, offset) = whole.advanced(start)?;
        check_slice_view(&geom, geom.origin_bytes.unwrap_or(0))?;
        Ok((geom, offset))
    }

    /// The geometry of a view of a whole owned buffer at `ptr`, right by construction: nothing to
    /// check.
    fn of_buffer(
        origin: &dyn ErasedSlice,
        ptr: u64,
        (dtype, shape, strides): (DType, [usize; 4], [i64; 4]),
    ) -> Self {
        ViewGeometry {
            ptr,
            dtype,
            shape,
            strides,
            ordinal: origin.ordinal(),
            origin_bytes: Some(origin.num_bytes()),
        }
    }

    /// The geometry of a view of a raw pointer (nothing checked).
    fn raw(ptr: u64, dtype: DType, shape: [usize; 4], strides: [i64; 4], ordinal: usize) -> Self {
        ViewGeometry {
            ptr,
            dtype,
            shape,
            strides,
            ordinal,
            origin_bytes: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TensorView
// ---------------------------------------------------------------------------------------------

/// A read-only view of caller-owned device memory with a logical shape
/// `[batch, heads, seq, head_dim]` and element strides in the same order.
pub struct TensorView<'a> {
    geom: ViewGeometry,
    /// The slice the view was made from (`None` for raw views).
    origin: Option<&'a dyn ErasedSlice>,
    /// Bytes from the slice's first element to the view's (non-zero for narrowed views).
    offset: u64,
}

impl<'a> TensorView<'a> {
    /// A view of a whole slice with the contiguous strides of `layout`.
    ///
    /// Errors: [`Error::TooLarge`](crate::Error::TooLarge) if the extent overflows, [`Error::OutOfBounds`](crate::Error::OutOfBounds) if the shape
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
    /// Errors: [`Error::InvalidStride`](crate::Error::InvalidStride) for a negative stride, [`Error::TooLarge`](crate::Error::TooLarge) if the extent
    /// overflows, [`Error::OutOfBounds`](crate::Error::OutOfBounds) if the furthest element lies past the slice's end.
    pub fn from_slice_strided<T: Element>(
        slice: &'a CudaSlice<T>,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<Self> {
        Self::from_slice_at(slice, 0, shape, strides)
    }

    /// A view of a slice with explicit strides starting at the slice's element `start`: a
    /// framework tensor given as storage, offset and strides (candle's `Layout`, DLPack's byte
    /// offset, e.g. Q, K and V as parts of one fused projection), keeping the slice's stream
    /// tracking.
    ///
    /// Errors: as [`TensorView::from_slice_strided`], and
    /// [`Error::OutOfBounds`](crate::Error::OutOfBounds) when `start` or the furthest element
    /// lies past the slice's end.
    pub fn from_slice_at<T: Element>(
        slice: &'a CudaSlice<T>,
        start: usize,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<Self> {
        let origin: &'a dyn ErasedSlice = slice;
        let (geom, offset) = ViewGeometry::of_slice(origin, T::DTYPE, start, shape, strides)?;
        Ok(TensorView {
            geom,
            origin: Some(origin),
            offset,
        })
    }

    /// A view of a whole owned buffer (of a [`Tensor`](super::Tensor)) at `ptr`.
    pub(super) fn of_buffer(
        origin: &'a dyn ErasedSlice,
        ptr: u64,
        geom: (DType, [usize; 4], [i64; 4]),
    ) -> Self {
        TensorView {
            geom: ViewGeometry::of_buffer(origin, ptr, geom),
            origin: Some(origin),
            offset: 0,
        }
    }

    /// A view of raw device memory. Nothing is checked here; call [`TensorView::validate`] and,
    /// before a launch, [`check_device_memory`](ViewGeometry::check_device_memory).
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
            geom: ViewGeometry::raw(ptr, dtype, shape, strides, ordinal),
            origin: None,
            offset: 0,
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
                let (base, sync) = origin.read_ptr(stream);
                (base + self.offset, AccessGuard { _sync: Some(sync) })
            }
            None => (self.geom.ptr, AccessGuard::none()),
        }
    }

    /// Takes this view's read access on `stream` for work that other streams will do on its
    /// behalf: `stream` waits for earlier writes of the slice now, the returned guard records the
    /// read on `stream` when dropped, and the returned view (same memory and geometry, the
    /// slice's bounds still known) has no stream tracking of its own. Work on several streams
    /// through it therefore neither waits for nor records anything: one varlen call's worker
    /// streams would otherwise chain behind each other's events, and the slice's single read
    /// event would remember only the last of them. Raw views come back as they are, with a
    /// no-op guard.
    ///
    /// # Safety
    ///
    /// Every access through the returned view, or views made from it, must be ordered before
    /// the guard's drop on `stream`: work on another stream must be joined into `stream` (an
    /// event recorded there that `stream` waits for) before the guard is dropped.
    pub(crate) unsafe fn detach<'s>(
        &'s self,
        stream: &'s CudaStream,
    ) -> (TensorView<'s>, AccessGuard<'s>) {
        let (ptr, guard) = self.device_ptr(stream);
        let view = TensorView {
            geom: ViewGeometry { ptr, ..self.geom },
            origin: None,
            offset: 0,
        };
        (view, guard)
    }

    /// Checks that the kernels can use this view, in this order: every dimension ≥ 1; strides
    /// non-negative and head_dim stride 1; seq/heads/batch strides (of dimensions larger than 1)
    /// multiples of [`DType::stride_multiple`] elements (16-byte rows); base pointer non-null and
    /// 16-byte aligned; element count, element extent and byte extent fit in `i64`; for views of a
    /// slice, the extent lies inside the slice. Pure: no driver call, never panics. `name` is
    /// used in the error.
    pub fn validate(&self, name: &'static str) -> Result<()> {
        self.geom.validate(name, self.geom.origin_bytes).map(|_| ())
    }

    /// A view of elements `start..start + len` along logical dimension `dim` (0 = batch,
    /// 1 = heads, 2 = seq, 3 = head_dim): same strides, same memory, same stream tracking (a
    /// sequence of a packed batch is `packed.narrow(2, start, len)`). `len` may be 0 (an empty
    /// view, which [`TensorView::validate`] refuses).
    ///
    /// Errors: [`Error::OutOfBounds`](crate::Error::OutOfBounds) when `dim > 3` or the range
    /// passes the dimension's end, [`Error::InvalidStride`](crate::Error::InvalidStride) for a
    /// negative stride, [`Error::TooLarge`](crate::Error::TooLarge) when the offset overflows.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<TensorView<'a>> {
        let (geom, offset) = self.geom.narrowed(dim, start, len)?;
        Ok(TensorView {
            geom,
            origin: self.origin,
            offset: self.offset + offset,
        })
    }

    /// The view `[1, heads, n·len, head_dim]` as the batch `[n, heads, len, head_dim]`, batch
    /// entry `b` being rows `b·len..(b + 1)·len`: same memory, same stream tracking, the batch
    /// stride `len` times the seq stride (`n` equal-length sequences of a packed batch,
    /// `packed.narrow(2, start, n * len)?.split_seq(len)`, are the batched problem of those
    /// sequences).
    ///
    /// Errors: [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the batch is not 1,
    /// `len` is 0 or the sequence length is not a multiple of `len`,
    /// [`Error::InvalidStride`](crate::Error::InvalidStride) for a negative stride,
    /// [`Error::TooLarge`](crate::Error::TooLarge) when the batch stride overflows.
    pub fn split_seq(&self, len: usize) -> Result<TensorView<'a>> {
        Ok(TensorView {
            geom: self.geom.split_seq(len)?,
            origin: self.origin,
            offset: self.offset,
        })
    }
}

impl Deref for TensorView<'_> {
    type Target = ViewGeometry;

    /// Dtype, shape, strides, device and the device-memory check, shared by both views.
    fn deref(&self) -> &ViewGeometry {
        &self.geom
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.geom.debug_as("TensorView", f)
    }
}

// ---------------------------------------------------------------------------------------------
// TensorViewMut
// ---------------------------------------------------------------------------------------------

/// A writable view of caller-owned device memory (an output), with the same geometry rules as
/// [`TensorView`] plus: its elements must not overlap.
pub struct TensorViewMut<'a> {
    geom: ViewGeometry,
    origin: Option<&'a mut dyn ErasedSliceMut>,
    /// Bytes from the slice's first element to the view's (non-zero for narrowed views).
    offset: u64,
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
        Self::from_slice_at(slice, 0, shape, strides)
    }

    /// A writable view of a slice with explicit strides starting at the slice's element `start`.
    /// Errors as [`TensorView::from_slice_at`].
    pub fn from_slice_at<T: Element>(
        slice: &'a mut CudaSlice<T>,
        start: usize,
        shape: [usize; 4],
        strides: [i64; 4],
    ) -> Result<Self> {
        let origin: &'a mut dyn ErasedSliceMut = slice;
        let (geom, offset) = ViewGeometry::of_slice(&*origin, T::DTYPE, start, shape, strides)?;
        Ok(TensorViewMut {
            geom,
            origin: Some(origin),
            offset,
        })
    }

    /// A writable view of a whole owned buffer (of a [`Tensor`](super::Tensor)) at `ptr`.
    pub(super) fn of_buffer(
        origin: &'a mut dyn ErasedSliceMut,
        ptr: u64,
        geom: (DType, [usize; 4], [i64; 4]),
    ) -> Self {
        TensorViewMut {
            geom: ViewGeometry::of_buffer(&*origin, ptr, geom),
            origin: Some(origin),
            offset: 0,
        }
    }

    /// A writable view of raw device memory. Nothing is checked here; call
    /// [`TensorViewMut::validate`] and, before a launch,
    /// [`check_device_memory`](ViewGeometry::check_device_memory).
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
            geom: ViewGeometry::raw(ptr, dtype, shape, strides, ordinal),
            origin: None,
            offset: 0,
        }
    }

    /// The device address for a kernel that writes the view on `stream`, and the guard that
    /// orders the access. For a view of a [`CudaSlice`], `stream` first waits for earlier reads
    /// and writes of the slice, and dropping the guard records the write; keep the guard alive
    /// until the kernel has been launched. Raw views return a no-op guard.
    pub fn device_ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (u64, AccessGuard<'s>) {
        match self.origin.as_deref_mut() {
            Some(origin) => {
                let (base, sync) = origin.write_ptr(stream);
                (base + self.offset, AccessGuard { _sync: Some(sync) })
            }
            None => (self.geom.ptr, AccessGuard::none()),
        }
    }

    /// The write form of [`TensorView::detach`]: `stream` waits for earlier reads and writes of
    /// the slice now, the guard records the write on `stream` when dropped, and the returned view
    /// has no stream tracking of its own.
    ///
    /// # Safety
    ///
    /// As for [`TensorView::detach`]: every access through the returned view must be joined
    /// into `stream` before the guard is dropped.
    pub(crate) unsafe fn detach_mut<'s>(
        &'s mut self,
        stream: &'s CudaStream,
    ) -> (TensorViewMut<'s>, AccessGuard<'s>) {
        let geom = self.geom;
        let (ptr, guard) = self.device_ptr_mut(stream);
        let view = TensorViewMut {
            geom: ViewGeometry { ptr, ..geom },
            origin: None,
            offset: 0,
        };
        (view, guard)
    }

    /// A read-only view of the same memory, borrowing this one.
    pub fn as_view(&self) -> TensorView<'_> {
        TensorView {
            geom: self.geom,
            origin: self.origin.as_deref().map(|o| o as &dyn ErasedSlice),
            offset: self.offset,
        }
    }

    /// A writable view of elements `start..start + len` along logical dimension `dim`
    /// (0 = batch, 1 = heads, 2 = seq, 3 = head_dim), borrowing this one: same strides, same
    /// memory, same stream tracking. Errors as [`TensorView::narrow`].
    pub fn narrow_mut(
        &mut self,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<TensorViewMut<'_>> {
        let (geom, offset) = self.geom.narrowed(dim, start, len)?;
        Ok(TensorViewMut {
            geom,
            origin: match self.origin.as_deref_mut() {
                Some(o) => Some(o),
                None => None,
            },
            offset: self.offset + offset,
        })
    }

    /// The writable form of [`TensorView::split_seq`], borrowing this view. Errors as there.
    pub fn split_seq_mut(&mut self, len: usize) -> Result<TensorViewMut<'_>> {
        Ok(TensorViewMut {
            geom: self.geom.split_seq(len)?,
            origin: match self.origin.as_deref_mut() {
                Some(o) => Some(o),
                None => None,
            },
            offset: self.offset,
        })
    }

    /// The checks of [`TensorView::validate`], then (as this is an output) that no two elements
    /// share an address ([`Error::InvalidStride`](crate::Error::InvalidStride)). Pure: no driver call, never panics.
    pub fn validate(&self, name: &'static str) -> Result<()> {
        self.geom.validate(name, self.geom.origin_bytes)?;
        self.geom.check_no_self_overlap(name)
    }
}

impl Deref for TensorViewMut<'_> {
    type Target = ViewGeometry;

    /// Dtype, shape, strides, device and the device-memory check, shared by both views.
    fn deref(&self) -> &ViewGeometry {
        &self.geom
    }
}

impl fmt::Debug for TensorViewMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.geom.debug_as("TensorViewMut", f)
    }
}
