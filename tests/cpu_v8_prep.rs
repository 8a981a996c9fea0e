//! The 8-bit P·V's V preparation (`kernels-gpu/src/v8.rs`: statistics, finalize, quantized Vᵀ),
//! its own source compiled for the host and run CTA by CTA (`device_on_host/ptx.rs`: one thread per
//! device thread, shuffles per warp, `bar.sync` per CTA, shared memory as words, global memory the
//! host's), against the contract's reference `reference::v8::quantize_v8` bit for bit: means,
//! scales and their inverses, and every Vᵀ byte (docs/design.md, "8-bit P·V"). Both routes of step
//! 2: the finalize job, and the quantization CTAs folding it in (up to `V8_FOLD_MAX_SEGMENTS`
//! segments). Fresh f16/bf16 values with per-channel offsets, HND and NHD strides, output wider
//! than head_dim (zero channels), lengths around the 16-key groups, 64-key tiles and 256-row
//! segments, and in bf16 two channels of subnormals whose `127 / amax` overflows (`inv` must be 0).
//! The INT8 Vᵀ only: the e4m3 one is the sm_89 module's build of the same file (`V_MAX` = 1), which
//! the GPU test `gpu_fp8::fp8_v_preparation_is_bit_exact` covers.

#![allow(unexpected_cfgs)] // the device crate's features in the included files

mod common;

#[path = "device_on_host/ptx.rs"]
mod ptx;

#[path = "../kernels-gpu/src/unroll.rs"]
mod unroll;

#[allow(dead_code)]
#[path = "../abi/config.rs"]
mod config;

#[allow(dead_code)]
#[path = "../abi/params.rs"]
mod params;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/quant_arith.rs"]
mod quant_arith;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/quant.rs"]
mod quant;

#[allow(dead_code)]
#[path = "../kernels-gpu/src/v8.rs"]
mod v8;

use config::{
    padded_len, prep_job, prep_smem_bytes, prep_threads, MEAN_SEGMENT_ROWS, V8_FOLD_MAX_SEGMENTS,
    V8_TILE,
};
use half::{bf16, f16};
use params::V8Params;
use ptx::Launch;
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use sageattention::reference::v8::{quantize_v8_as, VFormat};
use sageattention::reference::HostTensor;

/// One V and the device's buffers for it.
struct Case {
    batch: usize,
    heads: usize,
    seq: usize,
    head_dim: usize,
    out_head_dim: usize,
    bf16: bool,
    nhd: bool,
}

fn cta(threads: usize, smem_bytes: usize) -> Launch {
    Launch {
        threads: threads as u32,
        block: (0, 0, 0),
        grid_x: 1,
        smem_bytes,
    }
}

/// Runs the three jobs as the preparation launches them; returns (mean, scale, Vᵀ).
fn device_v8(c: &Case, v_bits: &[u16], fold: bool) -> (Vec<f32>, Vec<f32>, Vec<i8>) {
    let (b, h, s, d, od) = (c.batch, c.heads, c.seq, c.head_dim, c.out_head_dim);
    let segments = s.div_ceil(MEAN_SEGMENT_ROWS);
    let padded = padded_len(s, V8_TILE);
    let mut partials = vec![f32::NAN; b * h * segments * 3 * d];
    let mut mean = vec![f32::NAN; b * h * od];
    let mut scale = vec![f32::NAN; b * h * 2 * od];
    let mut out = vec![0x55i8; b * h * od * padded];
    let v_stride = if c.nhd {
        [(s * h * d) as i64, d as i64, (h * d) as i64]
    } else {
        [(h * s * d) as i64, (s * d) as i64, d as i64]
    };
    let p = V8Params {
        v: v_bits.as_ptr() as u64,
        partials: partials.as_mut_ptr() as u64,
        mean: mean.as_mut_ptr() as u64,
        scale: scale.as_mut_ptr() as u64,
        out: out.as_mut_ptr() as u64,
        v_stride,
        seq: s as u32,
        heads: h as u32,
        head_dim: d as u32,
        in_bf16: u32::from(c.bf16),
        out_head_dim: od as u32,
        _pad: 0,
    };
    let threads = prep_threads(d);
    // SAFETY (every job below): the buffers above have the sizes V8Params documents, they outlive
    // the runs (each joins its threads), and the geometry is the one the host launches.
    for bi in 0..b as u32 {
        for hi in 0..h as u32 {
            for seg in 0..segments as u32 {
                ptx::run_cta(cta(threads, 0), |_| unsafe { v8::stats(&p, seg, hi, bi) });
            }
        }
    }
    if !fold {
        for bh in 0..(b * h) as u32 {
            ptx::run_cta(cta(128, 0), |_| unsafe { v8::finalize(&p, bh) });
        }
    }
    let smem = prep_smem_bytes(prep_job::V8_QUANT, d, od);
    for bi in 0..b as u32 {
        for hi in 0..h as u32 {
            for tile in 0..(padded / V8_TILE) as u32 {
                ptx::run_cta(cta(threads, smem), |_| unsafe {
                    v8::quantize(&p, fold, tile, hi, bi)
                });
            }
        }
    }
    (mean, scale, out)
}

