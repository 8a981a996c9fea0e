//! The Hopper (sm_90a) module. For now it holds a smoke kernel that uses sm_90-only state
//! (`%cluster_ctarank`, `wgmma.fence`), proving the module builds, loads and runs on Hopper; the
//! wgmma attention kernel will live here.

use crate::params::TestParams;
use crate::ptx;

/// Writes `2*i + 1 + cluster_rank` to `out[i]` for each thread i of a single-CTA launch.
///
/// # Safety
/// `p.a` holds `blockDim.x` u32.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_hopper_smoke(p: TestParams) {
    let out = p.a;
    ptx::wgmma_fence();
    let i = ptx::thread_idx_x();
    // SAFETY: i < blockDim.x, the length of the buffer.
    unsafe { ptx::st_global_u32(out + 4 * i as u64, 2 * i + 1 + ptx::cluster_cta_rank()) };
}
