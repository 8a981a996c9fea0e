//! The two shortcuts of the sm_90a kernels' in-kernel Q quantization
//! (`kernels-gpu/src/hopper/q_tile.rs`, `quant_arith::pack_s8x8_bounded`) are exact. They are
//! modelled here in f32 on the CPU (IEEE round-to-nearest-even, as `mul.rn`/`add.rn` on the GPU)
//! and compared with the contract's reference, `quant_ref::quantize_block` on `x · mult`:
//!
//! 1. the row maximum of `|x · mult|` is `fl(max |x| · |mult|)`, the maximum taken on the 16-bit
//!    inputs' bits with the sign cleared;
//! 2. `fl(fl(x · mult) · inv) + 1.5 · 2²³` holds the rounded value in the low byte of its bits,
//!    whenever the row's maximum and `127 / max` are finite (the kernel's `bounded` rows; the
//!    others take the conversion, as the preparation does).
//!
//! The GPU test `hopper_in_kernel_q_equals_prepared_q` checks the device code itself; this one
//! reaches what random inputs rarely do: exact ties, every f16 magnitude, a negative `sm_scale`,
//! subnormal maxima, NaN and infinity.

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sageattention::reference::quant_ref::quantize_block;

const LOG2_E: f32 = std::f32::consts::LOG2_E;

fn to_f32(bits: u16, is_bf16: bool) -> f32 {
    if is_bf16 {
        bf16::from_bits(bits).to_f32()
    } else {
        f16::from_bits(bits).to_f32()
    }
}

/// The kernel's route: `None` for a row it hands to the conversion (not bounded).
fn shortcut_row(x: &[u16], is_bf16: bool, mult: f32) -> Option<(Vec<i8>, f32)> {
    let max_bits = x.iter().map(|&b| b & 0x7fff).max().unwrap_or(0);
    let amax = to_f32(max_bits, is_bf16) * mult.abs();
    let inv = if amax == 0.0 { 0.0 } else { 127.0 / amax };
    if !(amax.is_finite() && inv.is_finite()) {
        return None;
    }
    let q = x
        .iter()
        .map(|&b| {
            let t = (to_f32(b, is_bf16) * mult) * inv;
            ((t + 12_582_912.0).to_bits() & 0xff) as u8 as i8
        })
        .collect();
    Some((q, amax / 127.0))
}

/// The contract's route (what the preparation computes).
fn reference_row(x: &[u16], is_bf16: bool, mult: f32) -> (Vec<i8>, f32) {
    let values: Vec<f32> = x.iter().map(|&b| to_f32(b, is_bf16) * mult).collect();
    let mut q = vec![0i8; x.len()];
    let scale = quantize_block(&values, &mut q);
    (q, scale)
}

/// Checks one row; returns whether the shortcut applied.
fn check(x: &[u16], is_bf16: bool, mult: f32) -> bool {
    let (q_ref, scale_ref) = reference_row(x, is_bf16, mult);
    match shortcut_row(x, is_bf16, mult) {
        Some((q, scale)) => {
            assert_eq!(
                scale.to_bits(),
                scale_ref.to_bits(),
                "scale, bf16 {is_bf16}, mult {mult}"
            );
            assert_eq!(q, q_ref, "values, bf16 {is_bf16}, mult {mult}, row {x:?}");
            true
        }
        None => {
            // Only rows whose maximum is NaN or infinite, or whose 127 / max overflows.
            let amax = scale_ref * 127.0;
            assert!(
                !amax.is_finite() || !(127.0 / amax).is_finite(),
                "fallback on a bounded row: scale {scale_ref}"
            );
            false
        }
    }
}

fn mults() -> [f32; 6] {
    [
        LOG2_E / 128f32.sqrt(),
        LOG2_E / 64f32.sqrt(),
        -LOG2_E / 96f32.sqrt(),
        1.0,
        3.7e-3,
        LOG2_E * 0.3,
    ]
}

#[test]
fn random_rows_of_every_magnitude_match_the_reference() {
    let mut rng = StdRng::seed_from_u64(0x5a6e_0071);
    let (mut rows, mut bounded) = (0, 0);
    for is_bf16 in [false, true] {
        for mult in mults() {
            for _ in 0..3000 {
                let len = [8, 64, 96, 128, 256][rng.gen_range(0..5)];
                // Exponents spread over the whole finite range of the format, per row.
                let top = rng.gen_range(1..if is_bf16 { 0xff } else { 0x1f }) as u16;
                let shift = if is_bf16 { 7 } else { 10 };
                let row: Vec<u16> = (0..len)
                    .map(|_| {
                        let e = rng.gen_range(0..=top);
                        let m = rng.gen_range(0..(1u16 << shift));
                        (u16::from(rng.gen_bool(0.5)) << 15) | (e << shift) | m
                    })
                    .collect();
                // bf16 rows of tiny magnitude overflow 127 / max and take the conversion.
                rows += 1;
                bounded += usize::from(check(&row, is_bf16, mult));
            }
        }
    }
    assert!(
        bounded * 10 > rows * 9,
        "{bounded} of {rows} rows took the shortcut"
    );
}

/// Rows whose products land exactly on `k + 0.5`: the maximum is `127 · 2^e`, so `inv = 2^-e`
/// exactly, and the other values are `(k + 0.5) · 2^e` (with `mult = 1`).
#[test]
fn exact_ties_round_to_even() {
    for is_bf16 in [false, true] {
        for e in [-6i32, 0, 3] {
            let scale = 2f32.powi(e);
            let enc = |v: f32| {
                if is_bf16 {
                    bf16::from_f32(v).to_bits()
                } else {
                    f16::from_f32(v).to_bits()
                }
            };
            let mut row = vec![enc(127.0 * scale)];
            for k in -127..127 {
                let v = (k as f32 + 0.5) * scale;
                if to_f32(enc(v), is_bf16) == v {
                    row.push(enc(v));
                }
            }
            assert!(row.len() > 100, "too few exact ties at e = {e}");
            assert!(check(&row, is_bf16, 1.0));
        }
    }
}

/// Zero rows, subnormal maxima (bf16 reaches `127 / max` overflow), infinity and NaN: the
/// shortcut either matches or hands the row to the conversion, never a wrong byte.
#[test]
fn zero_subnormal_infinite_and_nan_rows() {
    for is_bf16 in [false, true] {
        for mult in mults() {
            assert!(check(&[0, 0x8000, 0], is_bf16, mult));
            // The smallest subnormals: bounded in f16 (times mult), an overflowing inverse in bf16.
            check(&[1, 0x8001, 0], is_bf16, mult);
            check(&[0x0003, 0x0001], is_bf16, mult);
            let inf = if is_bf16 { 0x7f80 } else { 0x7c00 };
            let nan = if is_bf16 { 0x7fc1 } else { 0x7e01 };
            assert!(!check(&[0x3c00, inf, 0x1234], is_bf16, mult));
            assert!(!check(&[0x3c00, nan, 0x1234], is_bf16, mult));
        }
    }
    // bf16 subnormal maxima with a small multiplier do overflow `127 / max`: the fallback is used.
    assert!(!check(&[1, 2, 0x8003], true, 3.7e-3));
}
