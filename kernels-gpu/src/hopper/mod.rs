//! The Hopper (sm_90a) module: the wgmma SageAttention kernel and its single-tile tests.
//!
//! Read order: `config` (launch constants shared with `host/hopper.rs`) → `attention` (the kernel:
//! 3 or 4 warpgroups that compute and copy, mbarrier pipeline, intra-warpgroup overlap of
//! softmax and P·V, pingpong between warpgroups) → `smem` (swizzled tile layouts, wgmma
//! descriptors, issue helpers) → `selftest` (single-tile wgmma tests). The online softmax
//! (`crate::softmax16`) and the u8 P packing (`crate::p8`) are shared with the portable 8-bit
//! P·V kernel; the PTX wrappers (wgmma, mbarrier, proxy fences) are in the Hopper section at the
//! end of `ptx.rs`.

#[path = "../../../abi/hopper_config.rs"]
pub mod config;

mod attention;
mod q_tile;
mod selftest;
mod smem;

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
