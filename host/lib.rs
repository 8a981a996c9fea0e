//! SageAttention for NVIDIA GPUs (sm_80+), in pure Rust: attention whose Q·Kᵀ runs in INT8 (Q per
//! block of 128 tokens, K per block of 64 after subtracting its mean over the sequence) and whose
//! P·V runs in FP16, giving the answer of scaled-dot-product attention to about 1% faster than
//! FlashAttention (SageAttention, arXiv 2410.02367).
//!
//! ```no_run
//! use sageattention::{sageattn, Layout, Options, Runtime, TensorView};
//! # fn main() -> sageattention::Result<()> {
//! let rt = Runtime::new(0)?;
//! # let (q, k, v): (cudarc::driver::CudaSlice<half::f16>, cudarc::driver::CudaSlice<half::f16>, cudarc::driver::CudaSlice<half::f16>) = todo!();
//! let shape = [2, 16, 4096, 128]; // [batch, heads, seq, head_dim]
//! let (q, k, v) = (
//!     TensorView::from_slice(&q, shape, Layout::Hnd)?,
//!     TensorView::from_slice(&k, shape, Layout::Hnd)?,
//!     TensorView::from_slice(&v, shape, Layout::Hnd)?,
//! );
//! let out = sageattn(&rt, &q, &k, &v, &Options { causal: true, ..Options::default() })?;
//! # Ok(()) }
//! ```
//!
//! Read order: [`attention`] (the call and its options) → `validate` (checks before any launch) →
//! `dispatch` (which kernel) → `enqueue` (preparation and attention launches, `scratch` memory) →
//! [`tensor`] (views of caller memory) → [`runtime`] (context, stream, modules) → [`error`]; the
//! Hopper kernel's host side is [`hopper`]; the CPU oracles are [`reference`](mod@reference) and [`quant_ref`].
//! Device code lives in the `kernels-gpu` crate.

pub mod attention;
pub(crate) mod dispatch;
pub(crate) mod enqueue;
pub mod error;
pub mod hopper;
pub mod kernels;
pub mod quant_ref;
pub mod reference;
pub mod runtime;
pub(crate) mod scratch;
pub mod selftest;
pub mod tensor;
pub(crate) mod validate;

/// Tile and quantization constants shared with the device crate (the same source file).
#[path = "../kernels-gpu/src/config.rs"]
pub mod device_config;

/// Kernel parameter structs shared with the device crate (the same source file).
#[path = "../kernels-gpu/src/params.rs"]
pub(crate) mod params;

pub use attention::{sageattn, sageattn_into, Backend, Options, Output, Prepared, PvAccum};
pub use error::{Error, Result};
pub use runtime::{DeviceInfo, Runtime};
pub use tensor::{DType, Layout, Tensor, TensorView, TensorViewMut};
