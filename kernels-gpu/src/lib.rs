//! SageAttention device kernels, compiled to PTX by the root `build.rs`.
//!
//! Read order: `config` (tile constants shared with the host) → `attention` (kernel entry, mainloop
//! step, softmax, epilogue) → `attention_pv8` (the same for the 8-bit P·V, with `softmax16` and
//! `p8`, which the sm_90a kernel shares) → `prepare` (the fused preparation kernel) → `quant` /
//! `v8` (its jobs: smoothing, INT8 quantization, the 8-bit V) → `frag` / `tile` (named fragments
//! and the padded shared-memory tile) → `reduce` (the softmax's row max as a tree) → `ptx` (one
//! wrapper per PTX instruction; the only place with `asm!`).
//!
//! Three modules are built from this crate (root `build.rs`): the portable one (sm_80, no
//! feature), the Hopper one (sm_90a, feature `hopper`) and the FP8 one (sm_89, feature
//! `ada_fp8`: the 8-bit P·V kernel with e4m3 P and Vᵀ, and the preparation kernel, whose 8-bit V
//! job writes e4m3 there; Ada and Hopper).
#![no_std]
#![feature(abi_ptx, stdarch_nvptx, asm_experimental_arch, link_llvm_intrinsics)]
#![allow(clippy::missing_safety_doc)]
// `link_llvm_intrinsics` (internal) gives `ptx` the convergent barrier intrinsics.
#![allow(internal_features)]
// The sm_89 module compiles the shared fragment, packing and tile code for the FP8 kernels only,
// which leave parts of it (the INT8 and f16 P·V helpers) unused there.
#![cfg_attr(feature = "ada_fp8", allow(dead_code))]

mod acc_layout;
#[path = "../../abi/config.rs"]
pub mod config;
mod p8;
#[path = "../../abi/params.rs"]
pub mod params;
pub mod ptx;
mod quant_arith;
mod reduce;
mod softmax16;
mod store;
mod unroll;

#[cfg(not(any(feature = "hopper", feature = "ada_fp8")))]
mod attention;
#[cfg(not(feature = "hopper"))]
mod attention_pv8;
#[cfg(not(feature = "hopper"))]
mod copy;
#[cfg(not(feature = "hopper"))]
mod frag;
#[cfg(not(feature = "hopper"))]
mod prepare;
#[cfg(not(feature = "hopper"))]
mod quant;
#[cfg(not(feature = "ada_fp8"))]
mod retry;
#[cfg(not(any(feature = "hopper", feature = "ada_fp8")))]
mod selftest;
#[cfg(not(feature = "hopper"))]
mod tile;
#[cfg(not(feature = "hopper"))]
mod v8;

#[cfg(feature = "hopper")]
mod hopper;

/// A panic on the device must stop the kernel, not spin: `trap` aborts the launch with an error the
/// host sees as a launch failure.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    ptx::trap()
}
