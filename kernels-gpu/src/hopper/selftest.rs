//! Single-tile wgmma tests: one warpgroup stages its operands with the kernel's own layouts
//! (`smem::kmajor_offset`, `smem::v_offset`), runs the kernel's own issue helpers
//! (`smem::issue_qk`, `smem::issue_pv`) and writes the accumulators out row-major, so the host can
//! compare them with exact CPU products. Launch: 1 block of 128 threads,
//! `config::SM90_TEST_SMEM` bytes of dynamic shared memory.

use super::config::{sm90_kmajor_row_bytes, SM90_CTA_K, SM90_SMEM_ALIGN};
use super::smem::{
    self, issue_pv, issue_qk, kmajor_desc, kmajor_offset, pv_descs, qk_descs, v96_offset, v_offset,
    v_tile_desc,
};
use crate::params::TestParams;
use crate::ptx;
use crate::unroll::unroll;

/// The dynamic shared memory base rounded up to [`SM90_SMEM_ALIGN`].
#[inline(always)]
pub(crate) fn aligned_smem_base() -> u32 {
    let align = SM90_SMEM_ALIGN as u32;
    (ptx::smem_base() + align - 1) & !(align - 1)
}

/// `D[64][64] = A[64][HD] · B[64][HD]ᵀ` (s8 → s32), both operands K-major from shared memory.
#[inline(always)]
unsafe fn wgmma_s8_test<const HD: usize, const KS: usize>(p: &TestParams) {
    let tid = ptx::thread_idx_x();
    let base = aligned_smem_base();
    let (a_s, b_s) = (
        base,
        base + const { (64 * sm90_kmajor_row_bytes(HD)) as u32 },
    );
    let cpr = (HD / 16) as u32;
    let mut i = tid;
    while i < 64 * cpr {
        let (r, c) = (i / cpr, i % cpr);
        let src = (r * HD as u32 + c * 16) as u64;
        // SAFETY: the host passes 64×HD bytes for each operand.
        unsafe {
            ptx::cp_async_16(a_s + kmajor_offset::<HD>(r, c), p.a + src);
            ptx::cp_async_16(b_s + kmajor_offset::<HD>(r, c), p.b + src);
        }
        i += 128;
    }
    ptx::cp_async_commit();
    ptx::cp_async_wait::<0>();
    ptx::fence_proxy_async_shared();
    ptx::sync_threads();

    let qd = qk_descs::<KS>(kmajor_desc::<HD>(a_s), kmajor_desc::<HD>(b_s));
    ptx::wgmma_fence();
    let mut s = issue_qk::<KS>(&qd);
    ptx::wgmma_commit();
    ptx::wgmma_wait::<0>();
    smem::pin_acc(&mut s);

    let (warp, lane) = (ptx::warp_id(), ptx::lane_id());
    unroll::<8>(
        #[inline(always)]
        |j| {
            unroll::<4>(
                #[inline(always)]
                |e| {
                    let row = 16 * warp + (lane >> 2) + 8 * (e as u32 >> 1);
                    let col = 8 * j as u32 + 2 * (lane & 3) + (e as u32 & 1);
                    // SAFETY: row, col < 64: inside the 64×64 result.
                    unsafe {
                        ptx::st_global_u32(p.d + 4 * (row * 64 + col) as u64, s[j][e] as u32)
                    };
                },
            );
        },
    );
}

/// `D[64][HD] = A[64][64] · B[64][HD]` (f16 → f32), A from registers (built from global memory in
/// the P-fragment layout), B from shared memory in the V layout.
#[inline(always)]
unsafe fn wgmma_f16_test<const HD: usize, const NT: usize>(p: &TestParams) {
    let tid = ptx::thread_idx_x();
    let base = aligned_smem_base();
    let cpr = (HD / 8) as u32;
    let mut i = tid;
    while i < 64 * cpr {
        let (r, c) = (i / cpr, i % cpr);
        // SAFETY: the host passes 64×HD f16 for B.
        unsafe {
            ptx::cp_async_16(
                base + if HD == 96 {
                    v96_offset(r, c)
                } else {
                    v_offset(r, c, SM90_CTA_K as u32)
                },
                p.b + (2 * (r * HD as u32) + 16 * c) as u64,
            )
        };
        i += 128;
    }
    ptx::cp_async_commit();

    // A fragments: warp w holds rows 16w + g and 16w + g + 8; k-step kk covers keys 16kk..16kk+16.
    let (warp, lane) = (ptx::warp_id(), ptx::lane_id());
    let (g, t) = (lane >> 2, lane & 3);
    let mut a = [[0u32; 4]; 4];
    unroll::<4>(
        #[inline(always)]
        |kk| {
            unroll::<4>(
                #[inline(always)]
                |r| {
                    let row = 16 * warp + g + 8 * (r as u32 & 1);
                    let col = 16 * kk as u32 + 8 * (r as u32 >> 1) + 2 * t;
                    // SAFETY: inside the 64×64 f16 operand A.
                    a[kk][r] = unsafe { ptx::ld_global_nc_f32(p.a + 2 * (row * 64 + col) as u64) }
                        .to_bits();
                },
            );
        },
    );

    ptx::cp_async_wait::<0>();
    ptx::fence_proxy_async_shared();
    ptx::sync_threads();

    let mut o = [[0.0f32; 4]; NT];
    let vd = pv_descs::<NT, 4>(v_tile_desc::<HD>(base, SM90_CTA_K as u32));
    ptx::wgmma_fence();
    issue_pv::<NT, 4>(&mut o, &a, &vd);
    ptx::wgmma_commit();
    ptx::wgmma_wait::<0>();
    smem::pin_o(&mut o);

    unroll::<NT>(
        #[inline(always)]
        |j| {
            unroll::<4>(
                #[inline(always)]
                |e| {
                    let row = 16 * warp + g + 8 * (e as u32 >> 1);
                    let col = 8 * j as u32 + 2 * t + (e as u32 & 1);
                    // SAFETY: inside the 64×HD result.
                    unsafe {
                        ptx::st_global_f32(p.d + 4 * (row * HD as u32 + col) as u64, o[j][e])
                    };
                },
            );
        },
    );
}

macro_rules! test_entry {
    ($name:literal, $body:ident, $hd:literal, $n:literal) => {
        const _: () = {
            /// Single-tile wgmma test entry (see the module docs).
            #[unsafe(export_name = $name)]
            pub unsafe extern "ptx-kernel" fn test_entry(p: TestParams) {
                // SAFETY: the host launches it with the documented buffers and shape.
                unsafe { $body::<$hd, $n>(&p) }
            }
        };
    };
}

test_entry!("sage_sm90_test_wgmma_s8_hd64", wgmma_s8_test, 64, 2);
test_entry!("sage_sm90_test_wgmma_s8_hd96", wgmma_s8_test, 96, 3);
test_entry!("sage_sm90_test_wgmma_s8_hd128", wgmma_s8_test, 128, 4);
test_entry!("sage_sm90_test_wgmma_f16_hd64", wgmma_f16_test, 64, 8);
test_entry!("sage_sm90_test_wgmma_f16_hd96", wgmma_f16_test, 96, 12);
test_entry!("sage_sm90_test_wgmma_f16_hd128", wgmma_f16_test, 128, 16);
