//! SageAttention for NVIDIA GPUs (sm_80+), in pure Rust: attention whose Q·Kᵀ runs in INT8 (Q per
//! token, K per block of 64 after subtracting its mean over the sequence) and whose
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
//! # Layout
//!
//! The modules form layers; each imports only from the layers below it (checked by
//! `tests/module_graph.rs`, which fails on any import cycle):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | context parallelism | [`ring`] | ring attention over `P` ranks (simulated, or NCCL with the `nccl` feature) |
//! | API | [`attention`], [`varlen`] | [`sageattn`], [`sageattn_into`], [`Prepared`]: validate → dispatch → enqueue; [`sageattn_varlen`] over packed sequences |
//! | launch | `launch/`: `validate`, `dispatch`, `enqueue`, `scratch`, [`hopper`], [`selftest`] | checks, kernel choice, scratch memory, launches |
//! | device | `device/`: [`runtime`], `kernel`, [`kernels`], `alloc`, [`tensor`] | CUDA context, stream, modules, kernels, device memory and views |
//! | types | `types/`: `dtype`, `options`, [`error`] | plain values: [`DType`], [`Layout`], [`Options`], [`Error`] |
//! | shared with the device crate | [`device_config`], `params` | tile constants, kernel names, parameter structs |
//!
//! Beside them, for tests and tools: the CPU oracles in [`reference`](mod@reference) (exact
//! float64 attention, the quantized emulation, [`quant_ref`], metrics) and the .safetensors reader
//! and writer [`tensor_file`]. The tools (`host/cli/` for `sageattn`, `benches/bench/` for
//! `bench`) use only this crate's public API. Device code lives in the `kernels-gpu` crate.
//!
//! Read order: [`attention`] (the call and its options) → `launch::validate` (checks before any
//! launch) → `launch::dispatch` (which kernel) → `launch::enqueue` (preparation and attention
//! launches, `launch::scratch` memory) → [`tensor`] (views of caller memory) → [`runtime`]
//! (context, stream, modules) → [`error`].

pub mod attention;
mod device;
mod launch;
pub mod reference;
pub mod ring;
pub mod tensor_file;
mod types;
pub mod varlen;

/// Tile and quantization constants shared with the device crate (the same source file).
#[path = "../abi/config.rs"]
pub mod device_config;

/// Kernel parameter structs shared with the device crate (the same source file).
#[path = "../abi/params.rs"]
pub(crate) mod params;

// The modules' public paths (`sageattention::runtime`, `sageattention::tensor`, ...).
pub use device::{kernels, runtime, tensor};
pub use launch::{hopper, selftest};
pub use reference::quant_ref;
pub use types::error;

pub use attention::{
    sageattn, sageattn_into, Backend, Options, Output, Prepared, PvAccum, PvPrecision,
};
pub use error::{Error, Result};
pub use runtime::{DeviceInfo, Runtime};
pub use tensor::{DType, Element, Layout, Tensor, TensorView, TensorViewMut, ViewGeometry};
pub use varlen::{sageattn_varlen, sageattn_varlen_into, CuSeqlens};
