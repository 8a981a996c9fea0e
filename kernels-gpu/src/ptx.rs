//! One small wrapper per PTX instruction: the only place in the crate with `asm!`.
//!
//! Options follow the measured rules in `shared/DEVICE-RUST.md` §4: warp-collective instructions
//! (mma, ldmatrix, shfl) are never `pure` (LLVM would hoist or sink them out of uniform control
//! flow); shared-memory reads are `readonly`; anything that writes memory or orders it has no memory
//! option at all. Only non-collective arithmetic is `pure, nomem`.
//!
//! Fragment register layouts are documented on the mma wrappers; `frag.rs` names them.

use core::arch::asm;

// ---------------------------------------------------------------------------------------------
// Thread indexing and control
// ---------------------------------------------------------------------------------------------

/// `threadIdx.x`.
#[inline(always)]
pub fn thread_idx_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { core::arch::nvptx::_thread_idx_x() as u32 }
}

/// `blockIdx.{x,y,z}`.
#[inline(always)]
pub fn block_idx() -> (u32, u32, u32) {
    // SAFETY: reading special registers has no preconditions.
    unsafe {
        (
            core::arch::nvptx::_block_idx_x() as u32,
            core::arch::nvptx::_block_idx_y() as u32,
            core::arch::nvptx::_block_idx_z() as u32,
        )
    }
}

/// `gridDim.x`.
#[inline(always)]
pub fn grid_dim_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { core::arch::nvptx::_grid_dim_x() as u32 }
}

/// `blockDim.x`.
#[inline(always)]
pub fn block_dim_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { core::arch::nvptx::_block_dim_x() as u32 }
}

/// Lane within the warp (0..32).
#[inline(always)]
pub fn lane_id() -> u32 {
    thread_idx_x() & 31
}

/// Warp within the block.
#[inline(always)]
pub fn warp_id() -> u32 {
    thread_idx_x() >> 5
}

/// `bar.sync 0`: every thread of the block must reach it (never call under divergent control).
#[inline(always)]
pub fn sync_threads() {
    // SAFETY: callers keep the barrier in block-uniform control flow (a kernel-wide invariant).
    unsafe { core::arch::nvptx::_syncthreads() }
}

/// Aborts the kernel; the host sees a launch failure.
#[inline(always)]
pub fn trap() -> ! {
    // SAFETY: `trap` ends the thread; nothing after it runs.
    unsafe {
        asm!("trap;", options(noreturn, nostack));
    }
}

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------

// The dynamic shared memory of every kernel in the module: one module-scope declaration, sized at
// launch (`shared_mem_bytes`). 128-byte alignment keeps 16-byte cp.async/ldmatrix rows aligned.
core::arch::global_asm!(".extern .shared .align 128 .b8 sage_smem[];");

/// 32-bit shared-state-space address of the dynamic shared memory.
#[inline(always)]
pub fn smem_base() -> u32 {
    let base: u32;
    // SAFETY: takes the address of a module-level symbol; no memory is touched.
    unsafe {
        asm!("mov.u32 {0}, sage_smem;", out(reg32) base, options(pure, nomem, nostack));
    }
    base
}

/// `ld.shared.b32`.
///
/// # Safety
/// `addr` is a 4-byte aligned shared address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_shared_u32(addr: u32) -> u32 {
    let v: u32;
    unsafe {
        asm!("ld.shared.b32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(readonly, nostack));
    }
    v
}

/// `st.shared.b32`.
///
/// # Safety
/// `addr` is a 4-byte aligned shared address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_u32(addr: u32, v: u32) {
    unsafe {
        asm!("st.shared.b32 [{0}], {1};", in(reg32) addr, in(reg32) v, options(nostack));
    }
}

/// `red.shared.max.u32`: `*addr = max(*addr, v)` atomically (no result).
///
/// # Safety
/// `addr` is a 4-byte aligned shared address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn red_shared_max_u32(addr: u32, v: u32) {
    unsafe {
        asm!("red.shared.max.u32 [{0}], {1};", in(reg32) addr, in(reg32) v, options(nostack));
    }
}

/// `st.shared.v4.b32`: 16 bytes in one store.
///
/// # Safety
/// `addr` is a 16-byte aligned shared address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_v4(addr: u32, v: [u32; 4]) {
    unsafe {
        asm!(
            "st.shared.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};",
            in(reg32) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
            options(nostack)
        );
    }
}

/// `st.shared.v2.b32`: 8 bytes in one store.
///
/// # Safety
/// `addr` is an 8-byte aligned shared address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_v2(addr: u32, v: [u32; 2]) {
    unsafe {
        asm!(
            "st.shared.v2.b32 [{0}], {{{1}, {2}}};",
            in(reg32) addr, in(reg32) v[0], in(reg32) v[1],
            options(nostack)
        );
    }
}

/// `ld.shared.v4.b32`: 16 bytes in one load.
///
/// # Safety
/// `addr` is a 16-byte aligned shared address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_shared_v4(addr: u32) -> [u32; 4] {
    let v: [u32; 4];
    unsafe {
        let (a, b, c, d): (u32, u32, u32, u32);
        asm!(
            "ld.shared.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
            options(readonly, nostack)
        );
        v = [a, b, c, d];
    }
    v
}

/// `ld.shared.f32`.
///
/// # Safety
/// As [`ld_shared_u32`].
#[inline(always)]
pub unsafe fn ld_shared_f32(addr: u32) -> f32 {
    f32::from_bits(unsafe { ld_shared_u32(addr) })
}

/// `st.shared.f32`.
///
/// # Safety
/// As [`st_shared_u32`].
#[inline(always)]
pub unsafe fn st_shared_f32(addr: u32, v: f32) {
    unsafe { st_shared_u32(addr, v.to_bits()) }
}

// ---------------------------------------------------------------------------------------------
// Global memory (explicit `.global` so pointers from by-value param structs stay global)
// ---------------------------------------------------------------------------------------------

/// 2-byte read-only global load (`ld.global.nc.b16`).
///
/// # Safety
/// `ptr` is a 2-byte aligned global address of 2 readable bytes that no thread writes during the
/// launch.
#[inline(always)]
pub unsafe fn ld_global_nc_u16(ptr: u64) -> u16 {
    let v: u16;
    unsafe {
        asm!("ld.global.nc.b16 {0}, [{1}];", out(reg16) v, in(reg64) ptr, options(readonly, nostack));
    }
    v
}

/// 16-byte read-only global load (`ld.global.nc.v4.b32`).
///
/// # Safety
/// `ptr` is a 16-byte aligned global address of 16 readable bytes that no thread writes during
/// the launch.
#[inline(always)]
pub unsafe fn ld_global_nc_v4(ptr: u64) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!(
            "ld.global.nc.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) ptr,
            options(readonly, nostack)
        );
    }
    [a, b, c, d]
}

/// Read-only global f32 load.
///
/// # Safety
/// `ptr` is a 4-byte aligned global address that no thread writes during the launch.
#[inline(always)]
pub unsafe fn ld_global_nc_f32(ptr: u64) -> f32 {
    let v: u32;
    unsafe {
        asm!("ld.global.nc.b32 {0}, [{1}];", out(reg32) v, in(reg64) ptr, options(readonly, nostack));
    }
    f32::from_bits(v)
}

/// 8-byte read-only global load (`ld.global.nc.v2.b32`).
///
/// # Safety
/// `ptr` is an 8-byte aligned global address that no thread writes during the launch.
#[inline(always)]
pub unsafe fn ld_global_nc_v2(ptr: u64) -> [u32; 2] {
    let (a, b): (u32, u32);
    unsafe {
        asm!(
            "ld.global.nc.v2.b32 {{{0}, {1}}}, [{2}];",
            out(reg32) a, out(reg32) b, in(reg64) ptr, options(readonly, nostack)
        );
    }
    [a, b]
}

