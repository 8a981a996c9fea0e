//! Tensors on the device: borrowed views of caller memory ([`TensorView`], [`TensorViewMut`], both
//! dereferencing to their shared [`ViewGeometry`]) and an owned tensor ([`Tensor`]).
//!
//! Every attention tensor is 4-d. Whatever its memory layout, a view reports its **logical shape
//! `[batch, heads, seq, head_dim]`** and its **strides in elements, in the same logical order**
//! (see `docs/design.md`). [`Layout`] only decides the default contiguous strides.
//!
//! Views made from a cudarc [`CudaSlice`](cudarc::driver::CudaSlice) keep cudarc's stream-ordering
//! guarantees: the pointer is only handed out together with an [`AccessGuard`] (see
//! [`TensorView::device_ptr`]). Views made from raw pointers ([`TensorView::from_raw`]) are the
//! caller's responsibility.

mod geometry;
mod owned;
mod view;

pub use crate::types::dtype::{DType, Element, Layout, ROW_ALIGN_BYTES};
pub use geometry::{check_device_pointer, ViewGeometry};
pub use owned::Tensor;
pub use view::{AccessGuard, TensorView, TensorViewMut};
