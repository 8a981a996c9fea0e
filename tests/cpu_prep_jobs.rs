//! The preparation's jobs, their own source compiled for the host and run CTA by CTA
//! (`device_on_host/ptx.rs`: one thread per device thread, shuffles per warp, `bar.sync` and named
//! barriers per CTA, shared memory as words, global memory the host's), against the contract's
//! references bit for bit.
//!
//! Q and K (`kernels-gpu/src/quant.rs`: Q quantization, K's segment sums, K's mean, K
//! quantization with the mean staged or folded in) against `quant_ref::{quantize_q, k_mean,
//! quantize_k}`: INT8 values, per-token Q scales, per-block K scales and K's mean (docs/design.md,
//! "Quantization"). Fresh f16/bf16 values (K with per-channel offsets), HND and NHD strides,
//! `sage_prepare_k_head`'s one-CTA-per-head route (groups on named barriers) beside the two-launch
//! one, lengths around the blocks and segments and both sides of the mean's fold limit, smoothed
//! and not; K gets an all-zero block and, in bf16, a block of subnormals whose `127 / amax`
//! overflows, Q a row of them.
//!
//! V to f16 (`quant::convert_v`, the f16 P·V's copy of bf16 or padded V): every value converted
//! to nearest even (bf16 past ±65504 to ±∞), zero past head_dim.
//!
//! The 8-bit P·V's V (`kernels-gpu/src/v8.rs`: statistics, finalize, quantized Vᵀ) against
//! `reference::v8::quantize_v8`: means, scales and their inverses, every Vᵀ byte (docs/design.md,
//! "8-bit P·V"), on both routes of step 2 (the finalize job, and the quantization CTAs folding it
//! in up to `V8_FOLD_MAX_SEGMENTS` segments), output wider than head_dim (zero channels), and in
//! bf16 two channels of subnormals whose `127 / amax` overflows (`inv` must be 0). The INT8 Vᵀ
//! only: the e4m3 one is the sm_89 module's build of the same file (`V_MAX` = 1), which the GPU
//! test `gpu_fp8::fp8_v_preparation_is_bit_exact` covers.

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
    k_head_smem_bytes, k_head_supported, k_head_threads, padded_len, prep_job, prep_smem_bytes,
    prep_threads, CONVERT_CHUNKS_PER_THREAD, K_BLOCK, K_CHUNKS_PER_THREAD, K_HEAD_MAX_KV_LEN,
    LOG2_E, MEAN_FOLD_MAX_SEGMENTS, MEAN_SEGMENT_ROWS, Q_BLOCK, Q_CHUNKS_PER_THREAD, SUM_K_AHEAD,
    V8_FOLD_MAX_SEGMENTS, V8_TILE,
};
use half::{bf16, f16};
use params::{ConvertParams, MeanParams, QuantParams, V8Params};
use ptx::Launch;
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use sageattention::quant_ref::{k_mean, quantize_k, quantize_q};
use sageattention::reference::v8::{quantize_v8_as, VFormat};
use sageattention::reference::HostTensor;

/// A tensor's geometry and format.
#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    heads: usize,
    seq: usize,
    head_dim: usize,
    bf16: bool,
    nhd: bool,
}

impl Shape {
    fn new([batch, heads, seq, head_dim]: [usize; 4], bf16: bool, nhd: bool) -> Self {
        Shape {
            batch,
            heads,
            seq,
            head_dim,
            bf16,
            nhd,
        }
    }

    fn strides(&self) -> [i64; 3] {
        let (h, s, d) = (self.heads, self.seq, self.head_dim);
        if self.nhd {
            [(s * h * d) as i64, d as i64, (h * d) as i64]
        } else {
            [(h * s * d) as i64, (s * d) as i64, d as i64]
        }
    }
}

/// `values` rounded to the shape's 16-bit format: its bits in the shape's layout, and the
/// rounded values as the reference's tensor.
fn encode(s: &Shape, values: &HostTensor) -> (Vec<u16>, HostTensor) {
    let (b, h, n, d) = (s.batch, s.heads, s.seq, s.head_dim);
    let st = s.strides();
    let mut bits = vec![0u16; b * h * n * d];
    let mut exact = HostTensor::contiguous([b, h, n, d], false);
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..n {
                for c in 0..d {
                    let x = values.get(bi, hi, si, c);
                    let (raw, rounded) = if s.bf16 {
                        (bf16::from_f32(x).to_bits(), bf16::from_f32(x).to_f32())
                    } else {
                        (f16::from_f32(x).to_bits(), f16::from_f32(x).to_f32())
                    };
                    let at = bi as i64 * st[0] + hi as i64 * st[1] + si as i64 * st[2] + c as i64;
                    bits[at as usize] = raw;
                    exact.set(bi, hi, si, c, rounded);
                }
            }
        }
    }
    (bits, exact)
}