/// 16-byte global store.
///
/// # Safety
/// `ptr` is a 16-byte aligned, writable global address that no other thread accesses concurrently.
#[inline(always)]
pub unsafe fn st_global_v4(ptr: u64, v: [u32; 4]) {
    unsafe {
        asm!(
            "st.global.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};",
            in(reg64) ptr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
            options(nostack)
        );
    }
}

/// 8-byte global store.
///
/// # Safety
/// As [`st_global_v4`] with 8-byte alignment.
#[inline(always)]
pub unsafe fn st_global_v2(ptr: u64, v: [u32; 2]) {
    unsafe {
        asm!(
            "st.global.v2.b32 [{0}], {{{1}, {2}}};",
            in(reg64) ptr, in(reg32) v[0], in(reg32) v[1], options(nostack)
        );
    }
}

/// 8-byte global store of one u64.
///
/// # Safety
/// As [`st_global_v4`] with 8-byte alignment.
#[inline(always)]
pub unsafe fn st_global_u64(ptr: u64, v: u64) {
    unsafe {
        asm!("st.global.b64 [{0}], {1};", in(reg64) ptr, in(reg64) v, options(nostack));
    }
}

/// 4-byte global store.
///
/// # Safety
/// As [`st_global_v4`] with 4-byte alignment.
#[inline(always)]
pub unsafe fn st_global_u32(ptr: u64, v: u32) {
    unsafe {
        asm!("st.global.b32 [{0}], {1};", in(reg64) ptr, in(reg32) v, options(nostack));
    }
}

/// 4-byte global f32 store.
///
/// # Safety
/// As [`st_global_u32`].
#[inline(always)]
pub unsafe fn st_global_f32(ptr: u64, v: f32) {
    unsafe { st_global_u32(ptr, v.to_bits()) }
}

// ---------------------------------------------------------------------------------------------
// cp.async (sm_80+): global → shared without registers
// ---------------------------------------------------------------------------------------------

/// Copies 16 bytes global → shared asynchronously (L2 only, `.cg`).
///
/// # Safety
/// `smem` and `gptr` are 16-byte aligned; `gptr` points at 16 readable global bytes.
#[inline(always)]
pub unsafe fn cp_async_16(smem: u32, gptr: u64) {
    unsafe {
        asm!(
            "cp.async.cg.shared.global [{0}], [{1}], 16;",
            in(reg32) smem, in(reg64) gptr, options(nostack)
        );
    }
}

/// Copies `src_bytes` (0 or 16) bytes and zero-fills the rest of the 16-byte destination. With
/// `src_bytes == 0` nothing is read, so `gptr` may be any valid-looking address (e.g. the tensor base).
///
/// # Safety
/// `smem` 16-byte aligned; when `src_bytes > 0`, `gptr` is 16-byte aligned and readable.
#[inline(always)]
pub unsafe fn cp_async_16_zfill(smem: u32, gptr: u64, src_bytes: u32) {
    unsafe {
        asm!(
            "cp.async.cg.shared.global [{0}], [{1}], 16, {2};",
            in(reg32) smem, in(reg64) gptr, in(reg32) src_bytes, options(nostack)
        );
    }
}

/// Closes the current group of cp.async copies issued by this thread.
#[inline(always)]
pub fn cp_async_commit() {
    // SAFETY: no operands; orders only this thread's own copies.
    unsafe {
        asm!("cp.async.commit_group;", options(nostack));
    }
}

/// Waits until at most `N` of this thread's committed groups are still in flight. Other threads'
/// copies become visible only after a following [`sync_threads`].
#[inline(always)]
pub fn cp_async_wait<const N: u32>() {
    // SAFETY: no operands.
    unsafe {
        asm!("cp.async.wait_group {n};", n = const N, options(nostack));
    }
}

// ---------------------------------------------------------------------------------------------
// ldmatrix: each of the 4 (2, 1) 8x8 b16 matrices is 8 rows of 16 bytes; lanes 8i..8i+7 give the
// row addresses of matrix i. Lane l receives row l/4, bytes 4*(l%4)..+4 of each matrix (or, with
// .trans, elements (row 2*(l%4), 2*(l%4)+1 ; column l/4)).
// ---------------------------------------------------------------------------------------------

/// `ldmatrix.x4`.
///
/// # Safety
/// `addr` is this lane's 16-byte aligned shared row address; the whole warp calls it together.
#[inline(always)]
pub unsafe fn ldmatrix_x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
            options(readonly, nostack)
        );
    }
    [a, b, c, d]
}

/// `ldmatrix.x4.trans`.
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
            options(readonly, nostack)
        );
    }
    [a, b, c, d]
}

/// `ldmatrix.x2` (lanes 0..16 give addresses).
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x2(addr: u32) -> [u32; 2] {
    let (a, b): (u32, u32);
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x2.shared.b16 {{{0}, {1}}}, [{2}];",
            out(reg32) a, out(reg32) b, in(reg32) addr, options(readonly, nostack)
        );
    }
    [a, b]
}

/// `ldmatrix.x2.trans`.
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x2_trans(addr: u32) -> [u32; 2] {
    let (a, b): (u32, u32);
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {{{0}, {1}}}, [{2}];",
            out(reg32) a, out(reg32) b, in(reg32) addr, options(readonly, nostack)
        );
    }
    [a, b]
}

/// `ldmatrix.x1` (lanes 0..8 give addresses).
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x1(addr: u32) -> u32 {
    let a: u32;
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x1.shared.b16 {{{0}}}, [{1}];",
            out(reg32) a, in(reg32) addr, options(readonly, nostack)
        );
    }
    a
}

/// `ldmatrix.x1.trans`.
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x1_trans(addr: u32) -> u32 {
    let a: u32;
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {{{0}}}, [{1}];",
            out(reg32) a, in(reg32) addr, options(readonly, nostack)
        );
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Tensor-core mma.sync (sm_80+). g = lane/4, t = lane%4.
// ---------------------------------------------------------------------------------------------

/// `D += A·B`, m16n8k32, s8·s8 → s32.
/// A (16x32 row-major, 4 regs of 4 s8): a0 = (row g, cols 4t..4t+3), a1 = (g+8, 4t..), a2 = (g, 16+4t..),
/// a3 = (g+8, 16+4t..). B (32x8 "col", i.e. stored as 8 rows of 32 k): b0 = (k 4t..4t+3, n g),
/// b1 = (k 16+4t.., n g). D: d0,d1 = (row g, cols 2t, 2t+1), d2,d3 = (row g+8, cols 2t, 2t+1).
#[inline(always)]
pub fn mma_s8_m16n8k32(d: &mut [i32; 4], a: [u32; 4], b: [u32; 2]) {
    // SAFETY: register-only warp-collective op; every lane of the warp executes it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};",
            inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
            options(nomem, nostack)
        );
    }
}

/// `D += A·B`, m16n8k32, u8·s8 → s32 (the 8-bit P·V: u8 P, s8 Vᵀ). Fragment layouts as
/// [`mma_s8_m16n8k32`]; the bytes of A are unsigned.
#[inline(always)]
pub fn mma_u8s8_m16n8k32(d: &mut [i32; 4], a: [u32; 4], b: [u32; 2]) {
    // SAFETY: register-only warp-collective op; every lane of the warp executes it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};",
            inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
            options(nomem, nostack)
        );
    }
}

/// `D += A·B`, m16n8k16, f16·f16 → f32.
/// A (16x16, 4 regs of f16x2): a0 = (row g, cols 2t,2t+1), a1 = (g+8, 2t..), a2 = (g, 8+2t..),
/// a3 = (g+8, 8+2t..). B (16x8 "col"): b0 = (k 2t,2t+1, n g), b1 = (k 8+2t.., n g).
/// D: d0,d1 = (row g, cols 2t,2t+1), d2,d3 = (row g+8, cols 2t,2t+1).
#[inline(always)]
pub fn mma_f16_m16n8k16_f32(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
    // SAFETY: register-only warp-collective op; every lane of the warp executes it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};",
            inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
            options(nomem, nostack)
        );
    }
}

