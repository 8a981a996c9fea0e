//! Single-tile primitive tests, one kernel per mma shape. Each runs one warp and goes through the
//! same shared-memory tile, ldmatrix addressing and fragment types as the attention kernel, so a
//! layout mistake shows up here as a wrong matrix product (checked exactly against the CPU).

use crate::frag::{self, acc_col, acc_row};
use crate::params::TestParams;
use crate::ptx;
use crate::tile::Tile;
use crate::unroll::unroll;

/// Copies `rows` rows of `row_bytes` bytes from global memory into a padded tile (one warp).
///
/// # Safety
/// `src` holds `rows * row_bytes` readable bytes, 16-byte aligned; the tile fits the launch's
/// dynamic shared memory.
#[inline(always)]
unsafe fn stage(tile: Tile, src: u64, rows: u32, row_bytes: u32) {
    let chunks = row_bytes / 16;
    let mut c = ptx::lane_id();
    while c < rows * chunks {
        let (r, k) = (c / chunks, c % chunks);
        unsafe { ptx::cp_async_16(tile.addr(r, k * 16), src + (r * row_bytes + k * 16) as u64) };
        c += 32;
    }
    ptx::cp_async_commit();
    ptx::cp_async_wait::<0>();
    ptx::sync_threads();
}

/// D (16x16 s32) = A (16x32 s8, row-major) · B, where B is stored as 16 rows of 32 s8 (Bᵀ
/// row-major, the way K is stored). One warp, 2 KiB of dynamic shared memory.
///
/// # Safety
/// `p`'s pointers are valid device buffers of those sizes, 16-byte aligned.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_test_mma_s8(p: TestParams) {
    let (a, b, d) = (p.a, p.b, p.d);
    let lane = ptx::lane_id();
    let a_tile = Tile::new(ptx::smem_base(), 32);
    let b_tile = Tile::new(ptx::smem_base() + 1024, 32);
    unsafe {
        stage(a_tile, a, 16, 32);
        stage(b_tile, b, 16, 32);
    }
    let fa = unsafe { frag::load_a(a_tile, 0, 0, lane) };
    let (b0, b1) = unsafe { frag::load_b_rows_pair(b_tile, 0, 0, lane) };
    let mut acc = [[0i32; 4]; 2];
    ptx::mma_s8_m16n8k32(&mut acc[0], fa, b0);
    ptx::mma_s8_m16n8k32(&mut acc[1], fa, b1);
    unroll::<2>(
        #[inline(always)]
        |nt| {
            unroll::<4>(
                #[inline(always)]
                |e| {
                    let idx = acc_row(lane, e) * 16 + nt as u32 * 8 + acc_col(lane, e);
                    // SAFETY: idx < 256, the size of D.
                    unsafe { ptx::st_global_u32(d + 4 * idx as u64, acc[nt][e] as u32) };
                },
            );
        },
    );
}

/// D (16x16 f32) = A (16x16 f16 row-major) · B (16x16 f16 stored row-major as k rows × n columns,
/// the way V is stored), through ldmatrix.trans. One warp, 2 KiB of dynamic shared memory.
///
/// # Safety
/// `p`'s pointers are valid device buffers of those sizes, 16-byte aligned.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_test_mma_f16_f32(p: TestParams) {
    let (a, b, d) = (p.a, p.b, p.d);
    let lane = ptx::lane_id();
    let a_tile = Tile::new(ptx::smem_base(), 32);
    let b_tile = Tile::new(ptx::smem_base() + 1024, 32);
    unsafe {
        stage(a_tile, a, 16, 32);
        stage(b_tile, b, 16, 32);
    }
    let fa = unsafe { frag::load_a(a_tile, 0, 0, lane) };
    let (b0, b1) = unsafe { frag::load_b_trans_pair(b_tile, 0, 0, lane) };
    let mut acc = [[0.0f32; 4]; 2];
    ptx::mma_f16_m16n8k16_f32(&mut acc[0], fa, b0);
    ptx::mma_f16_m16n8k16_f32(&mut acc[1], fa, b1);
    unroll::<2>(
        #[inline(always)]
        |nt| {
            unroll::<4>(
                #[inline(always)]
                |e| {
                    let idx = acc_row(lane, e) * 16 + nt as u32 * 8 + acc_col(lane, e);
                    // SAFETY: idx < 256, the size of D.
                    unsafe { ptx::st_global_f32(d + 4 * idx as u64, acc[nt][e]) };
                },
            );
        },
    );
}

/// As [`sage_test_mma_f16_f32`] with an f16 accumulator; D is 16x16 f16 row-major.
///
/// # Safety
/// `p`'s pointers are valid device buffers of those sizes, 16-byte aligned.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_test_mma_f16_f16(p: TestParams) {
    let (a, b, d) = (p.a, p.b, p.d);
    let lane = ptx::lane_id();
    let a_tile = Tile::new(ptx::smem_base(), 32);
    let b_tile = Tile::new(ptx::smem_base() + 1024, 32);
    unsafe {
        stage(a_tile, a, 16, 32);
        stage(b_tile, b, 16, 32);
    }
    let fa = unsafe { frag::load_a(a_tile, 0, 0, lane) };
    let (b0, b1) = unsafe { frag::load_b_trans_pair(b_tile, 0, 0, lane) };
    let mut acc = [[0u32; 2]; 2];
    ptx::mma_f16_m16n8k16_f16(&mut acc[0], fa, b0);
    ptx::mma_f16_m16n8k16_f16(&mut acc[1], fa, b1);
    unroll::<2>(
        #[inline(always)]
        |nt| {
            unroll::<2>(
                #[inline(always)]
                |h| {
                    let idx = acc_row(lane, 2 * h) * 16 + nt as u32 * 8 + acc_col(lane, 0);
                    // SAFETY: idx + 1 < 256, the size of D; 4-byte aligned since idx is even.
                    unsafe { ptx::st_global_u32(d + 2 * idx as u64, acc[nt][h]) };
                },
            );
        },
    );
}
