//! The device's own arithmetic source, compiled for the host and held to the contract the CPU
//! reference implements: `kernels-gpu/src/quant_arith.rs` (the INT8 quantization of Q and K, both
//! packings) and `kernels-gpu/src/p8.rs` (the u8 and e4m3 P of the 8-bit P·V, in the A-fragment
//! layout). The PTX wrappers they call are host stand-ins written from the PTX ISA
//! (`device_on_host/ptx.rs`); everything else is the kernels' code as the GPU runs it.
//!
//! What the GPU tests cannot show and these do: bit-exact equality (the GPU tests compare whole
//! outputs within a tolerance), on inputs random tests on the GPU rarely reach (every f16 / bf16
//! exponent, NaN, ±∞; exact ties are in cpu_q_tile_shortcuts.rs), and the fragment layout checked
//! element by element against the order the preparation stores Vᵀ in (`config::v8_key_slot`).

// The device crate's features (`hopper`, `ada_fp8`) in the included files.
#![allow(unexpected_cfgs)]

mod common;

#[path = "device_on_host/ptx.rs"]
mod ptx;

#[path = "../kernels-gpu/src/unroll.rs"]
mod unroll;

#[path = "../kernels-gpu/src/acc_layout.rs"]
mod acc_layout;

#[allow(dead_code)]
#[path = "../abi/config.rs"]
mod config;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/quant_arith.rs"]
mod quant_arith;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/p8.rs"]
mod p8;

use acc_layout::{acc_col, acc_row};
use config::{v8_key_slot, P8_MAX, P_FP8_MAX};
use float8::F8E4M3;
use half::f16;
use quant_arith::{abs_max8, bounded_pack_exact, inv_scale, pack_s8x8, pack_s8x8_bounded, scaled8};
use rand::rngs::StdRng;
use rand::Rng;
use sageattention::quant_ref::quantize_block;

/// A 16-bit input of any finite exponent up to `top`, with ±∞ and NaN now and then.
fn raw16(rng: &mut StdRng, is_bf16: bool, top: u16) -> u16 {
    let (shift, all_ones) = if is_bf16 { (7, 0xff) } else { (10, 0x1f) };
    let sign = u16::from(rng.gen_bool(0.5)) << 15;
    match rng.gen_range(0..200) {
        0 => sign | (all_ones << shift),     // ±∞
        1 => sign | (all_ones << shift) | 1, // NaN
        _ => sign | (rng.gen_range(0..=top) << shift) | rng.gen_range(0..(1u16 << shift)),
    }
}

/// A block of `chunks` 8-value chunks through the device's route (the preparation's: each chunk's
/// `abs_max8` from 0, combined with `max.NaN`), against `quantize_block` on the same values.
/// Returns whether the magic-add packing applied.
fn check_block(raw: &[[u32; 4]], is_bf16: bool, mult: f32) -> bool {
    let x: Vec<[f32; 8]> = raw.iter().map(|r| scaled8(r, is_bf16, mult)).collect();
    let amax = x
        .iter()
        .fold(0.0f32, |m, c| ptx::max_nan(m, abs_max8(0.0, c)));
    let inv = inv_scale(amax);
    let packed: Vec<[u32; 2]> = x.iter().map(|c| pack_s8x8(c, inv)).collect();

    let values: Vec<f32> = x.iter().flatten().copied().collect();
    let mut q_ref = vec![0i8; values.len()];
    let scale_ref = quantize_block(&values, &mut q_ref);
    let bytes: Vec<i8> = packed
        .iter()
        .flat_map(|w| w.iter().flat_map(|v| v.to_le_bytes()))
        .map(|b| b as i8)
        .collect();
    let what = format!("bf16 {is_bf16}, mult {mult}, amax {amax}");
    assert_eq!(bytes, q_ref, "pack_s8x8 against quantize_block, {what}");
    let scale = amax / 127.0;
    assert!(
        scale.to_bits() == scale_ref.to_bits() || (scale.is_nan() && scale_ref.is_nan()),
        "scale {scale} against {scale_ref}, {what}"
    );

    let bounded = bounded_pack_exact(amax, inv);
    if bounded {
        for (c, p) in x.iter().zip(&packed) {
            assert_eq!(
                pack_s8x8_bounded(c, inv),
                *p,
                "the magic-add packing, {what}"
            );
        }
    }
    bounded
}

#[test]
fn int8_blocks_pack_as_the_contract_says() {
    let mut rng = common::fresh_rng("quant_arith");
    let mults = [
        std::f32::consts::LOG2_E / 128f32.sqrt(),
        -std::f32::consts::LOG2_E / 96f32.sqrt(),
        1.0,
        3.7e-3,
    ];
    let (mut blocks, mut bounded) = (0, 0);
    for is_bf16 in [false, true] {
        for mult in mults {
            for _ in 0..1500 {
                // Exponents over the format's whole finite range, capped per block so that small
                // blocks (subnormal maxima) come up too.
                let top = rng.gen_range(1..if is_bf16 { 0xff } else { 0x1f });
                let chunks = rng.gen_range(1..=16);
                let raw: Vec<[u32; 4]> = (0..chunks)
                    .map(|_| {
                        std::array::from_fn(|_| {
                            let lo = raw16(&mut rng, is_bf16, top);
                            let hi = raw16(&mut rng, is_bf16, top);
                            u32::from(lo) | (u32::from(hi) << 16)
                        })
                    })
                    .collect();
                blocks += 1;
                bounded += usize::from(check_block(&raw, is_bf16, mult));
            }
        }
    }
    // Most blocks take the magic add; the rest hold a NaN or ∞ (about one in 10 of 8..128 values).
    assert!(
        bounded * 3 > blocks,
        "{bounded} of {blocks} blocks took the magic add"
    );
}