/// `D += A·B`, m16n8k16, f16·f16 → f16 (accumulator in f16: the fast P·V path).
/// Operands as [`mma_f16_m16n8k16_f32`]; D: d0 = f16x2 (row g, cols 2t,2t+1), d1 = (row g+8, ...).
#[inline(always)]
pub fn mma_f16_m16n8k16_f16(d: &mut [u32; 2], a: [u32; 4], b: [u32; 2]) {
    // SAFETY: register-only warp-collective op; every lane of the warp executes it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16 {{{0}, {1}}}, {{{2}, {3}, {4}, {5}}}, {{{6}, {7}}}, {{{0}, {1}}};",
            inout(reg32) d[0], inout(reg32) d[1],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
            options(nomem, nostack)
        );
    }
}

/// `D += A·B`, m16n8k32, e4m3·e4m3 → f32 (the FP8 P·V: e4m3 P, e4m3 Vᵀ; PTX ISA 8.7, sm_89+, so
/// only in the sm_89 module). Fragment layouts as [`mma_s8_m16n8k32`], one e4m3 per byte.
#[cfg(feature = "ada_fp8")]
#[inline(always)]
pub fn mma_e4m3_m16n8k32_f32(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
    // SAFETY: register-only warp-collective op; every lane of the warp executes it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};",
            inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
            options(nomem, nostack)
        );
    }
}

/// `D += A·B`, m16n8k32, e4m3·e4m3 → f16 (f16 accumulator: twice the f32 form's rate on GeForce
/// Ada). Operands as [`mma_e4m3_m16n8k32_f32`]; D: d0 = f16x2 (row g, cols 2t,2t+1), d1 = (row
/// g+8, ...), as [`mma_f16_m16n8k16_f16`].
#[cfg(feature = "ada_fp8")]
#[inline(always)]
pub fn mma_e4m3_m16n8k32_f16(d: &mut [u32; 2], a: [u32; 4], b: [u32; 2]) {
    // SAFETY: register-only warp-collective op; every lane of the warp executes it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k32.row.col.f16.e4m3.e4m3.f16 {{{0}, {1}}}, {{{2}, {3}, {4}, {5}}}, {{{6}, {7}}}, {{{0}, {1}}};",
            inout(reg32) d[0], inout(reg32) d[1],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
            options(nomem, nostack)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Warp shuffles
// ---------------------------------------------------------------------------------------------

/// Butterfly shuffle over the full warp: returns `x` of lane `lane ^ mask`.
/// Must be called by all 32 lanes together.
#[inline(always)]
pub fn shfl_xor_u32(x: u32, mask: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only warp-collective op with a full member mask.
    unsafe {
        asm!(
            "shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
            out(reg32) r, in(reg32) x, in(reg32) mask, options(nomem, nostack)
        );
    }
    r
}

/// Indexed shuffle over the full warp: returns `x` of lane `src` (0..32). Must be called by all 32
/// lanes together.
#[inline(always)]
pub fn shfl_idx_u32(x: u32, src: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only warp-collective op with a full member mask.
    unsafe {
        asm!(
            "shfl.sync.idx.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
            out(reg32) r, in(reg32) x, in(reg32) src, options(nomem, nostack)
        );
    }
    r
}

/// `vote.sync.all.pred` over the full warp: true iff `pred` holds on every lane. Must be called by
/// all 32 lanes together.
#[inline(always)]
pub fn vote_all(pred: bool) -> bool {
    let r: u32;
    // SAFETY: register-only warp-collective op with a full member mask.
    unsafe {
        asm!(
            "{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; vote.sync.all.pred q, p, 0xffffffff; selp.u32 {0}, 1, 0, q; }}",
            out(reg32) r, in(reg32) pred as u32, options(nomem, nostack)
        );
    }
    r != 0
}

/// [`shfl_xor_u32`] for f32.
#[inline(always)]
pub fn shfl_xor_f32(x: f32, mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(x.to_bits(), mask))
}

/// Butterfly shuffle among the lanes of `members` (a warp that is not whole: the lanes that
/// exist): returns `x` of lane `lane ^ mask`, unspecified when that lane is not in `members` (the
/// caller discards it). Must be called by every lane of `members` together, each in `members`.
#[inline(always)]
pub fn shfl_xor_f32_among(x: f32, mask: u32, members: u32) -> f32 {
    let r: u32;
    // SAFETY: register-only warp-collective op; the caller names the participating lanes.
    unsafe {
        asm!(
            "shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, {3};",
            out(reg32) r, in(reg32) x.to_bits(), in(reg32) mask, in(reg32) members,
            options(nomem, nostack)
        );
    }
    f32::from_bits(r)
}

// ---------------------------------------------------------------------------------------------
// Arithmetic and conversions (non-collective: `pure, nomem`)
// ---------------------------------------------------------------------------------------------

/// `2^x`, approximate (2 ulp), flushing denormals; `ex2(-inf) = 0`.
#[inline(always)]
pub fn ex2(x: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!("ex2.approx.ftz.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack));
    }
    r
}

/// `log2(x)`, approximate; `lg2(0) = -inf`.
#[inline(always)]
pub fn lg2(x: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!("lg2.approx.ftz.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack));
    }
    r
}

/// `1/x`, approximate (1 ulp), flushing denormals.
#[inline(always)]
pub fn rcp(x: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!("rcp.approx.ftz.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack));
    }
    r
}

/// `a*b + c` with a single rounding.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "fma.rn.f32 {0}, {1}, {2}, {3};",
            out(reg32) r, in(reg32) a, in(reg32) b, in(reg32) c, options(pure, nomem, nostack)
        );
    }
    r
}

/// `max(a, b)` that returns NaN when either input is NaN (sm_80+).
#[inline(always)]
pub fn max_nan(a: f32, b: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "max.NaN.f32 {0}, {1}, {2};",
            out(reg32) r, in(reg32) a, in(reg32) b, options(pure, nomem, nostack)
        );
    }
    r
}

/// `prmt.b32`: byte `i` of the result is byte `(sel >> 4i) & 7` of the 8 bytes `hi:lo`.
#[inline(always)]
pub fn prmt(lo: u32, hi: u32, sel: u32) -> u32 {
    let r: u32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "prmt.b32 {0}, {1}, {2}, {3};",
            out(reg32) r, in(reg32) lo, in(reg32) hi, in(reg32) sel, options(pure, nomem, nostack)
        );
    }
    r
}

/// Rounds to nearest-even and saturates to [-128, 127] (NaN → 0); returned sign-extended.
#[inline(always)]
pub fn cvt_rni_sat_s8(x: f32) -> i32 {
    let r: i16;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "cvt.rni.sat.s8.f32 {0}, {1};",
            out(reg16) r, in(reg32) x, options(pure, nomem, nostack)
        );
    }
    r as i32
}

/// Four f32 as e4m3 bytes (round to nearest even, saturating to ±448; NaN stays NaN), `a` in the
/// lowest byte. sm_89+ (`cvt … e4m3x2` puts its first source in the upper byte).
#[cfg(any(feature = "ada_fp8", feature = "hopper"))]
#[inline(always)]
pub fn pack_e4m3x4(a: f32, b: f32, c: f32, d: f32) -> u32 {
    let r: u32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "{{ .reg .b16 e4lo, e4hi; cvt.rn.satfinite.e4m3x2.f32 e4lo, {2}, {1}; cvt.rn.satfinite.e4m3x2.f32 e4hi, {4}, {3}; mov.b32 {0}, {{e4lo, e4hi}}; }}",
            out(reg32) r, in(reg32) a, in(reg32) b, in(reg32) c, in(reg32) d,
            options(pure, nomem, nostack)
        );
    }
    r
}

