//! The geometry of a view of device memory (pointer, dtype, shape, strides, device) and every
//! check of it: the pure ones (`validate`) and the driver's (`check_device_memory`).

use crate::device::runtime::{require_driver, Runtime};
use crate::types::dtype::{DType, ROW_ALIGN_BYTES};
use crate::types::error::{CudaResultExt, Error, Result};
use cudarc::driver::{result as cu_result, sys};
use std::fmt;

/// Name used in errors raised by view constructors, which do not know the tensor's role.
const UNNAMED: &str = "view";

/// What [`TensorView`] and [`TensorViewMut`] have in common, and what both dereference to: the
/// pointer, element type, logical shape, strides and device of the view, the accessors of these,
/// and the checks of [`TensorView::validate`].
///
/// [`TensorView`]: super::TensorView
/// [`TensorViewMut`]: super::TensorViewMut
/// [`TensorView::validate`]: super::TensorView::validate
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ViewGeometry {
    pub(super) ptr: u64,
    pub(super) dtype: DType,
    pub(super) shape: [usize; 4],
    pub(super) strides: [i64; 4],
    pub(super) ordinal: usize,
    /// Size of the slice the view was made from; `None` for views of raw pointers.
    pub(super) origin_bytes: Option<usize>,
}

impl ViewGeometry {
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Logical shape `[batch, heads, seq, head_dim]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }
    /// Strides in elements, logical order `[batch, heads, seq, head_dim]`.
    pub fn strides(&self) -> [i64; 4] {
        self.strides
    }
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.shape[0]
    }
    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.shape[1]
    }
    /// Sequence length.
    pub fn seq(&self) -> usize {
        self.shape[2]
    }
    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.shape[3]
    }
    /// Device ordinal of the memory.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// Whether the view was made from a cudarc slice (stream-tracked, unless the library
    /// detached it for one call's worker streams) rather than a raw pointer.
    pub fn is_tracked(&self) -> bool {
        self.origin_bytes.is_some()
    }

    /// Checks that the view is on the runtime's device ([`Error::WrongDevice`]); for raw views
    /// also asks the driver that its first and last bytes are device or managed memory of that
    /// device ([`Error::NotDeviceMemory`] / [`Error::WrongDevice`]), after running the checks of
    /// [`TensorView::validate`](super::TensorView::validate). Binds the runtime's context to the
    /// calling thread.
    pub fn check_device_memory(&self, name: &'static str, rt: &Runtime) -> Result<()> {
        self.check_memory(name, self.is_tracked(), rt)
    }

    /// The geometry of elements `start..start + len` along logical dimension `dim` (0..4) and the
    /// byte offset of its first element from this one's: the same strides, the pointer moved
    /// forward, the originating slice's size reduced by the offset (so the in-bounds check of
    /// the narrowed view still ends at the slice's end).
    ///
    /// Errors: [`Error::OutOfBounds`] when `dim > 3` or `start + len` exceeds the dimension,
    /// [`Error::InvalidStride`] for a negative stride, [`Error::TooLarge`] when the offset
    /// overflows.
    pub(super) fn narrowed(&self, dim: usize, start: usize, len: usize) -> Result<(Self, u64)> {
        let out_of_bounds = || Error::OutOfBounds {
            tensor: UNNAMED,
            reason: format!(
                "cannot narrow dimension {dim} to {start}..{} of shape {:?}",
                start.saturating_add(len),
                self.shape
            ),
        };
        if dim > 3
            || start
                .checked_add(len)
                .is_none_or(|end| end > self.shape[dim])
        {
            return Err(out_of_bounds());
        }
        self.check_non_negative(UNNAMED)?;
        // Non-negative, so the cast is exact; the size is 1, 2 or 4.
        let offset = (start as u64)
            .checked_mul(self.strides[dim] as u64)
            .and_then(|elems| elems.checked_mul(self.dtype.size_bytes() as u64))
            .filter(|&bytes| self.ptr.checked_add(bytes).is_some())
            .ok_or_else(|| Error::TooLarge {
                tensor: UNNAMED,
                reason: format!(
                    "offset of element {start} along dimension {dim} (strides {:?}) overflows",
                    self.strides
                ),
            })?;
        let mut narrowed = *self;
        narrowed.ptr += offset;
        narrowed.shape[dim] = len;
        narrowed.origin_bytes = self
            .origin_bytes
            .map(|bytes| bytes.saturating_sub(usize::try_from(offset).unwrap_or(usize::MAX)));
        Ok((narrowed, offset))
    }

    /// The same shape and strides starting `start` elements past this view's first element, and
    /// the byte offset of the move: how a framework's tensor that is a view into a larger buffer
    /// (a storage offset plus strides, as candle, DLPack or PyTorch describe one; e.g. Q, K and V
    /// as parts of one fused projection) becomes a view of that buffer. The originating slice's
    /// size is reduced by the offset, so the in-bounds check still ends at the slice's end.
    ///
    /// Errors: [`Error::TooLarge`] when the offset overflows, [`Error::OutOfBounds`] when it
    /// starts past the end of the slice the view was made from.
    pub(super) fn advanced(&self, start: usize) -> Result<(Self, u64)> {
        let offset = (start as u64)
            .checked_mul(self.dtype.size_bytes() as u64)
            .filter(|&bytes| self.ptr.checked_add(bytes).is_some())
            .ok_or_else(|| Error::TooLarge {
                tensor: UNNAMED,
                reason: format!(
                    "a start offset of {start} {} elements overflows",
                    self.dtype
                ),
            })?;
        let mut advanced = *self;
        advanced.ptr += offset;
        if let Some(bytes) = self.origin_bytes {
            let left = usize::try_from(offset)
                .ok()
                .and_then(|offset| bytes.checked_sub(offset))
                .ok_or_else(|| Error::OutOfBounds {
                    tensor: UNNAMED,
                    reason: format!(
                        "the view starts at element {start} ({offset} bytes), past the end of \
                         its slice of {bytes} bytes"
                    ),
                })?;
            advanced.origin_bytes = Some(left);
        }
        Ok((advanced, offset))
    }

    /// The geometry of `[1, heads, n·len, head_dim]` as `[n, heads, len, head_dim]`: batch entry
    /// `b` is rows `b·len..(b + 1)·len` of the sequence dimension, so the batch stride is `len`
    /// times the seq stride and every other stride, the pointer and the extent stay.
    ///
    /// Errors: [`Error::ShapeMismatch`] when the batch is not 1, `len` is 0 or the sequence
    /// length is not a multiple of `len`; [`Error::InvalidStride`] for a negative stride;
    /// [`Error::TooLarge`] when the batch stride overflows `i64`.
    pub(super) fn split_seq(&self, len: usize) -> Result<Self> {
        let [batch, _, seq, _] = self.shape;
        if batch != 1 || len == 0 || seq % len != 0 {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "cannot split the sequence of shape {:?} into batch entries of {len} rows \
                     (needs batch 1 and a sequence length that is a multiple of {len})",
                    self.shape
                ),
            });
        }
        self.check_non_negative(UNNAMED)?;
        let batch_stride = i64::try_from(len)
            .ok()
            .and_then(|len| len.checked_mul(self.strides[2]))
            .ok_or_else(|| Error::TooLarge {
                tensor: UNNAMED,
                reason: format!(
                    "batch stride {len} × {} (the seq stride) overflows i64",
                    self.strides[2]
                ),
            })?;
        let mut split = *self;
        split.shape[0] = seq / len;
        split.shape[2] = len;
        split.strides[0] = batch_stride;
        Ok(split)
    }

    /// The bytes the view spans, `[start, end)` (`None` if the extent is invalid); used to
    /// refuse outputs that overlap inputs.
    pub(crate) fn byte_range(&self) -> Option<(u64, u64)> {
        let e = self.extent("view").ok()?;
        Some((self.ptr, self.ptr.checked_add(e.bytes)?))
    }

    /// The fields of a view's `Debug` output, under the view type's `name`.
    pub(super) fn debug_as(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("strides", &self.strides)
            .field("ordinal", &self.ordinal)
            .field("tracked", &self.is_tracked())
            .finish()
    }
}

impl fmt::Debug for ViewGeometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.debug_as("ViewGeometry", f)
    }
}

/// Names of the logical dimensions, for messages.
const DIM_NAMES: [&str; 4] = ["batch", "heads", "seq", "head_dim"];

/// Extent of a strided view: elements and bytes from the base to one past the furthest element.
#[derive(Debug, Clone, Copy)]
pub(super) struct Extent {
    elems: u64,
    bytes: u64,
}

impl ViewGeometry {
    pub(super) fn check_non_negative(&self, tensor: &'static str) -> Result<()> {
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
    pub(super) fn validate(
        &self,
        tensor: &'static str,
        origin_bytes: Option<usize>,
    ) -> Result<Extent> {
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
    /// [`ViewGeometry::extent`] succeeded (so the sums below fit in i64).
    pub(super) fn check_no_self_overlap(&self, tensor: &'static str) -> Result<()> {
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
    g: &ViewGeometry,
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
pub(super) fn check_slice_view(g: &ViewGeometry, available_bytes: usize) -> Result<()> {
    g.check_non_negative(UNNAMED)?;
    let extent = g.extent(UNNAMED)?;
    check_in_bounds(UNNAMED, extent, available_bytes, g)
}

/// Asks the driver whether `ptr` is CUDA device memory of device `ordinal`, or managed memory.
///
/// Errors: [`Error::NotDeviceMemory`] for a null pointer, memory unknown to CUDA or host memory;
/// [`Error::WrongDevice`] for device memory of another device (managed memory is accepted on any
/// device); [`Error::DriverUnavailable`] without a driver. `tensor` names the tensor in errors.
/// Used on raw views at launch time ([`ViewGeometry::check_device_memory`]); the driver may need a
/// current context, so call it with the runtime's context bound ([`Runtime::bind`]).
pub fn check_device_pointer(tensor: &'static str, ptr: u64, ordinal: usize) -> Result<()> {
    use sys::CUpointer_attribute as A;
    if ptr == 0 {
        return Err(Error::NotDeviceMemory { tensor, ptr });
    }
    require_driver()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The geometry of a contiguous f16 `[1, 1, 4, 8]` view (64 bytes) at the start of a slice of
    /// `slice_bytes` bytes.
    fn at_slice_start(slice_bytes: usize) -> ViewGeometry {
        ViewGeometry {
            ptr: 0x7f00_0000_0000,
            dtype: DType::F16,
            shape: [1, 1, 4, 8],
            strides: [32, 32, 8, 1],
            ordinal: 0,
            origin_bytes: Some(slice_bytes),
        }
    }

    #[test]
    fn advanced_moves_the_pointer_and_keeps_the_slice_end() {
        let whole = at_slice_start(1000);
        let (g, offset) = whole.advanced(100).unwrap();
        assert_eq!(offset, 200);
        assert_eq!(g.ptr, whole.ptr + 200);
        assert_eq!(g.origin_bytes, Some(800));
        assert_eq!(
            (g.shape, g.strides, g.dtype),
            (whole.shape, whole.strides, whole.dtype)
        );
        // The last 64 bytes of the slice fit, one element further does not.
        let (last, _) = whole.advanced(468).unwrap();
        check_slice_view(&last, last.origin_bytes.unwrap()).unwrap();
        let (past, _) = whole.advanced(469).unwrap();
        assert!(matches!(
            check_slice_view(&past, past.origin_bytes.unwrap()),
            Err(Error::OutOfBounds { .. })
        ));
        // Narrowing the moved view still ends at the slice's end.
        let (narrowed, _) = last.narrowed(2, 3, 1).unwrap();
        assert_eq!(narrowed.origin_bytes, Some(64 - 48));
        check_slice_view(&narrowed, narrowed.origin_bytes.unwrap()).unwrap();
    }

    #[test]
    fn advanced_refuses_a_start_past_the_slice_or_an_overflow() {
        let whole = at_slice_start(1000);
        assert_eq!(whole.advanced(500).unwrap().0.origin_bytes, Some(0));
        assert!(matches!(
            whole.advanced(501),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            whole.advanced(usize::MAX),
            Err(Error::TooLarge { .. })
        ));
        // The pointer itself may not wrap.
        let high = ViewGeometry {
            ptr: u64::MAX - 15,
            ..whole
        };
        assert!(matches!(high.advanced(8), Err(Error::TooLarge { .. })));
        // A raw view (no slice) moves its pointer only.
        let raw = ViewGeometry {
            origin_bytes: None,
            ..whole
        };
        let (g, offset) = raw.advanced(1 << 40).unwrap();
        assert_eq!(
            (g.ptr, offset, g.origin_bytes),
            (raw.ptr + (2 << 40), 2 << 40, None)
        );
    }
}