fn cta(threads: usize, smem_bytes: usize) -> Launch {
    Launch {
        threads: threads as u32,
        block: (0, 0, 0),
        grid_x: 1,
        smem_bytes,
    }
}

/// The quantization job's parameters for `x` (`mean`: K's mean buffer, or 0).
fn quant_params(s: &Shape, x: &[u16], out: &mut [i8], scale: &mut [f32], mean: u64) -> QuantParams {
    QuantParams {
        x: x.as_ptr() as u64,
        mean,
        out: out.as_mut_ptr() as u64,
        scale: scale.as_mut_ptr() as u64,
        x_stride: s.strides(),
        mult: 1.0,
        block: K_BLOCK as u32,
        seq: s.seq as u32,
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        in_bf16: u32::from(s.bf16),
        out_head_dim: s.head_dim as u32,
        _pad: 0,
    }
}

/// The K-mean jobs' parameters for `x` (`partials`: the segment sums, or 0 where they stay in
/// shared memory).
fn mean_params(s: &Shape, x: &[u16], partials: u64, mean: u64) -> MeanParams {
    MeanParams {
        k: x.as_ptr() as u64,
        partials,
        mean,
        k_stride: s.strides(),
        seq: s.seq as u32,
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        in_bf16: u32::from(s.bf16),
    }
}

/// Job `QUANT_Q` over every block: (INT8 Q, per-token scales).
fn device_q(s: &Shape, x: &[u16], sm_scale: f32) -> (Vec<i8>, Vec<f32>) {
    let padded = padded_len(s.seq, Q_BLOCK);
    let rows = s.batch * s.heads * padded;
    let (mut out, mut scale) = (vec![0x55i8; rows * s.head_dim], vec![f32::NAN; rows]);
    let p = QuantParams {
        mult: sm_scale * LOG2_E,
        block: Q_BLOCK as u32,
        ..quant_params(s, x, &mut out, &mut scale, 0)
    };
    let launch = cta(
        prep_threads(s.head_dim),
        prep_smem_bytes(prep_job::QUANT_Q, s.head_dim, s.head_dim),
    );
    for b in 0..s.batch as u32 {
        for h in 0..s.heads as u32 {
            for blk in 0..(padded / Q_BLOCK) as u32 {
                // SAFETY: the buffers have the sizes QuantParams documents and outlive the run;
                // the geometry is the host's.
                ptx::run_cta(launch, |_| unsafe {
                    let g = quant::Group::cta();
                    quant::quantize_block::<Q_CHUNKS_PER_THREAD, true>(&g, &p, blk, h, b, None)
                });
            }
        }
    }
    (out, scale)
}

/// `sage_prepare_k_head`'s whole smoothed K preparation, one CTA per head (groups on named
/// barriers): (K's mean, INT8 K, per-block scales).
fn device_k_head(s: &Shape, x: &[u16]) -> (Vec<f32>, Vec<i8>, Vec<f32>) {
    let (b, h, d) = (s.batch, s.heads, s.head_dim);
    let padded = padded_len(s.seq, K_BLOCK);
    let mut mean = vec![f32::NAN; b * h * d];
    let mut out = vec![0x55i8; b * h * padded * d];
    let mut scale = vec![f32::NAN; b * h * padded / K_BLOCK];
    let mp = mean_params(s, x, 0, mean.as_mut_ptr() as u64);
    let kp = quant_params(s, x, &mut out, &mut scale, mean.as_mut_ptr() as u64);
    let launch = cta(k_head_threads(d), k_head_smem_bytes(d, s.seq));
    for bi in 0..b as u32 {
        for hi in 0..h as u32 {
            // SAFETY: buffers of the documented sizes that outlive the run; the entry's geometry
            // (`k_head_threads`, `k_head_smem_bytes`), seq ≤ K_HEAD_MAX_KV_LEN.
            ptx::run_cta(launch, |_| unsafe { quant::k_head(&mp, &kp, hi, bi) });
        }
    }
    (mean, out, scale)
}