/// One f32 as an e4m3 byte (as [`pack_e4m3x4`]), in the low 8 bits.
#[cfg(feature = "ada_fp8")]
#[inline(always)]
pub fn cvt_e4m3(x: f32) -> u32 {
    let r: u16;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "{{ .reg .f32 e4z; mov.f32 e4z, 0f00000000; cvt.rn.satfinite.e4m3x2.f32 {0}, e4z, {1}; }}",
            out(reg16) r, in(reg32) x, options(pure, nomem, nostack)
        );
    }
    u32::from(r) & 0xff
}

/// One f16 (raw bits) as f32 (exact).
#[inline(always)]
pub fn f16_to_f32(x: u16) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!("cvt.f32.f16 {0}, {1};", out(reg32) r, in(reg16) x, options(pure, nomem, nostack));
    }
    r
}

/// Packs two f32 into f16x2 (round to nearest even): `lo` in bits 0..16, `hi` in 16..32.
#[inline(always)]
pub fn pack_f16x2(lo: f32, hi: f32) -> u32 {
    let r: u32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "cvt.rn.f16x2.f32 {0}, {1}, {2};",
            out(reg32) r, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack)
        );
    }
    r
}

/// Packs two f32 into bf16x2 (round to nearest even): `lo` in bits 0..16, `hi` in 16..32.
#[inline(always)]
pub fn pack_bf16x2(lo: f32, hi: f32) -> u32 {
    let r: u32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "cvt.rn.bf16x2.f32 {0}, {1}, {2};",
            out(reg32) r, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack)
        );
    }
    r
}

/// Unpacks f16x2 into (lo, hi) f32, exactly.
#[inline(always)]
pub fn unpack_f16x2(x: u32) -> (f32, f32) {
    let (lo, hi): (f32, f32);
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "{{ .reg .b16 l, h; mov.b32 {{l, h}}, {2}; cvt.f32.f16 {0}, l; cvt.f32.f16 {1}, h; }}",
            out(reg32) lo, out(reg32) hi, in(reg32) x, options(pure, nomem, nostack)
        );
    }
    (lo, hi)
}

/// Unpacks bf16x2 into (lo, hi) f32, exactly (bf16 is the top half of an f32).
#[inline(always)]
pub fn unpack_bf16x2(x: u32) -> (f32, f32) {
    (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000))
}

/// Converts a bf16x2 pair to f16x2 (round to nearest even; out-of-range values become ±inf).
#[inline(always)]
pub fn bf16x2_to_f16x2(x: u32) -> u32 {
    let (lo, hi) = unpack_bf16x2(x);
    pack_f16x2(lo, hi)
}

/// `max(acc, |x|)` with NaN propagating (`abs.f32` then `max.NaN.f32`, which ptxas folds into one
/// `FMNMX` with an absolute-value operand; clearing the sign bit by hand costs a `LOP3` more).
#[inline(always)]
pub fn max_nan_abs(acc: f32, x: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "{{ .reg .f32 t; abs.f32 t, {2}; max.NaN.f32 {0}, {1}, t; }}",
            out(reg32) r, in(reg32) acc, in(reg32) x, options(pure, nomem, nostack)
        );
    }
    r
}

/// `|x|` by clearing the sign bit (keeps NaN a NaN).
#[inline(always)]
pub fn abs(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0x7fff_ffff)
}

/// `mul.rn.f32`: the product rounded once, never contracted with a following add into an fma
/// (a plain `a * b` may be, when an add of it follows).
#[inline(always)]
pub fn mul_rn(a: f32, b: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "mul.rn.f32 {0}, {1}, {2};",
            out(reg32) r, in(reg32) a, in(reg32) b, options(pure, nomem, nostack)
        );
    }
    r
}

/// `add.rn.f32`: the sum rounded once, never contracted with the product feeding it.
#[inline(always)]
pub fn add_rn(a: f32, b: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "add.rn.f32 {0}, {1}, {2};",
            out(reg32) r, in(reg32) a, in(reg32) b, options(pure, nomem, nostack)
        );
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Hopper-only (sm_90a module)
// ---------------------------------------------------------------------------------------------

/// `max.u16x2` (sm_90+): the unsigned maximum of each 16-bit half.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn max_u16x2(a: u32, b: u32) -> u32 {
    let r: u32;
    // SAFETY: pure arithmetic.
    unsafe {
        asm!(
            "max.u16x2 {0}, {1}, {2};",
            out(reg32) r, in(reg32) a, in(reg32) b, options(pure, nomem, nostack)
        );
    }
    r
}

/// `%cluster_ctarank`: this CTA's rank in its thread-block cluster (sm_90+).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn cluster_cta_rank() -> u32 {
    let r: u32;
    // SAFETY: reading a special register.
    unsafe {
        asm!("mov.u32 {0}, %cluster_ctarank;", out(reg32) r, options(pure, nomem, nostack));
    }
    r
}

/// `wgmma.fence`: orders register accesses before warpgroup mma (sm_90a).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_fence() {
    // SAFETY: warpgroup-collective fence; the whole warpgroup executes it together.
    unsafe {
        asm!("wgmma.fence.sync.aligned;", options(nostack));
    }
}

/// `wgmma.commit_group`: closes the group of wgmma operations issued since the last commit.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_commit() {
    // SAFETY: warpgroup-collective, no operands.
    unsafe {
        asm!("wgmma.commit_group.sync.aligned;", options(nostack));
    }
}

/// `wgmma.wait_group N`: waits until at most `N` committed wgmma groups are pending. Registers an
/// in-flight wgmma writes must be passed through [`pin_f32x4`]/[`pin_i32x4`] after this, so that
/// LLVM cannot move their reads above the wait (it sees the wgmma asm as producing them at issue).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_wait<const N: u32>() {
    // SAFETY: warpgroup-collective, no operands; a memory clobber keeps it ordered.
    unsafe {
        asm!("wgmma.wait_group.sync.aligned {n};", n = const N, options(nostack));
    }
}

/// An empty asm that "rewrites" 4 registers: an ordering point for registers an asynchronous
/// wgmma writes (CUTLASS's `warpgroup_fence_operand`). Side-effecting asm is never reordered with
/// the wgmma and wait asm around it, so reads after the pin stay after the wait.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn pin_f32x4(x: &mut [f32; 4]) {
    // SAFETY: emits no instruction.
    unsafe {
        asm!("/* pin {0} {1} {2} {3} */", inout(reg32) x[0], inout(reg32) x[1], inout(reg32) x[2], inout(reg32) x[3], options(nostack));
    }
}

/// [`pin_f32x4`] for a 64-bit value (wgmma descriptors: computed before [`wgmma_fence`], so that
/// no instruction defines a wgmma input inside the issue sequence, which makes ptxas serialize).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn pin_u64(x: &mut u64) {
    // SAFETY: emits no instruction.
    unsafe {
        asm!("/* pin {0} */", inout(reg64) * x, options(nostack));
    }
}

/// [`pin_f32x4`] for s32 accumulators.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn pin_i32x4(x: &mut [i32; 4]) {
    // SAFETY: emits no instruction.
    unsafe {
        asm!("/* pin {0} {1} {2} {3} */", inout(reg32) x[0], inout(reg32) x[1], inout(reg32) x[2], inout(reg32) x[3], options(nostack));
    }
}

/// `fence.proxy.async.shared::cta`: makes this thread's view of shared memory written through the
/// generic proxy (st.shared, cp.async) visible to the async proxy (wgmma, TMA) and vice versa.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn fence_proxy_async_shared() {
    // SAFETY: a fence, no operands.
    unsafe {
        asm!("fence.proxy.async.shared::cta;", options(nostack));
    }
}

