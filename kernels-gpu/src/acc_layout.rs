//! Where an accumulator element lies: the mma.sync m16n8 C layout, which is also the per-warp
//! layout of a wgmma m64nN accumulator (each warp holds 16 rows). Shared by both modules.

/// Row (0..16) within the 16x8 tile of accumulator element `e` held by `lane`.
#[inline(always)]
pub const fn acc_row(lane: u32, e: usize) -> u32 {
    (lane >> 2) + 8 * (e as u32 >> 1)
}

/// Column (0..8) within the 16x8 tile of accumulator element `e` held by `lane`.
#[inline(always)]
pub const fn acc_col(lane: u32, e: usize) -> u32 {
    2 * (lane & 3) + (e as u32 & 1)
}
