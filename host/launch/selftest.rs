//! Runs the device crate's single-tile primitive kernels (one per mma shape) and the Hopper smoke
//! kernel, returning their results so tests can compare them with exact CPU products. These check
//! the PTX wrappers, the ldmatrix addressing and the fragment layouts in isolation.

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};

use crate::device::runtime::{ModuleKind, Runtime};
use crate::device_config::names;
use crate::params::TestParams;
use crate::types::error::{CudaResultExt, Result};

// SAFETY: `#[repr(C)]` struct of three u64, as the device crate (same source file) declares it.
unsafe impl DeviceRepr for TestParams {}

/// Shared memory the single-tile kernels stage their operands in.
const TILE_SMEM: u32 = 2048;

/// One single-block test launch: uploads `a` and `b`, launches `name` of `module` with
/// `threads` threads and `smem` bytes of shared memory, and returns `d_len` results.
///
/// # Safety
/// The kernel reads at most `a.len()` / `b.len()` elements of A and B and writes at most `d_len`
/// of D, with that block size and shared memory.
pub(crate) unsafe fn run_tile_kernel<
    A: DeviceRepr,
    B: DeviceRepr,
    D: DeviceRepr + Default + Clone,
>(
    rt: &Runtime,
    (module, name): (ModuleKind, &str),
    (threads, smem): (u32, u32),
    a: &[A],
    b: &[B],
    d_len: usize,
) -> Result<Vec<D>> {
    let stream = rt.stream();
    let a_dev = stream.clone_htod(a).op("copying operand A")?;
    let b_dev = stream.clone_htod(b).op("copying operand B")?;
    let mut d_dev = stream
        .clone_htod(&vec![D::default(); d_len])
        .op("allocating D")?;
    {
        let (a_ptr, _ga) = a_dev.device_ptr(stream);
        let (b_ptr, _gb) = b_dev.device_ptr(stream);
        let (d_ptr, _gd) = d_dev.device_ptr_mut(stream);
        let kernel = rt.function(module, name)?;
        let params = TestParams {
            a: a_ptr,
            b: b_ptr,
            d: d_ptr,
        };
        // SAFETY: forwarded to the caller (buffer sizes, block size, shared memory).
        unsafe { rt.launch(&kernel, (1, 1, 1), (threads, 1, 1), smem, &params)? };
    }
    stream.clone_dtoh(&d_dev).op("copying D back")
}

/// A portable single-warp tile test (2 KiB of shared memory).
fn run_portable_tile<A: DeviceRepr, B: DeviceRepr, D: DeviceRepr + Default + Clone>(
    rt: &Runtime,
    name: &str,
    a: &[A],
    b: &[B],
    d_len: usize,
) -> Result<Vec<D>> {
    // SAFETY: the portable tile kernels read 16x32 bytes of A and B (the callers pass 512 bytes)
    // and write 256 elements of D, with one warp and TILE_SMEM bytes of shared memory.
    unsafe {
        run_tile_kernel(
            rt,
            (ModuleKind::Portable, name),
            (32, TILE_SMEM),
            a,
            b,
            d_len,
        )
    }
}

/// `D (16x16 s32) = A (16x32 s8, row-major) · Bᵀ` where `b` holds 16 rows of 32 s8 (as K is
/// stored). Returns D row-major.
pub fn mma_s8(rt: &Runtime, a: &[i8; 512], b: &[i8; 512]) -> Result<Vec<i32>> {
    run_portable_tile(rt, names::TEST_MMA_S8, a, b, 256)
}

/// `D (16x16 f32) = A (16x16 f16 row-major) · B (16x16 f16, k rows × n columns, as V is stored)`,
/// operands as raw f16 bits. Returns D row-major.
pub fn mma_f16_f32(rt: &Runtime, a: &[u16; 256], b: &[u16; 256]) -> Result<Vec<f32>> {
    run_portable_tile(rt, names::TEST_MMA_F16_F32, a, b, 256)
}

/// As [`mma_f16_f32`] with an f16 accumulator; returns D as raw f16 bits, row-major.
pub fn mma_f16_f16(rt: &Runtime, a: &[u16; 256], b: &[u16; 256]) -> Result<Vec<u16>> {
    run_portable_tile(rt, names::TEST_MMA_F16_F16, a, b, 256)
}

/// Runs the Hopper module's smoke kernel with 128 threads (sm_90 only); returns its output,
/// which must be `2*i + 1` for thread i.
pub fn hopper_smoke(rt: &Runtime) -> Result<Vec<u32>> {
    let stream = rt.stream();
    let mut out = stream
        .clone_htod(&[0u32; 128])
        .op("allocating the smoke output")?;
    {
        let (ptr, _g) = out.device_ptr_mut(stream);
        let kernel = rt.function(ModuleKind::Hopper, names::HOPPER_SMOKE)?;
        let params = TestParams { a: ptr, b: 0, d: 0 };
        // SAFETY: 128 threads each write one u32 of the 128 allocated.
        unsafe { rt.launch(&kernel, (1, 1, 1), (128, 1, 1), 0, &params)? };
    }
    stream.clone_dtoh(&out).op("copying the smoke output back")
}