/// `x`, through a `mov` the compiler may not move out of a loop (volatile asm): values computed
/// from it inside a loop are recomputed there instead of being hoisted and kept in registers
/// across it (register pressure; `sage_prepare_k_head`: 75 registers at sm_80 with it, where the
/// 80-register cap leaves little room).
#[inline(always)]
pub fn opaque_u32(x: u32) -> u32 {
    let r: u32;
    // SAFETY: a register move; no memory is touched.
    unsafe {
        asm!("mov.u32 {0}, {1};", out(reg32) r, in(reg32) x, options(nomem, nostack));
    }
    r
}

// The named barriers go through LLVM's intrinsics, not `asm!`: the intrinsics are `convergent`,
// inline asm is not, and LLVM tail-duplicated an asm `bar.sync` into both arms of a lane-dependent
// branch (`sage_prepare_k_head`: lane 0 and lanes 1–31 of a warp then wait at two different
// `bar.sync` instructions, which the aligned barrier forbids: the CTA hung on the H200).
unsafe extern "C" {
    #[link_name = "llvm.nvvm.barrier.cta.sync.aligned.count"]
    fn barrier_cta_sync_aligned_count(id: u32, count: u32);
    #[cfg(feature = "hopper")]
    #[link_name = "llvm.nvvm.barrier.cta.arrive.aligned.count"]
    fn barrier_cta_arrive_aligned_count(id: u32, count: u32);
    #[cfg(feature = "hopper")]
    #[link_name = "llvm.nvvm.barrier.cta.red.and.aligned.count"]
    fn barrier_cta_red_and_aligned_count(id: u32, count: u32, pred: bool) -> bool;
    #[link_name = "llvm.nvvm.barrier.cta.red.or.aligned.all"]
    fn barrier_cta_red_or_aligned_all(id: u32, pred: bool) -> bool;
}

/// `bar.red.or.pred 0`: [`sync_threads`] that also returns whether `pred` held on any thread of
/// the block (the same answer on all).
#[inline(always)]
pub fn sync_threads_any(pred: bool) -> bool {
    // SAFETY: callers keep the barrier in block-uniform control flow (a kernel-wide invariant).
    unsafe { barrier_cta_red_or_aligned_all(0, pred) }
}

/// `bar.sync id, count`: a named barrier for `count` threads (a multiple of 32; every warp that
/// takes part reaches it with all its threads).
#[inline(always)]
pub fn named_barrier_sync(id: u32, count: u32) {
    // SAFETY: callers keep the barrier in uniform control flow of the participating warps.
    unsafe { barrier_cta_sync_aligned_count(id, count) }
}

/// `bar.arrive id, count`: arrives at a named barrier without waiting (the `count` threads of
/// the barrier are the arriving ones plus those that `bar.sync` on it).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn named_barrier_arrive(id: u32, count: u32) {
    // SAFETY: callers keep the barrier in uniform control flow of the participating warps.
    unsafe { barrier_cta_arrive_aligned_count(id, count) }
}

/// `bar.red.and.pred id, count`: a named barrier for `count` threads that also returns whether
/// `pred` held on every one of them (the same answer on all).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn named_barrier_all(id: u32, count: u32, pred: bool) -> bool {
    // SAFETY: callers keep the barrier in uniform control flow of the participating warps.
    unsafe { barrier_cta_red_and_aligned_count(id, count, pred) }
}

/// `mbarrier.init.shared::cta.b64 [addr], count`.
///
/// # Safety
/// `addr` is an 8-byte aligned shared address no other thread uses until a barrier orders it.
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn mbarrier_init(addr: u32, count: u32) {
    unsafe {
        asm!("mbarrier.init.shared::cta.b64 [{0}], {1};", in(reg32) addr, in(reg32) count, options(nostack));
    }
}

/// `mbarrier.try_wait.parity`: true once the phase of parity `parity` of the barrier has completed
/// (the thread may be suspended for a system-dependent time before false is returned).
///
/// # Safety
/// `addr` is an initialised mbarrier in shared memory.
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn mbarrier_try_wait_parity(addr: u32, parity: u32) -> bool {
    let done: u32;
    unsafe {
        asm!(
            "{{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [{1}], {2}; selp.u32 {0}, 1, 0, p; }}",
            out(reg32) done, in(reg32) addr, in(reg32) parity, options(nostack)
        );
    }
    done != 0
}

/// Spins on [`mbarrier_try_wait_parity`] until the phase of parity `parity` has completed.
///
/// # Safety
/// As [`mbarrier_try_wait_parity`].
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn mbarrier_wait_parity(addr: u32, parity: u32) {
    while !unsafe { mbarrier_try_wait_parity(addr, parity) } {}
}

/// `mbarrier.arrive.shared::cta.b64`: one arrival (release semantics).
///
/// # Safety
/// `addr` is an initialised mbarrier in shared memory.
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn mbarrier_arrive(addr: u32) {
    unsafe {
        asm!(
            "{{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [{0}]; }}",
            in(reg32) addr, options(nostack)
        );
    }
}

/// `mbarrier.arrive.expect_tx`: one arrival, and the barrier's current phase also waits for
/// `bytes` more bytes of asynchronous (TMA) copies to complete on it.
///
/// # Safety
/// `addr` is an initialised mbarrier in shared memory.
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn mbarrier_arrive_expect_tx(addr: u32, bytes: u32) {
    unsafe {
        asm!(
            "mbarrier.arrive.expect_tx.shared::cta.b64 _, [{0}], {1};",
            in(reg32) addr, in(reg32) bytes, options(nostack)
        );
    }
}

/// `cp.async.bulk.tensor.3d` (TMA, sm_90): copies the box at coordinates `(c0, c1, c2)` of the
/// tensor map at generic address `map` into shared memory at `dst` (laid out and swizzled as the
/// map says; coordinates past the tensor's extent are filled with zeros), and signals its bytes
/// on the mbarrier `bar` (`complete_tx`). Issued by one thread.
///
/// # Safety
/// `map` is the generic address of a valid, 64-byte aligned `CUtensorMap` in param, const or
/// global memory that outlives the copy; `dst` has room for the box and the alignment its swizzle
/// needs; `bar` is an initialised mbarrier expecting these bytes.
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn tma_load_3d(dst: u32, map: u64, c0: i32, c1: i32, c2: i32, bar: u32) {
    unsafe {
        asm!(
            "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [{0}], [{1}, {{{2}, {3}, {4}}}], [{5}];",
            in(reg32) dst, in(reg64) map, in(reg32) c0, in(reg32) c1, in(reg32) c2, in(reg32) bar,
            options(nostack)
        );
    }
}

/// As [`tma_load_3d`] for a 4-D tensor map.
///
/// # Safety
/// As for [`tma_load_3d`].
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn tma_load_4d(dst: u32, map: u64, c: [i32; 4], bar: u32) {
    unsafe {
        asm!(
            "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [{0}], [{1}, {{{2}, {3}, {4}, {5}}}], [{6}];",
            in(reg32) dst, in(reg64) map, in(reg32) c[0], in(reg32) c[1], in(reg32) c[2],
            in(reg32) c[3], in(reg32) bar, options(nostack)
        );
    }
}

/// `prefetch.tensormap`: brings the tensor map at generic address `map` into the TMA unit's cache.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn prefetch_tensormap(map: u64) {
    // SAFETY: a prefetch has no effect on memory; a bad address is ignored.
    unsafe {
        asm!("prefetch.tensormap [{0}];", in(reg64) map, options(nostack));
    }
}

/// `cp.async.mbarrier.arrive.noinc.shared::cta.b64`: the barrier receives one arrival (counted
/// in its expected count) once every cp.async this thread issued before has completed.
///
/// # Safety
/// `addr` is an initialised mbarrier in shared memory.
#[cfg(feature = "hopper")]
#[inline(always)]
pub unsafe fn cp_async_mbarrier_arrive_noinc(addr: u32) {
    unsafe {
        asm!("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [{0}];", in(reg32) addr, options(nostack));
    }
}

