//! The sm_90a kernels' in-kernel Q quantization (`kernels-gpu/src/hopper/q_tile.rs`) gives the
//! contract's bits (`quant_ref::quantize_block` on `x · mult`). Its two shortcuts:
//!
//! 1. the row maximum of `|x · mult|` is `fl(max |x| · |mult|)`, the maximum taken on the 16-bit
//!    inputs' bits with the sign cleared (modelled here: that part of `q_tile.rs` is warp code);
//! 2. `fl(fl(x · mult) · inv) + 1.5 · 2²³` holds the rounded value in the low byte of its bits,
//!    whenever the row's maximum and `127 / max` are finite (the kernel's `bounded` rows; the
//!    others take the conversion, as the preparation does).
//!
//! Everything after the maximum is the device's own `quant_arith.rs` compiled for the host (with
//! the PTX stand-ins of `device_on_host/ptx.rs`): `inv_scale`, `bounded_pack_exact`, `scaled8`,
//! and both packings, each checked bit for bit, the conversion route included. The GPU test
//! `hopper_in_kernel_q_equals_prepared_q` checks the kernel itself; this one reaches what random
//! inputs rarely do: exact ties, every f16 magnitude, a negative `sm_scale`, subnormal maxima, NaN
//! and infinity.

#![allow(unexpected_cfgs)] // the device crate's features in the included file

#[path = "device_on_host/ptx.rs"]
mod ptx;

#[path = "../kernels-gpu/src/unroll.rs"]
mod unroll;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/quant_arith.rs"]
mod quant_arith;

use half::{bf16, f16};
use quant_arith::{bounded_pack_exact, inv_scale, pack_s8x8, pack_s8x8_bounded, scaled8};
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

/// The kernel's route: the row's INT8 values and scale, and whether it was `bounded` (took the
/// magic-number add rather than the conversion).
fn kernel_row(x: &[u16], is_bf16: bool, mult: f32) -> (Vec<i8>, f32, bool) {
    let max_bits = x.iter().map(|&b| b & 0x7fff).max().unwrap_or(0);
    let amax = to_f32(max_bits, is_bf16) * mult.abs();
    let inv = inv_scale(amax);
    let bounded = bounded_pack_exact(amax, inv);
    // Whole 8-value chunks, the row padded with zeros (which pack as 0 either way).
    let mut q = Vec::with_capacity(x.len().next_multiple_of(8));
    for chunk in x.chunks(8) {
        let mut raw = [0u32; 4];
        for (i, &b) in chunk.iter().enumerate() {
            raw[i / 2] |= u32::from(b) << (16 * (i % 2));
        }
        let v = scaled8(&raw, is_bf16, mult);
        let packed = if bounded {
            pack_s8x8_bounded(&v, inv)
        } else {
            pack_s8x8(&v, inv)
        };
        q.extend(packed.iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8));
    }
    q.truncate(x.len());
    (q, amax / 127.0, bounded)
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
    let (q, scale, bounded) = kernel_row(x, is_bf16, mult);
    let what = format!("bf16 {is_bf16}, mult {mult}, bounded {bounded}, row {x:?}");
    assert!(
        scale.to_bits() == scale_ref.to_bits() || (scale.is_nan() && scale_ref.is_nan()),
        "scale {scale} against {scale_ref}, {what}"
    );
    assert_eq!(q, q_ref, "values, {what}");
    if !bounded {
        // Only rows whose maximum is NaN or infinite, or whose 127 / max overflows.
        let amax = scale_ref * 127.0;
        assert!(
            !amax.is_finite() || !(127.0 / amax).is_finite(),
            "fallback on a bounded row: scale {scale_ref}"
        );
    }
    bounded
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