/// Jobs `SUM_K`, `K_MEAN` (past the fold limit) and `QUANT_K`: (K's mean when a job stored it,
/// INT8 K, per-block scales).
fn device_k(s: &Shape, x: &[u16], smooth: bool) -> (Option<Vec<f32>>, Vec<i8>, Vec<f32>) {
    let (b, h, d) = (s.batch, s.heads, s.head_dim);
    let segments = s.seq.div_ceil(MEAN_SEGMENT_ROWS);
    let padded = padded_len(s.seq, K_BLOCK);
    let mut partials = vec![f32::NAN; b * h * segments * d];
    let mut mean = vec![f32::NAN; b * h * d];
    let mut out = vec![0x55i8; b * h * padded * d];
    let mut scale = vec![f32::NAN; b * h * padded / K_BLOCK];
    let mp = mean_params(s, x, partials.as_mut_ptr() as u64, mean.as_mut_ptr() as u64);
    let fold = segments <= MEAN_FOLD_MAX_SEGMENTS;
    let threads = prep_threads(d);
    // SAFETY (every job): buffers of the documented sizes that outlive the runs; the host's
    // geometry and job order.
    if smooth {
        let launch = cta(threads, prep_smem_bytes(prep_job::SUM_K, d, d));
        for bi in 0..b as u32 {
            for hi in 0..h as u32 {
                for seg in 0..segments as u32 {
                    ptx::run_cta(launch, |_| unsafe {
                        let g = quant::Group::cta();
                        let to = quant::SumsOut::Global;
                        quant::segment_sums::<SUM_K_AHEAD>(&g, &mp, seg, hi, bi, to)
                    });
                }
            }
        }
        if !fold {
            for bh in 0..(b * h) as u32 {
                ptx::run_cta(cta(threads, 0), |_| unsafe { quant::k_mean(&mp, bh) });
            }
        }
    }
    let mean_ptr = if smooth { mean.as_mut_ptr() as u64 } else { 0 };
    let p = quant_params(s, x, &mut out, &mut scale, mean_ptr);
    let launch = cta(threads, prep_smem_bytes(prep_job::QUANT_K, d, d));
    for bi in 0..b as u32 {
        for hi in 0..h as u32 {
            for blk in 0..(padded / K_BLOCK) as u32 {
                ptx::run_cta(launch, |_| unsafe {
                    let g = quant::Group::cta();
                    let from = smooth.then_some(quant::MeanFrom::Stage(&mp, fold));
                    quant::quantize_block::<K_CHUNKS_PER_THREAD, false>(&g, &p, blk, hi, bi, from)
                });
            }
        }
    }
    ((smooth && !fold).then_some(mean), out, scale)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn check(rng: &mut StdRng, s: &Shape) {
    let d = s.head_dim;
    let offsets: Vec<f32> = (0..d).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
    let mut k = HostTensor::from_fn([s.batch, s.heads, s.seq, d], false, |_, _, _, c| {
        let z: f32 = StandardNormal.sample(rng);
        z + offsets[c]
    });
    let q_shape = Shape {
        seq: s.seq + 3,
        ..*s
    };
    let mut q = HostTensor::from_fn([s.batch, s.heads, q_shape.seq, d], false, |_, _, _, _| {
        StandardNormal.sample(rng)
    });
    let tiny = 2f32.powi(-133);
    for key in 0..s.seq.min(K_BLOCK) {
        for c in 0..d {
            k.set(0, 0, key, c, 0.0);
            if s.bf16 && s.seq > K_BLOCK {
                // The second block: subnormals (unsmoothed, 127 / amax overflows).
                let x = rng.gen_range(-40i32..=40) as f32 * tiny;
                k.set(0, 0, K_BLOCK + key % (s.seq - K_BLOCK), c, x);
            }
        }
    }
    if s.bf16 {
        for c in 0..d {
            q.set(0, 0, 1, c, rng.gen_range(-40i32..=40) as f32 * tiny);
        }
    }
    let what = format!("{s:?}");

    let (q_bits, q_exact) = encode(&q_shape, &q);
    let sm_scale = 0.37f32;
    let (q_out, q_scale) = device_q(&q_shape, &q_bits, sm_scale);
    let q_ref = quantize_q(&q_exact, sm_scale);
    assert_eq!(q_out, q_ref.data, "Q INT8, {what}");
    assert_eq!(bits(&q_scale), bits(&q_ref.scale), "Q scales, {what}");

    let (k_bits, k_exact) = encode(s, &k);
    for smooth in [true, false] {
        let (mean, k_out, k_scale) = device_k(s, &k_bits, smooth);
        let mean_ref = k_mean(&k_exact);
        let k_ref = quantize_k(&k_exact, smooth.then_some(&mean_ref[..]));
        if let Some(mean) = mean {
            assert_eq!(bits(&mean), bits(&mean_ref), "K mean, {what}");
        }
        assert_eq!(k_out, k_ref.data, "K INT8, smooth {smooth}, {what}");
        if smooth && s.seq <= K_HEAD_MAX_KV_LEN && k_head_supported(d) {
            let (mean, out, scale) = device_k_head(s, &k_bits);
            assert_eq!(bits(&mean), bits(&mean_ref), "k_head mean, {what}");
            assert_eq!(out, k_ref.data, "k_head INT8, {what}");
            assert_eq!(bits(&scale), bits(&k_ref.scale), "k_head scales, {what}");
        }
        assert_eq!(
            bits(&k_scale),
            bits(&k_ref.scale),
            "K scales, smooth {smooth}, {what}"
        );
    }
}

#[test]
fn q_and_k_preparation_equal_the_reference_bit_for_bit() {
    let mut rng = common::fresh_rng("quant prep");
    let fold_limit = MEAN_FOLD_MAX_SEGMENTS * MEAN_SEGMENT_ROWS;
    // (batch, heads, seq, head_dim): one token; past a K block; the mean folded in at its limit;
    // a K-mean job past it.
    for (batch, heads, seq, head_dim) in [
        (1, 1, 1, 64),
        (2, 2, 129, 96),
        (1, 1, fold_limit, 64),
        (1, 1, fold_limit + 1, 128),
        (
            2,
            2,
            3 * MEAN_SEGMENT_ROWS * MEAN_FOLD_MAX_SEGMENTS / 2 + 77,
            128,
        ),
    ] {
        for (bf16, nhd) in [(false, true), (true, false)] {
            let s = Shape::new([batch, heads, seq, head_dim], bf16, nhd);
            check(&mut rng, &s);
        }
    }
}

/// What the V jobs write.
struct V8Out {
    mean: Vec<f32>,
    scale: Vec<f32>,
    out: Vec<i8>,
}

/// Runs the three V jobs as the preparation launches them; `ahead`: the statistics as
/// `sage_prepare_stats8` runs them (loads ahead), else as `sage_prepare` does.
fn device_v8(s: &Shape, out_head_dim: usize, v_bits: &[u16], fold: bool, ahead: bool) -> V8Out {
    let (b, h, n, d, od) = (s.batch, s.heads, s.seq, s.head_dim, out_head_dim);
    let segments = n.div_ceil(MEAN_SEGMENT_ROWS);
    let padded = padded_len(n, V8_TILE);
    let mut partials = vec![f32::NAN; b * h * segments * 3 * d];
    let mut mean = vec![f32::NAN; b * h * od];
    let mut scale = vec![f32::NAN; b * h * 2 * od];
    let mut out = vec![0x55i8; b * h * od * padded];
    let p = V8Params {
        v: v_bits.as_ptr() as u64,
        partials: partials.as_mut_ptr() as u64,
        mean: mean.as_mut_ptr() as u64,
        scale: scale.as_mut_ptr() as u64,
        out: out.as_mut_ptr() as u64,
        v_stride: s.strides(),
        seq: n as u32,
        heads: h as u32,
        head_dim: d as u32,
        in_bf16: u32::from(s.bf16),
        out_head_dim: od as u32,
        _pad: 0,
    };
    let threads = prep_threads(d);
    // SAFETY (every job below): the buffers above have the sizes V8Params documents, they outlive
    // the runs (each joins its threads), and the geometry is the one the host launches.
    for bi in 0..b as u32 {
        for hi in 0..h as u32 {
            for seg in 0..segments as u32 {
                ptx::run_cta(cta(threads, 0), |_| unsafe {
                    if ahead {
                        v8::stats::<true>(&p, seg, hi, bi)
                    } else {
                        v8::stats::<false>(&p, seg, hi, bi)
                    }
                });
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
    V8Out { mean, scale, out }
}

fn check_v8(rng: &mut StdRng, s: &Shape, out_head_dim: usize) {
    let (b, h, n, d) = (s.batch, s.heads, s.seq, s.head_dim);
    let offsets: Vec<f32> = (0..d).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let mut values = HostTensor::from_fn([b, h, n, d], false, |_, _, _, c| {
        let z: f32 = StandardNormal.sample(rng);
        z + offsets[c]
    });
    if s.bf16 && d > 9 {
        common::subnormal_v_channels(&mut values);
    }
    let (v_bits, exact) = encode(s, &values);
    let want = quantize_v8_as(&exact, out_head_dim, VFormat::Int8);
    let routes: &[bool] = if n.div_ceil(MEAN_SEGMENT_ROWS) <= V8_FOLD_MAX_SEGMENTS {
        &[false, true]
    } else {
        &[false]
    };
    for (&fold, ahead) in routes.iter().flat_map(|f| [(f, false), (f, true)]) {
        let what = format!("{s:?} out {out_head_dim} fold {fold} ahead {ahead}");
        let got = device_v8(s, out_head_dim, &v_bits, fold, ahead);
        assert_eq!(bits(&got.mean), bits(&want.mean), "mean, {what}");
        assert_eq!(
            bits(&got.scale),
            bits(&want.scale),
            "scale and inverse, {what}"
        );
        let wrong = got
            .out
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(wrong, 0, "{wrong} Vᵀ bytes differ, {what}");
    }
}

#[test]
fn v8_preparation_equals_the_reference_bit_for_bit() {
    let mut rng = common::fresh_rng("v8 prep");
    // (batch, heads, seq, head_dim, out_head_dim): one key; inside a 16-key group; past a tile;
    // the fold limit (4 segments, every one whole) and one past it; d = 96 stored 128 wide.
    for (batch, heads, seq, head_dim, out_head_dim) in [
        (1, 1, 1, 64, 64),
        (2, 1, 17, 64, 64),
        (1, 2, 300, 96, 128),
        (1, 1, 1024, 64, 64),
        (1, 1, 1025, 128, 128),
    ] {
        for (bf16, nhd) in [(false, false), (true, true)] {
            let s = Shape::new([batch, heads, seq, head_dim], bf16, nhd);
            check_v8(&mut rng, &s, out_head_dim);
        }
    }
}

#[test]
fn v_conversion_equals_the_reference_bit_for_bit() {
    let mut rng = common::fresh_rng("convert v");
    for (batch, heads, seq, head_dim, out_head_dim) in [(1, 1, 1, 64, 64), (2, 3, 77, 80, 96)] {
        for (bf16, nhd) in [(true, true), (false, false)] {
            let s = Shape::new([batch, heads, seq, head_dim], bf16, nhd);
            // Magnitudes up to 1e5: past f16's range in bf16.
            let values = HostTensor::from_fn([batch, heads, seq, head_dim], false, |_, _, _, _| {
                let z: f32 = StandardNormal.sample(&mut rng);
                z * 10f32.powi(rng.gen_range(-6..=5))
            });
            let (x, exact) = encode(&s, &values);
            let chunks = batch * heads * seq * out_head_dim / 8;
            let mut out = vec![0x5555u16; chunks * 8];
            let p = ConvertParams {
                x: x.as_ptr() as u64,
                out: out.as_mut_ptr() as u64,
                x_stride: s.strides(),
                seq: seq as u32,
                heads: heads as u32,
                head_dim: head_dim as u32,
                batch: batch as u32,
                out_head_dim: out_head_dim as u32,
                in_bf16: u32::from(bf16),
            };
            let threads = 128;
            for c in 0..chunks.div_ceil(threads * CONVERT_CHUNKS_PER_THREAD) as u32 {
                // SAFETY: `out` holds the contiguous f16 output, `x` the input; the CTA count
                // covers every chunk, as the host sizes it.
                ptx::run_cta(cta(threads, 0), |_| unsafe { quant::convert_v(&p, c) });
            }
            for (bi, hi, si, ch) in (0..batch).flat_map(|b| {
                (0..heads).flat_map(move |h| {
                    (0..seq).flat_map(move |s| (0..out_head_dim).map(move |c| (b, h, s, c)))
                })
            }) {
                let want = if ch < head_dim {
                    f16::from_f32(exact.get(bi, hi, si, ch)).to_bits()
                } else {
                    0
                };
                let got = out[((bi * heads + hi) * seq + si) * out_head_dim + ch];
                assert_eq!(
                    got, want,
                    "{s:?} out {out_head_dim}: ({bi}, {hi}, {si}, {ch})"
                );
            }
        }
    }
}