/// `D = A·Bᵀ` (scale-d 0: D is only written), `wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8`
/// (sm_90a): A (64 rows × 32 bytes of k) and B (64 rows × 32 bytes of k) both K-major in shared
/// memory, given by matrix descriptors. D layout: `d[j][e]` is row `16·(warp%4) + lane/4 +
/// 8·(e/2)`, column `8j + 2·(lane%4) + e%2` (the mma.sync m16n8 C layout per 8-column n-tile).
/// Asynchronous: D must not be read until [`wgmma_wait`]; [`wgmma_fence`] must precede it.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n64k32_s8_first(a_desc: u64, b_desc: u64) -> [[i32; 4]; 8] {
    let mut d = [[0i32; 4]; 8];
    // SAFETY: warpgroup-collective; the descriptors point into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {32}, {33}, 0;",
            out(reg32) d[0][0], out(reg32) d[0][1], out(reg32) d[0][2], out(reg32) d[0][3],
            out(reg32) d[1][0], out(reg32) d[1][1], out(reg32) d[1][2], out(reg32) d[1][3],
            out(reg32) d[2][0], out(reg32) d[2][1], out(reg32) d[2][2], out(reg32) d[2][3],
            out(reg32) d[3][0], out(reg32) d[3][1], out(reg32) d[3][2], out(reg32) d[3][3],
            out(reg32) d[4][0], out(reg32) d[4][1], out(reg32) d[4][2], out(reg32) d[4][3],
            out(reg32) d[5][0], out(reg32) d[5][1], out(reg32) d[5][2], out(reg32) d[5][3],
            out(reg32) d[6][0], out(reg32) d[6][1], out(reg32) d[6][2], out(reg32) d[6][3],
            out(reg32) d[7][0], out(reg32) d[7][1], out(reg32) d[7][2], out(reg32) d[7][3],
            in(reg64) a_desc, in(reg64) b_desc,
            options(nostack)
        );
    }
    d
}

/// `D += A·Bᵀ`, as [`wgmma_m64n64k32_s8_first`] but accumulating (scale-d 1).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n64k32_s8(d: &mut [[i32; 4]; 8], a_desc: u64, b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptors point into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {32}, {33}, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            in(reg64) a_desc, in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D = A·Bᵀ` as [`wgmma_m64n64k32_s8_first`] with 128 B rows (`m64n128k32.s32.s8.s8`): the
/// 8-bit P·V's 128-key K tile in one product per k-step (its two 64-key halves are consecutive
/// K-major rows). D: 16 n-tiles of 8 keys, as [`wgmma_m64n64k32_s8_first`]'s.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n128k32_s8_first(a_desc: u64, b_desc: u64) -> [[i32; 4]; 16] {
    let mut d = [[0i32; 4]; 16];
    // SAFETY: warpgroup-collective; the descriptors point into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {64}, {65}, 0;",
            out(reg32) d[0][0], out(reg32) d[0][1], out(reg32) d[0][2], out(reg32) d[0][3],
            out(reg32) d[1][0], out(reg32) d[1][1], out(reg32) d[1][2], out(reg32) d[1][3],
            out(reg32) d[2][0], out(reg32) d[2][1], out(reg32) d[2][2], out(reg32) d[2][3],
            out(reg32) d[3][0], out(reg32) d[3][1], out(reg32) d[3][2], out(reg32) d[3][3],
            out(reg32) d[4][0], out(reg32) d[4][1], out(reg32) d[4][2], out(reg32) d[4][3],
            out(reg32) d[5][0], out(reg32) d[5][1], out(reg32) d[5][2], out(reg32) d[5][3],
            out(reg32) d[6][0], out(reg32) d[6][1], out(reg32) d[6][2], out(reg32) d[6][3],
            out(reg32) d[7][0], out(reg32) d[7][1], out(reg32) d[7][2], out(reg32) d[7][3],
            out(reg32) d[8][0], out(reg32) d[8][1], out(reg32) d[8][2], out(reg32) d[8][3],
            out(reg32) d[9][0], out(reg32) d[9][1], out(reg32) d[9][2], out(reg32) d[9][3],
            out(reg32) d[10][0], out(reg32) d[10][1], out(reg32) d[10][2], out(reg32) d[10][3],
            out(reg32) d[11][0], out(reg32) d[11][1], out(reg32) d[11][2], out(reg32) d[11][3],
            out(reg32) d[12][0], out(reg32) d[12][1], out(reg32) d[12][2], out(reg32) d[12][3],
            out(reg32) d[13][0], out(reg32) d[13][1], out(reg32) d[13][2], out(reg32) d[13][3],
            out(reg32) d[14][0], out(reg32) d[14][1], out(reg32) d[14][2], out(reg32) d[14][3],
            out(reg32) d[15][0], out(reg32) d[15][1], out(reg32) d[15][2], out(reg32) d[15][3],
            in(reg64) a_desc, in(reg64) b_desc,
            options(nostack)
        );
    }
    d
}