/// The key (0..32) whose probability the Vᵀ layout stores at k slot `slot` of a 32-key step.
fn key_at_slot(slot: usize) -> usize {
    (0..32)
        .find(|&k| v8_key_slot(k) == slot)
        .expect("v8_key_slot is a permutation")
}

/// One warp's 16 × `8·NK` probabilities through `pack`, lane by lane (each lane's accumulator as
/// `acc_row` / `acc_col` place it), checked byte by byte against the m16n8k32 A fragment (word
/// `w`: row `g + 8(w & 1)`, k slots `16(w >> 1) + 4t ..+ 4` for lane `4g + t`) with keys in
/// `v8_key_slot` order, each byte `expect(p)`.
fn check_fragments<const NK: usize>(
    p: &[Vec<f32>],
    pack: impl Fn(&[[f32; 4]; NK]) -> [[u32; 4]; 4],
    expect: impl Fn(f32) -> u8,
) {
    for lane in 0..32u32 {
        let s: [[f32; 4]; NK] = std::array::from_fn(|j| {
            std::array::from_fn(|e| p[acc_row(lane, e) as usize][8 * j + acc_col(lane, e) as usize])
        });
        let frags = pack(&s);
        let (g, t) = ((lane >> 2) as usize, (lane & 3) as usize);
        for (kk, words) in frags.iter().enumerate() {
            for (w, word) in words.iter().enumerate() {
                if 4 * kk >= NK {
                    assert_eq!(*word, 0, "lane {lane}: k-step {kk} is past the tile");
                    continue;
                }
                for (b, byte) in word.to_le_bytes().into_iter().enumerate() {
                    let row = g + 8 * (w & 1);
                    let key = 32 * kk + key_at_slot(16 * (w >> 1) + 4 * t + b);
                    let want = expect(p[row][key]);
                    assert_eq!(
                        byte, want,
                        "NK {NK}, lane {lane}, k-step {kk}, word {w}, byte {b}: row {row}, \
                         key {key}, p {}",
                        p[row][key]
                    );
                }
            }
        }
    }
}

/// Probabilities of a 16-row tile: fresh uniform values with the edges 0, 1 and tiny ones.
fn tile_probs(rng: &mut StdRng, keys: usize) -> Vec<Vec<f32>> {
    (0..16)
        .map(|_| {
            (0..keys)
                .map(|_| match rng.gen_range(0..20) {
                    0 => 0.0,
                    1 => 1.0,
                    2 => rng.gen_range(0.0f32..1e-3),
                    _ => rng.gen_range(0.0f32..1.0),
                })
                .collect()
        })
        .collect()
}

#[test]
fn u8_probabilities_land_in_the_vt_key_order() {
    let mut rng = common::fresh_rng("p8 u8");
    // The emulation's u_j = round(255 · p) (emulation.rs), with p as the kernel holds it (f32).
    let expect = |p: f32| (f64::from(P8_MAX) * f64::from(p)).round_ties_even() as u8;
    for _ in 0..50 {
        check_fragments::<8>(&tile_probs(&mut rng, 64), p8::pack_probs_u8::<8>, expect);
        check_fragments::<16>(&tile_probs(&mut rng, 128), p8::pack_probs_u8::<16>, expect);
    }
}

#[test]
fn e4m3_probabilities_land_in_the_vt_key_order() {
    let mut rng = common::fresh_rng("p8 e4m3");
    // The kernel's probabilities are in e4m3 units already (top at P_FP8_MAX); the emulation rounds
    // them with `float8`, the stand-in for `cvt.rn.satfinite` searches the format's codes.
    let scaled = |rng: &mut StdRng, keys| {
        let mut p = tile_probs(rng, keys);
        p.iter_mut().flatten().for_each(|x| *x *= P_FP8_MAX);
        p
    };
    let expect = |q: f32| F8E4M3::from_f32(q).to_bits();
    for _ in 0..20 {
        check_fragments::<8>(&scaled(&mut rng, 64), p8::pack_probs_e4m3::<8>, expect);
        check_fragments::<16>(&scaled(&mut rng, 128), p8::pack_probs_e4m3::<16>, expect);
    }
}

/// The stand-in conversion agrees with `float8` on every f16 value (the e4m3 P and V inputs'
/// range and more, ties included): the e4m3 test above compares the two.
#[test]
fn the_e4m3_stand_in_matches_float8_on_every_f16() {
    for bits in 0..=u16::MAX {
        let x = f16::from_bits(bits).to_f32();
        let (ours, theirs) = (ptx::cvt_e4m3(x), F8E4M3::from_f32(x).to_bits());
        if x.is_nan() {
            assert_eq!(ours & 0x7f, 0x7f, "NaN {bits:#06x}");
        } else {
            assert_eq!(ours, theirs, "f16 {bits:#06x} = {x}");
        }
    }
}
