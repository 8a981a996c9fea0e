//! The device layer: the embedded PTX ([`kernels`]), the CUDA context, stream and kernel cache
//! ([`runtime`], with the modules and kernels in [`kernel`]), raw scratch allocations ([`alloc`])
//! and tensors in device memory ([`tensor`]). Knows nothing about attention.

pub(crate) mod alloc;
pub(crate) mod kernel;
pub mod kernels;
pub mod runtime;
pub mod tensor;
