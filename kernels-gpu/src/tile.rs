//! A row-major tile in shared memory whose rows are padded by `SMEM_ROW_PAD` bytes (see
//! `config::smem_row_stride` for why that removes ldmatrix bank conflicts). The offset maths is the
//! same `const fn` the host tests.

use crate::config::smem_row_stride;

/// A padded row-major tile at a 32-bit shared address.
#[derive(Clone, Copy)]
pub struct Tile {
    /// Shared address of row 0.
    pub base: u32,
    /// Bytes from one row to the next (row bytes + padding).
    pub stride: u32,
}

impl Tile {
    /// A tile whose rows hold `row_bytes` bytes of data.
    #[inline(always)]
    pub const fn new(base: u32, row_bytes: usize) -> Self {
        Tile {
            base,
            stride: smem_row_stride(row_bytes) as u32,
        }
    }

    /// Shared address of byte `byte` of row `row`.
    #[inline(always)]
    pub const fn addr(self, row: u32, byte: u32) -> u32 {
        self.base + row * self.stride + byte
    }
}
