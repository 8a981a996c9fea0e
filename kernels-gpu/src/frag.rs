//! Named mma fragments and the ldmatrix addressing that fills them. With g = lane/4 and t = lane%4:
//!
//! * [`AccS32`] / [`AccF32`] (16x8 accumulator tile): element `e` of lane `l` sits at
//!   row `g + 8*(e/2)`, column `2t + e%2` ([`acc_row`], [`acc_col`]).
//! * [`FragA`] (16 rows x 32 bytes: int8 16x32 or f16 16x16), row-major in shared memory.
//! * [`FragB`] (8 columns x 32 bytes along k), from rows of K (int8, k contiguous) or, transposed,
//!   from rows of V (f16, n contiguous).

use crate::ptx;
use crate::tile::Tile;

/// A-operand fragment: 4 registers (int8x4 or f16x2 each).
pub type FragA = [u32; 4];
/// B-operand fragment: 2 registers.
pub type FragB = [u32; 2];
/// s32 accumulator of one 16x8 tile.
pub type AccS32 = [i32; 4];
/// f32 accumulator of one 16x8 tile.
pub type AccF32 = [f32; 4];
/// f16 accumulator of one 16x8 tile (two f16x2 registers: rows g and g+8).
pub type AccF16 = [u32; 2];

pub use crate::acc_layout::{acc_col, acc_row};

/// Loads the A fragment covering rows `row0..row0+16` and bytes `byte0..byte0+32` of a row-major
/// tile (int8: 32 k-values; f16: 16 k-values). Matrices: 0 = rows 0-7 / bytes 0-15, 1 = rows 8-15 /
/// bytes 0-15, 2 = rows 0-7 / bytes 16-31, 3 = rows 8-15 / bytes 16-31, matching a0..a3.
///
/// # Safety
/// The 16x32-byte block lies inside the tile; the whole warp calls it together.
#[inline(always)]
pub unsafe fn load_a(tile: Tile, row0: u32, byte0: u32, lane: u32) -> FragA {
    let m = lane >> 3;
    let row = row0 + (m & 1) * 8 + (lane & 7);
    let byte = byte0 + (m >> 1) * 16;
    unsafe { ptx::ldmatrix_x4(tile.addr(row, byte)) }
}

/// Loads the int8 B fragments of two adjacent 8-key n-tiles (keys `key0..key0+16`) for the k-step
/// at bytes `byte0..byte0+32` from a tile of K rows (one key per row, head-dim contiguous).
/// Matrices: 0 = keys 0-7 / bytes 0-15 (b0 of the first n-tile), 1 = keys 0-7 / bytes 16-31 (b1),
/// 2, 3 = the same for keys 8-15.
///
/// # Safety
/// As [`load_a`].
#[inline(always)]
pub unsafe fn load_b_rows_pair(tile: Tile, key0: u32, byte0: u32, lane: u32) -> (FragB, FragB) {
    let m = lane >> 3;
    let key = key0 + (m >> 1) * 8 + (lane & 7);
    let byte = byte0 + (m & 1) * 16;
    let r = unsafe { ptx::ldmatrix_x4(tile.addr(key, byte)) };
    ([r[0], r[1]], [r[2], r[3]])
}

/// Loads the f16 B fragments of two adjacent 8-column n-tiles (columns `col0..col0+16`) for the
/// k-step over rows `row0..row0+16` of a row-major f16 tile (V: one key per row), transposing with
/// ldmatrix.trans. Matrices: 0 = rows 0-7 / cols 0-7 (b0 of the first n-tile), 1 = rows 8-15 /
/// cols 0-7 (b1), 2, 3 = the same for cols 8-15.
///
/// # Safety
/// As [`load_a`].
#[inline(always)]
pub unsafe fn load_b_trans_pair(tile: Tile, row0: u32, col0: u32, lane: u32) -> (FragB, FragB) {
    let m = lane >> 3;
    let row = row0 + (m & 1) * 8 + (lane & 7);
    let col = col0 + (m >> 1) * 8;
    let r = unsafe { ptx::ldmatrix_x4_trans(tile.addr(row, col * 2)) };
    ([r[0], r[1]], [r[2], r[3]])
}

/// Builds the f16 A fragment for keys `16kk..16kk+16` from the f32 probabilities of n-tiles `2kk`
/// and `2kk+1` (accumulator layout → A layout: the FlashAttention-2 register reuse, no shuffles).
#[inline(always)]
pub fn probs_to_frag_a(lo: &AccF32, hi: &AccF32) -> FragA {
    [
        ptx::pack_f16x2(lo[0], lo[1]),
        ptx::pack_f16x2(lo[2], lo[3]),
        ptx::pack_f16x2(hi[0], hi[1]),
        ptx::pack_f16x2(hi[2], hi[3]),
    ]
}