/// `D += A·Bᵀ`, as [`wgmma_m64n128k32_s8_first`] but accumulating (scale-d 1).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n128k32_s8(d: &mut [[i32; 4]; 16], a_desc: u64, b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptors point into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {64}, {65}, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            inout(reg32) d[8][0], inout(reg32) d[8][1], inout(reg32) d[8][2], inout(reg32) d[8][3],
            inout(reg32) d[9][0], inout(reg32) d[9][1], inout(reg32) d[9][2], inout(reg32) d[9][3],
            inout(reg32) d[10][0], inout(reg32) d[10][1], inout(reg32) d[10][2], inout(reg32) d[10][3],
            inout(reg32) d[11][0], inout(reg32) d[11][1], inout(reg32) d[11][2], inout(reg32) d[11][3],
            inout(reg32) d[12][0], inout(reg32) d[12][1], inout(reg32) d[12][2], inout(reg32) d[12][3],
            inout(reg32) d[13][0], inout(reg32) d[13][1], inout(reg32) d[13][2], inout(reg32) d[13][3],
            inout(reg32) d[14][0], inout(reg32) d[14][1], inout(reg32) d[14][2], inout(reg32) d[14][3],
            inout(reg32) d[15][0], inout(reg32) d[15][1], inout(reg32) d[15][2], inout(reg32) d[15][3],
            in(reg64) a_desc, in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D += A·B`, `wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16` (sm_90a) with A (64×16 f16)
/// in registers and B (16 k-rows × 64 n, N-major: `imm-trans-b = 1`) in shared memory. A: four
/// f16x2 registers per thread in the mma.sync m16n8k16 A layout for rows `16·(warp%4)..+16`.
/// D: as [`wgmma_m64n64k32_s8_first`] over 8 n-tiles.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n64k16_f32_f16_rs(d: &mut [[f32; 4]; 8], a: [u32; 4], b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {{{32}, {33}, {34}, {35}}}, {36}, 1, 1, 1, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D += A·B`, `wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16` (sm_90a) with A (64×16 f16)
/// in registers and B (16 k-rows × 128 n, N-major: `imm-trans-b = 1`) in shared memory. A: four
/// f16x2 registers per thread in the mma.sync m16n8k16 A layout for rows `16·(warp%4)..+16`.
/// D: as [`wgmma_m64n64k32_s8_first`] over 16 n-tiles.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n128k16_f32_f16_rs(d: &mut [[f32; 4]; 16], a: [u32; 4], b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {{{64}, {65}, {66}, {67}}}, {68}, 1, 1, 1, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            inout(reg32) d[8][0], inout(reg32) d[8][1], inout(reg32) d[8][2], inout(reg32) d[8][3],
            inout(reg32) d[9][0], inout(reg32) d[9][1], inout(reg32) d[9][2], inout(reg32) d[9][3],
            inout(reg32) d[10][0], inout(reg32) d[10][1], inout(reg32) d[10][2], inout(reg32) d[10][3],
            inout(reg32) d[11][0], inout(reg32) d[11][1], inout(reg32) d[11][2], inout(reg32) d[11][3],
            inout(reg32) d[12][0], inout(reg32) d[12][1], inout(reg32) d[12][2], inout(reg32) d[12][3],
            inout(reg32) d[13][0], inout(reg32) d[13][1], inout(reg32) d[13][2], inout(reg32) d[13][3],
            inout(reg32) d[14][0], inout(reg32) d[14][1], inout(reg32) d[14][2], inout(reg32) d[14][3],
            inout(reg32) d[15][0], inout(reg32) d[15][1], inout(reg32) d[15][2], inout(reg32) d[15][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D += A·B`, `wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16` (sm_90a) with A (64×16 f16)
/// in registers and B (16 k-rows × 96 n, N-major: `imm-trans-b = 1`) in shared memory. A: four
/// f16x2 registers per thread in the mma.sync m16n8k16 A layout for rows `16·(warp%4)..+16`.
/// D: as [`wgmma_m64n64k32_s8_first`] over 12 n-tiles.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n96k16_f32_f16_rs(d: &mut [[f32; 4]; 12], a: [u32; 4], b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}}}, {{{48}, {49}, {50}, {51}}}, {52}, 1, 1, 1, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            inout(reg32) d[8][0], inout(reg32) d[8][1], inout(reg32) d[8][2], inout(reg32) d[8][3],
            inout(reg32) d[9][0], inout(reg32) d[9][1], inout(reg32) d[9][2], inout(reg32) d[9][3],
            inout(reg32) d[10][0], inout(reg32) d[10][1], inout(reg32) d[10][2], inout(reg32) d[10][3],
            inout(reg32) d[11][0], inout(reg32) d[11][1], inout(reg32) d[11][2], inout(reg32) d[11][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D = A·B` (scale-d 0), `wgmma.mma_async.sync.aligned.m64n64k32.s32.u8.s8` (sm_90a): A (64 rows ×
/// 32 k of u8) in registers, in the mma.sync m16n8k32 A layout for rows `16·(warp%4)..+16`
/// (`a[0]`: row `lane/4`, k `4·(lane%4)..+4`, lowest k in the lowest byte; `a[1]`: row + 8;
/// `a[2]`, `a[3]`: k + 16); B (64 n-rows × 32 bytes of k, s8, K-major) in shared memory.
/// D: as [`wgmma_m64n64k32_s8_first`] over 8 n-tiles. Integer products accumulate exactly.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n64k32_u8s8_rs_first(a: [u32; 4], b_desc: u64) -> [[i32; 4]; 8] {
    let mut d = [[0i32; 4]; 8];
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n64k32.s32.u8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {{{32}, {33}, {34}, {35}}}, {36}, 0;",
            out(reg32) d[0][0], out(reg32) d[0][1], out(reg32) d[0][2], out(reg32) d[0][3],
            out(reg32) d[1][0], out(reg32) d[1][1], out(reg32) d[1][2], out(reg32) d[1][3],
            out(reg32) d[2][0], out(reg32) d[2][1], out(reg32) d[2][2], out(reg32) d[2][3],
            out(reg32) d[3][0], out(reg32) d[3][1], out(reg32) d[3][2], out(reg32) d[3][3],
            out(reg32) d[4][0], out(reg32) d[4][1], out(reg32) d[4][2], out(reg32) d[4][3],
            out(reg32) d[5][0], out(reg32) d[5][1], out(reg32) d[5][2], out(reg32) d[5][3],
            out(reg32) d[6][0], out(reg32) d[6][1], out(reg32) d[6][2], out(reg32) d[6][3],
            out(reg32) d[7][0], out(reg32) d[7][1], out(reg32) d[7][2], out(reg32) d[7][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
    d
}

/// `D += A·B`, as [`wgmma_m64n64k32_u8s8_rs_first`] but accumulating (scale-d 1).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n64k32_u8s8_rs(d: &mut [[i32; 4]; 8], a: [u32; 4], b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n64k32.s32.u8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {{{32}, {33}, {34}, {35}}}, {36}, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D = A·B` (scale-d 0), `wgmma.mma_async.sync.aligned.m64n128k32.s32.u8.s8` (sm_90a): A (64 rows ×
/// 32 k of u8) in registers, in the mma.sync m16n8k32 A layout for rows `16·(warp%4)..+16`
/// (`a[0]`: row `lane/4`, k `4·(lane%4)..+4`, lowest k in the lowest byte; `a[1]`: row + 8;
/// `a[2]`, `a[3]`: k + 16); B (128 n-rows × 32 bytes of k, s8, K-major) in shared memory.
/// D: as [`wgmma_m64n64k32_s8_first`] over 16 n-tiles. Integer products accumulate exactly.
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n128k32_u8s8_rs_first(a: [u32; 4], b_desc: u64) -> [[i32; 4]; 16] {
    let mut d = [[0i32; 4]; 16];
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n128k32.s32.u8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {{{64}, {65}, {66}, {67}}}, {68}, 0;",
            out(reg32) d[0][0], out(reg32) d[0][1], out(reg32) d[0][2], out(reg32) d[0][3],
            out(reg32) d[1][0], out(reg32) d[1][1], out(reg32) d[1][2], out(reg32) d[1][3],
            out(reg32) d[2][0], out(reg32) d[2][1], out(reg32) d[2][2], out(reg32) d[2][3],
            out(reg32) d[3][0], out(reg32) d[3][1], out(reg32) d[3][2], out(reg32) d[3][3],
            out(reg32) d[4][0], out(reg32) d[4][1], out(reg32) d[4][2], out(reg32) d[4][3],
            out(reg32) d[5][0], out(reg32) d[5][1], out(reg32) d[5][2], out(reg32) d[5][3],
            out(reg32) d[6][0], out(reg32) d[6][1], out(reg32) d[6][2], out(reg32) d[6][3],
            out(reg32) d[7][0], out(reg32) d[7][1], out(reg32) d[7][2], out(reg32) d[7][3],
            out(reg32) d[8][0], out(reg32) d[8][1], out(reg32) d[8][2], out(reg32) d[8][3],
            out(reg32) d[9][0], out(reg32) d[9][1], out(reg32) d[9][2], out(reg32) d[9][3],
            out(reg32) d[10][0], out(reg32) d[10][1], out(reg32) d[10][2], out(reg32) d[10][3],
            out(reg32) d[11][0], out(reg32) d[11][1], out(reg32) d[11][2], out(reg32) d[11][3],
            out(reg32) d[12][0], out(reg32) d[12][1], out(reg32) d[12][2], out(reg32) d[12][3],
            out(reg32) d[13][0], out(reg32) d[13][1], out(reg32) d[13][2], out(reg32) d[13][3],
            out(reg32) d[14][0], out(reg32) d[14][1], out(reg32) d[14][2], out(reg32) d[14][3],
            out(reg32) d[15][0], out(reg32) d[15][1], out(reg32) d[15][2], out(reg32) d[15][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
    d
}

/// `D += A·B`, as [`wgmma_m64n128k32_u8s8_rs_first`] but accumulating (scale-d 1).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n128k32_u8s8_rs(d: &mut [[i32; 4]; 16], a: [u32; 4], b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n128k32.s32.u8.s8 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {{{64}, {65}, {66}, {67}}}, {68}, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            inout(reg32) d[8][0], inout(reg32) d[8][1], inout(reg32) d[8][2], inout(reg32) d[8][3],
            inout(reg32) d[9][0], inout(reg32) d[9][1], inout(reg32) d[9][2], inout(reg32) d[9][3],
            inout(reg32) d[10][0], inout(reg32) d[10][1], inout(reg32) d[10][2], inout(reg32) d[10][3],
            inout(reg32) d[11][0], inout(reg32) d[11][1], inout(reg32) d[11][2], inout(reg32) d[11][3],
            inout(reg32) d[12][0], inout(reg32) d[12][1], inout(reg32) d[12][2], inout(reg32) d[12][3],
            inout(reg32) d[13][0], inout(reg32) d[13][1], inout(reg32) d[13][2], inout(reg32) d[13][3],
            inout(reg32) d[14][0], inout(reg32) d[14][1], inout(reg32) d[14][2], inout(reg32) d[14][3],
            inout(reg32) d[15][0], inout(reg32) d[15][1], inout(reg32) d[15][2], inout(reg32) d[15][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D = A·B` (scale-d 0), `wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3` (sm_90a): A
/// (64 rows × 32 k of e4m3) in registers, in the layout of [`wgmma_m64n64k32_u8s8_rs_first`]'s
/// u8 A (the 8-bit formats share it); B (64 n-rows × 32 bytes of k, e4m3, K-major) in shared
/// memory. D: f32, in the accumulator layout of [`wgmma_m64n64k32_u8s8_rs_first`].
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n64k32_e4m3_rs_first(a: [u32; 4], b_desc: u64) -> [[f32; 4]; 8] {
    let mut d = [[0.0f32; 4]; 8];
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {{{32}, {33}, {34}, {35}}}, {36}, 0, 1, 1;",
            out(reg32) d[0][0], out(reg32) d[0][1], out(reg32) d[0][2], out(reg32) d[0][3],
            out(reg32) d[1][0], out(reg32) d[1][1], out(reg32) d[1][2], out(reg32) d[1][3],
            out(reg32) d[2][0], out(reg32) d[2][1], out(reg32) d[2][2], out(reg32) d[2][3],
            out(reg32) d[3][0], out(reg32) d[3][1], out(reg32) d[3][2], out(reg32) d[3][3],
            out(reg32) d[4][0], out(reg32) d[4][1], out(reg32) d[4][2], out(reg32) d[4][3],
            out(reg32) d[5][0], out(reg32) d[5][1], out(reg32) d[5][2], out(reg32) d[5][3],
            out(reg32) d[6][0], out(reg32) d[6][1], out(reg32) d[6][2], out(reg32) d[6][3],
            out(reg32) d[7][0], out(reg32) d[7][1], out(reg32) d[7][2], out(reg32) d[7][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
    d
}

/// `D += A·B`, as [`wgmma_m64n64k32_e4m3_rs_first`] but accumulating (scale-d 1).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n64k32_e4m3_rs(d: &mut [[f32; 4]; 8], a: [u32; 4], b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {{{32}, {33}, {34}, {35}}}, {36}, 1, 1, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
}

/// `D = A·B` (scale-d 0), `wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3` (sm_90a): A
/// (64 rows × 32 k of e4m3) in registers, in the layout of [`wgmma_m64n128k32_u8s8_rs_first`]'s
/// u8 A (the 8-bit formats share it); B (128 n-rows × 32 bytes of k, e4m3, K-major) in shared
/// memory. D: f32, in the accumulator layout of [`wgmma_m64n128k32_u8s8_rs_first`].
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n128k32_e4m3_rs_first(a: [u32; 4], b_desc: u64) -> [[f32; 4]; 16] {
    let mut d = [[0.0f32; 4]; 16];
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {{{64}, {65}, {66}, {67}}}, {68}, 0, 1, 1;",
            out(reg32) d[0][0], out(reg32) d[0][1], out(reg32) d[0][2], out(reg32) d[0][3],
            out(reg32) d[1][0], out(reg32) d[1][1], out(reg32) d[1][2], out(reg32) d[1][3],
            out(reg32) d[2][0], out(reg32) d[2][1], out(reg32) d[2][2], out(reg32) d[2][3],
            out(reg32) d[3][0], out(reg32) d[3][1], out(reg32) d[3][2], out(reg32) d[3][3],
            out(reg32) d[4][0], out(reg32) d[4][1], out(reg32) d[4][2], out(reg32) d[4][3],
            out(reg32) d[5][0], out(reg32) d[5][1], out(reg32) d[5][2], out(reg32) d[5][3],
            out(reg32) d[6][0], out(reg32) d[6][1], out(reg32) d[6][2], out(reg32) d[6][3],
            out(reg32) d[7][0], out(reg32) d[7][1], out(reg32) d[7][2], out(reg32) d[7][3],
            out(reg32) d[8][0], out(reg32) d[8][1], out(reg32) d[8][2], out(reg32) d[8][3],
            out(reg32) d[9][0], out(reg32) d[9][1], out(reg32) d[9][2], out(reg32) d[9][3],
            out(reg32) d[10][0], out(reg32) d[10][1], out(reg32) d[10][2], out(reg32) d[10][3],
            out(reg32) d[11][0], out(reg32) d[11][1], out(reg32) d[11][2], out(reg32) d[11][3],
            out(reg32) d[12][0], out(reg32) d[12][1], out(reg32) d[12][2], out(reg32) d[12][3],
            out(reg32) d[13][0], out(reg32) d[13][1], out(reg32) d[13][2], out(reg32) d[13][3],
            out(reg32) d[14][0], out(reg32) d[14][1], out(reg32) d[14][2], out(reg32) d[14][3],
            out(reg32) d[15][0], out(reg32) d[15][1], out(reg32) d[15][2], out(reg32) d[15][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
    d
}

/// `D += A·B`, as [`wgmma_m64n128k32_e4m3_rs_first`] but accumulating (scale-d 1).
#[cfg(feature = "hopper")]
#[inline(always)]
pub fn wgmma_m64n128k32_e4m3_rs(d: &mut [[f32; 4]; 16], a: [u32; 4], b_desc: u64) {
    // SAFETY: warpgroup-collective; the descriptor points into this CTA's shared memory (caller).
    unsafe {
        asm!(
            "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {{{64}, {65}, {66}, {67}}}, {68}, 1, 1, 1;",
            inout(reg32) d[0][0], inout(reg32) d[0][1], inout(reg32) d[0][2], inout(reg32) d[0][3],
            inout(reg32) d[1][0], inout(reg32) d[1][1], inout(reg32) d[1][2], inout(reg32) d[1][3],
            inout(reg32) d[2][0], inout(reg32) d[2][1], inout(reg32) d[2][2], inout(reg32) d[2][3],
            inout(reg32) d[3][0], inout(reg32) d[3][1], inout(reg32) d[3][2], inout(reg32) d[3][3],
            inout(reg32) d[4][0], inout(reg32) d[4][1], inout(reg32) d[4][2], inout(reg32) d[4][3],
            inout(reg32) d[5][0], inout(reg32) d[5][1], inout(reg32) d[5][2], inout(reg32) d[5][3],
            inout(reg32) d[6][0], inout(reg32) d[6][1], inout(reg32) d[6][2], inout(reg32) d[6][3],
            inout(reg32) d[7][0], inout(reg32) d[7][1], inout(reg32) d[7][2], inout(reg32) d[7][3],
            inout(reg32) d[8][0], inout(reg32) d[8][1], inout(reg32) d[8][2], inout(reg32) d[8][3],
            inout(reg32) d[9][0], inout(reg32) d[9][1], inout(reg32) d[9][2], inout(reg32) d[9][3],
            inout(reg32) d[10][0], inout(reg32) d[10][1], inout(reg32) d[10][2], inout(reg32) d[10][3],
            inout(reg32) d[11][0], inout(reg32) d[11][1], inout(reg32) d[11][2], inout(reg32) d[11][3],
            inout(reg32) d[12][0], inout(reg32) d[12][1], inout(reg32) d[12][2], inout(reg32) d[12][3],
            inout(reg32) d[13][0], inout(reg32) d[13][1], inout(reg32) d[13][2], inout(reg32) d[13][3],
            inout(reg32) d[14][0], inout(reg32) d[14][1], inout(reg32) d[14][2], inout(reg32) d[14][3],
            inout(reg32) d[15][0], inout(reg32) d[15][1], inout(reg32) d[15][2], inout(reg32) d[15][3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg64) b_desc,
            options(nostack)
        );
    }
}
