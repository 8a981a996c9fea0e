//! Kernels that only move bytes, apart from the preparation's jobs: a strided column copy and the
//! store of the sm_90a kernels' TMA descriptors. Kept out of `quant.rs` so that the jobs there
//! hold no kernel entry (the host tests compile them for the CPU).

use crate::params::{ColumnCopyParams, TmaMapsParams};
use crate::ptx;
use crate::unroll::unroll;

/// Copies the first `cols` columns of every row from `src` to `dst` (16-bit elements, 16-byte
/// chunks), both strided `[b][h][seq][·]`. Grid-stride.
///
/// # Safety
/// Launched by the host with validated parameters.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_copy_columns(p: ColumnCopyParams) {
    let chunks = (p.cols / 8) as u64;
    let rows = p.batch as u64 * p.heads as u64 * p.seq as u64;
    let total = rows * chunks;
    let step = ptx::grid_dim_x() as u64 * ptx::block_dim_x() as u64;
    let mut c = ptx::block_idx().0 as u64 * ptx::block_dim_x() as u64 + ptx::thread_idx_x() as u64;
    while c < total {
        let (row, chunk) = (c / chunks, c % chunks);
        let s = (row % p.seq as u64) as i64;
        let bh = row / p.seq as u64;
        let (b, h) = ((bh / p.heads as u64) as i64, (bh % p.heads as u64) as i64);
        let offset = |st: [i64; 3]| 2 * (b * st[0] + h * st[1] + s * st[2] + chunk as i64 * 8);
        // SAFETY: indices inside both validated tensors; 16-byte aligned rows.
        unsafe {
            let v = ptx::ld_global_nc_v4((p.src as i64 + offset(p.src_stride)) as u64);
            ptx::st_global_v4((p.dst as i64 + offset(p.dst_stride)) as u64, v);
        }
        c += step;
    }
}

/// Writes the sm_90a kernels' TMA descriptors (`p.words`) to `p.dst`, one thread: see
/// [`TmaMapsParams`](TmaMapsParams) for why they come as parameters. The next
/// launch on the stream reads them (kernel boundaries order the writes before its TMA loads).
///
/// # Safety
/// Launched by the host with `p.dst` 256 bytes of device memory, 8-byte aligned.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_store_tma_maps(p: TmaMapsParams) {
    if ptx::thread_idx_x() == 0 {
        unroll::<32>(
            #[inline(always)]
            // SAFETY: i < 32 words inside the destination (the caller's contract).
            |i| unsafe { ptx::st_global_u64(p.dst + 8 * i as u64, p.words[i]) },
        );
    }
}