fn check(rng: &mut StdRng, c: &Case) {
    let (b, h, s, d) = (c.batch, c.heads, c.seq, c.head_dim);
    let offsets: Vec<f32> = (0..d).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let mut values = HostTensor::from_fn([b, h, s, d], false, |_, _, _, ch| {
        let z: f32 = StandardNormal.sample(rng);
        z + offsets[ch]
    });
    if c.bf16 && d > 9 {
        let tiny = 2f32.powi(-133);
        for key in 0..s {
            values.set(0, 0, key, 5, (key % 3) as f32 * tiny);
            values.set(b - 1, h - 1, key, 9, (key % 2) as f32 * tiny);
        }
    }
    // The 16-bit input in the case's layout, and the reference's tensor of the same values.
    let mut v_bits = vec![0u16; b * h * s * d];
    let mut exact = HostTensor::contiguous([b, h, s, d], false);
    for (bi, hi, si, ch) in (0..b).flat_map(|bi| {
        (0..h).flat_map(move |hi| (0..s).flat_map(move |si| (0..d).map(move |ch| (bi, hi, si, ch))))
    }) {
        let x = values.get(bi, hi, si, ch);
        let (bits, rounded) = if c.bf16 {
            let y = bf16::from_f32(x);
            (y.to_bits(), y.to_f32())
        } else {
            let y = f16::from_f32(x);
            (y.to_bits(), y.to_f32())
        };
        let at = if c.nhd {
            ((bi * s + si) * h + hi) * d + ch
        } else {
            ((bi * h + hi) * s + si) * d + ch
        };
        v_bits[at] = bits;
        exact.set(bi, hi, si, ch, rounded);
    }
    let want = quantize_v8_as(&exact, c.out_head_dim, VFormat::Int8);
    let segments = s.div_ceil(MEAN_SEGMENT_ROWS);
    let routes: &[bool] = if segments <= V8_FOLD_MAX_SEGMENTS {
        &[false, true]
    } else {
        &[false]
    };
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for &fold in routes {
        let what = format!(
            "b{b} h{h} seq {s} d {d} out {} bf16 {} nhd {} fold {fold}",
            c.out_head_dim, c.bf16, c.nhd
        );
        let (mean, scale, out) = device_v8(c, &v_bits, fold);
        assert_eq!(bits(&mean), bits(&want.mean), "mean, {what}");
        assert_eq!(bits(&scale), bits(&want.scale), "scale and inverse, {what}");
        let wrong = out.iter().zip(&want.data).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "{wrong} Vᵀ bytes differ, {what}");
    }
}

#[test]
fn v8_preparation_equals_the_reference_bit_for_bit() {
    let mut rng = common::fresh_rng("v8 prep");
    // (batch, heads, seq, head_dim, out_head_dim): one key; inside a 16-key group; past a tile;
    // the fold limit (4 segments) and one past it; d = 96 stored 128 wide.
    for (batch, heads, seq, head_dim, out_head_dim) in [
        (1, 1, 1, 64, 64),
        (2, 1, 17, 64, 64),
        (1, 2, 300, 96, 128),
        (1, 1, 1024, 64, 64),
        (1, 1, 1025, 128, 128),
    ] {
        for (bf16, nhd) in [(false, false), (true, true)] {
            let c = Case {
                batch,
                heads,
                seq,
                head_dim,
                out_head_dim,
                bf16,
                nhd,
            };
            check(&mut rng, &c);
        }
    }
}
