//! CPU checks of the portable kernel's shared-memory layout (the same `const fn`s the device code
//! uses): every ldmatrix / cp.async row address is 16-byte aligned, the 8 rows one ldmatrix reads
//! at one column fall in 8 distinct 16-byte bank groups (no bank conflicts), and every variant's
//! shared memory fits the opt-in limit of every target (99 KiB per block on sm_86/sm_89, the
//! smallest; 163 KiB on A100, 227 KiB on H100).

use sageattention::device_config::{
    attn_smem_bytes, cta_k, cta_q, p8_tile, pv8_cta_k, pv8_cta_q, pv8_smem_bytes, smem_offset,
    KERNEL_HEAD_DIMS, K_BLOCK, PV8_KERNEL_HEAD_DIMS, Q_BLOCK,
};

/// 16-byte bank group (of 8 per 128-byte bank row) of a shared-memory byte offset.
fn bank_group(offset: usize) -> usize {
    (offset / 16) % 8
}

#[test]
fn ldmatrix_rows_hit_distinct_bank_groups() {
    for head_dim in KERNEL_HEAD_DIMS {
        // Q and K tiles hold head_dim int8 bytes per row, V tiles 2 * head_dim f16 bytes.
        for row_bytes in [head_dim, 2 * head_dim] {
            for first_row in 0..16 {
                for chunk in 0..row_bytes / 16 {
                    let offsets: Vec<usize> = (first_row..first_row + 8)
                        .map(|r| smem_offset(row_bytes, r, chunk))
                        .collect();
                    assert!(
                        offsets.iter().all(|o| o % 16 == 0),
                        "unaligned: {offsets:?}"
                    );
                    let mut groups: Vec<usize> = offsets.iter().map(|&o| bank_group(o)).collect();
                    groups.sort_unstable();
                    groups.dedup();
                    assert_eq!(
                        groups.len(),
                        8,
                        "d={head_dim} row_bytes={row_bytes} rows {first_row}.. chunk {chunk}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_variant_fits_shared_memory() {
    const SM86_OPTIN: usize = 99 * 1024;
    for head_dim in KERNEL_HEAD_DIMS {
        for (pv_f32, compact) in [(false, false), (true, false), (false, true), (true, true)] {
            let bytes = attn_smem_bytes(head_dim, pv_f32, compact);
            assert!(
                bytes <= SM86_OPTIN,
                "d={head_dim} pv_f32={pv_f32} compact={compact}: {bytes} B"
            );
            assert_eq!(
                128 % cta_q(head_dim, pv_f32),
                0,
                "a CTA's rows lie inside whole Q blocks"
            );
            assert_eq!(
                64 % cta_k(head_dim, pv_f32, compact),
                0,
                "a key tile must share one K scale"
            );
        }
    }
}

#[test]
fn every_pv8_variant_fits_shared_memory() {
    const SM86_OPTIN: usize = 99 * 1024;
    for head_dim in PV8_KERNEL_HEAD_DIMS {
        let bytes = pv8_smem_bytes(head_dim);
        assert!(bytes <= SM86_OPTIN, "pv8 d={head_dim}: {bytes} B");
        assert_eq!(
            Q_BLOCK % pv8_cta_q(head_dim),
            0,
            "a CTA's rows lie inside whole Q blocks"
        );
        assert_eq!(
            pv8_cta_k(head_dim),
            p8_tile(head_dim),
            "a key tile is one P tile of the CPU emulation"
        );
        assert_eq!(pv8_cta_k(head_dim) % K_BLOCK, 0, "whole K blocks per tile");
    }
}
