//! Random inputs: N(0,1) samples in f16 or bf16, from xoshiro256++ streams seeded per chunk (so
//! the data depends on the seed only, not on the thread count), generated on the host in parallel
//! and uploaded once into a device pool.

use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use sageattention::error::CudaResultExt;
use sageattention::{DType, Error as SageError, Layout, Runtime};

use super::stats::Shape;

/// Elements per independently seeded chunk of random data.
pub const RNG_CHUNK: usize = 1 << 16;

/// Fills `out` with the 16-bit patterns of N(0,1) samples in `dtype` (f16 or bf16), element `i`
/// being sample `first + i` of the stream of `seed` (chunked by [`RNG_CHUNK`], in parallel).
pub fn fill_normal_bits(out: &mut [u16], dtype: DType, seed: u64, first: usize) {
    assert!(first.is_multiple_of(RNG_CHUNK), "chunk-aligned start");
    out.par_chunks_mut(RNG_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let id = (first / RNG_CHUNK + i) as u64;
            let mut rng =
                Xoshiro256PlusPlus::seed_from_u64(seed ^ id.wrapping_mul(0xD134_2543_DE82_EF95));
            for x in chunk {
                *x = f32_to_bits(StandardNormal.sample(&mut rng), dtype);
            }
        });
}

/// `v` rounded to `dtype` (f16 or bf16), as its 16-bit pattern.
fn f32_to_bits(v: f32, dtype: DType) -> u16 {
    match dtype {
        DType::BF16 => bf16::from_f32(v).to_bits(),
        _ => f16::from_f32(v).to_bits(),
    }
}

/// The positional part of element (`pos`, `channel`) of Q and of K with `--inputs rotary`:
/// channel pair m holds `(cos(ω_m·pos), sin(ω_m·pos))` with RoPE's frequencies
/// `ω_m = 10000^(−2m/head_dim)`, so `q_i·k_j` gains `Σ_m cos(ω_m (i − j))`: `head_dim / 2` at
/// `i = j`, falling off with the distance (in log2 units of the score, ≈ 0.72·√head_dim at the
/// diagonal: 8.2 at d = 128), as the scores of rotary-embedded heads do on average.
pub fn rotary_component(pos: usize, channel: usize, head_dim: usize) -> f32 {
    let m = (channel / 2) as f64;
    let omega = 10000f64.powf(-2.0 * m / head_dim as f64);
    let angle = omega * pos as f64;
    (if channel.is_multiple_of(2) {
        angle.cos()
    } else {
        angle.sin()
    }) as f32
}

/// Q's slope channel with `--inputs recency`: channel 0 of every query holds this (plus its N(0,1)
/// sample), channel 0 of key `j` holds [`RECENCY_K_STEP`]`·j`, so each query's scores rise by
/// their product per key: `8 · 0.098 · log2(e) / √128 ≈ 0.1` log2 units per key at d = 128
/// (0.14 at d = 64), about ±12% from query to query.
pub const RECENCY_Q: f32 = 8.0;
/// K's slope channel per position with `--inputs recency` (see [`RECENCY_Q`]).
pub const RECENCY_K_STEP: f32 = 0.098;

/// Which positional part the Q and K of a positional input set carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positional {
    /// [`rotary_component`] in Q and K: scores that decay with the distance.
    Rotary,
    /// A linear slope in channel 0 ([`RECENCY_Q`], [`RECENCY_K_STEP`]): scores that rise
    /// steadily towards later keys, the shape that makes lagging-max tiles retry most (the
    /// sixteenth session's retry model: every causal tile of the sm_90a f16 kernels).
    Recency,
}

impl Positional {
    /// The positional part of element (`pos`, `channel`) of Q (`key` false) or K.
    pub fn component(self, key: bool, pos: usize, channel: usize, head_dim: usize) -> f32 {
        match (self, channel, key) {
            (Positional::Rotary, ..) => rotary_component(pos, channel, head_dim),
            (Positional::Recency, 0, false) => RECENCY_Q,
            (Positional::Recency, 0, true) => RECENCY_K_STEP * pos as f32,
            (Positional::Recency, ..) => 0.0,
        }
    }
}

/// The 16-bit patterns of a `[batch, heads, seq, head_dim]` tensor in `layout` (contiguous):
/// N(0,1) samples of the stream of `seed` plus the `positional` part of Q (`key` false) or K at
/// each element's sequence position and channel (in parallel, deterministic for a seed).
pub fn positional_bits(
    shape: [usize; 4],
    layout: Layout,
    dtype: DType,
    seed: u64,
    positional: Positional,
    key: bool,
) -> Vec<u16> {
    let [_, heads, seq, d] = shape;
    per_row_bits(shape, seed, |rng, row, chunk| {
        // Contiguous rows: HND is (batch, head, pos), NHD (batch, pos, head).
        let pos = match layout {
            Layout::Hnd => row % seq,
            Layout::Nhd => (row / heads) % seq,
        };
        for (c, x) in chunk.iter_mut().enumerate() {
            let z: f32 = StandardNormal.sample(rng);
            *x = f32_to_bits(z + positional.component(key, pos, c, d), dtype);
        }
    })
}

/// The 16-bit patterns of a contiguous `[.., head_dim]` tensor, filled row by row in parallel by
/// `fill(rng, row, row's elements)`, each row with its own stream of `seed` (deterministic
/// whatever the thread count).
fn per_row_bits(
    shape: [usize; 4],
    seed: u64,
    fill: impl Fn(&mut Xoshiro256PlusPlus, usize, &mut [u16]) + Sync,
) -> Vec<u16> {
    let mut out = vec![0u16; shape.iter().product()];
    out.par_chunks_mut(shape[3])
        .enumerate()
        .for_each(|(row, chunk)| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(
                seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            fill(&mut rng, row, chunk);
        });
    out
}

/// The 16-bit patterns of `n` N(0,1) samples of the stream of `seed` ([`fill_normal_bits`]).
fn normal_bits(n: usize, dtype: DType, seed: u64) -> Vec<u16> {
    let mut bits = vec![0u16; n];
    fill_normal_bits(&mut bits, dtype, seed, 0);
    bits
}

/// Magnitudes of `--inputs large-v`'s V: past what one pass of the portable f16 accumulator
/// holds (1023, or 8191 for nearly equal scores), below f16's largest value also after bf16's
/// rounding.
pub const LARGE_V: (f32, f32) = (30000.0, 60000.0);

/// The 16-bit patterns of a V of `--inputs large-v`: channel `c` positive where `c` is even,
/// magnitudes uniform in [`LARGE_V`] from the stream of `seed` (in parallel, deterministic).
pub fn large_v_bits(shape: [usize; 4], dtype: DType, seed: u64) -> Vec<u16> {
    per_row_bits(shape, seed, |rng, _, chunk| {
        for (c, x) in chunk.iter_mut().enumerate() {
            let magnitude = rng.gen_range(LARGE_V.0..=LARGE_V.1);
            *x = f32_to_bits(if c % 2 == 0 { magnitude } else { -magnitude }, dtype);
        }
    })
}

/// Overwrites the first `sets` input sets of `shape` in `pool` (Q, K, V one after the other, as
/// the sweep's views read them): Q and K of [`positional_bits`] (N(0,1) samples without a
/// `positional` part), V of N(0,1) samples or, with `large_v`, of [`large_v_bits`]; each tensor
/// from its own seed.
#[allow(clippy::too_many_arguments)]
pub fn fill_input_sets(
    rt: &Runtime,
    pool: &mut CudaSlice<u16>,
    shape: &Shape,
    sets: usize,
    layout: Layout,
    dtype: DType,
    seed: u64,
    positional: Option<Positional>,
    large_v: bool,
) -> Result<(), SageError> {
    let mut at = 0;
    for set in 0..sets {
        for (t, tensor_shape) in [shape.q_shape(), shape.kv_shape(), shape.kv_shape()]
            .into_iter()
            .enumerate()
        {
            let tensor_seed = seed ^ ((3 * set + t + 1) as u64).wrapping_mul(0xA24B_AED4_963E_E407);
            let host = match (t, positional) {
                (0 | 1, Some(positional)) => {
                    positional_bits(tensor_shape, layout, dtype, tensor_seed, positional, t == 1)
                }
                (2, _) if large_v => large_v_bits(tensor_shape, dtype, tensor_seed),
                _ => normal_bits(tensor_shape.iter().product(), dtype, tensor_seed),
            };
            let mut dst = pool.slice_mut(at..at + host.len());
            rt.stream()
                .memcpy_htod(&host, &mut dst)
                .with_op(|| format!("uploading {} positional input elements", host.len()))?;
            at += host.len();
        }
    }
    rt.synchronize()
}

/// N(0,1) f32 samples rounded to `dtype` (for the self-check, whose reference needs the values).
pub fn normal_values(n: usize, dtype: DType, seed: u64) -> Vec<f32> {
    normal_bits(n, dtype, seed)
        .iter()
        .map(|&b| bits_to_f32(b, dtype))
        .collect()
}

pub fn bits_to_f32(b: u16, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_bits(b).to_f32(),
        _ => f16::from_bits(b).to_f32(),
    }
}

/// A device pool of `elems` N(0,1) 16-bit values, generated on the host in chunks (in parallel)
/// and each chunk uploaded once.
pub fn make_pool(
    rt: &Runtime,
    elems: usize,
    dtype: DType,
    seed: u64,
) -> Result<CudaSlice<u16>, SageError> {
    const UPLOAD_CHUNK: usize = 1 << 26; // 64 Mi elements, 128 MiB of host memory
    let mut pool = rt.alloc_zeros::<u16>(elems)?;
    let mut host = vec![0u16; UPLOAD_CHUNK.min(elems)];
    let mut start = 0;
    while start < elems {
        let len = UPLOAD_CHUNK.min(elems - start);
        let buf = &mut host[..len];
        fill_normal_bits(buf, dtype, seed, start);
        let mut dst = pool.slice_mut(start..start + len);
        rt.stream()
            .memcpy_htod(&*buf, &mut dst)
            .with_op(|| format!("uploading {len} random elements"))?;
        start += len;
    }
    rt.synchronize()?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_normal_and_deterministic() {
        let a = normal_values(1 << 18, DType::F16, 7);
        let b = normal_values(1 << 18, DType::F16, 7);
        assert_eq!(a, b);
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        assert!(a.iter().all(|x| x.is_finite()) && a.iter().filter(|&&x| x == 0.0).count() < 100);
        // chunked generation equals one pass
        let mut whole = vec![0u16; 3 * RNG_CHUNK];
        fill_normal_bits(&mut whole, DType::BF16, 9, 0);
        let mut tail = vec![0u16; RNG_CHUNK];
        fill_normal_bits(&mut tail, DType::BF16, 9, 2 * RNG_CHUNK);
        assert_eq!(&whole[2 * RNG_CHUNK..], &tail[..]);
        assert_ne!(
            normal_values(16, DType::F16, 1),
            normal_values(16, DType::F16, 2)
        );
    }

    /// Rotary inputs: each query's scores peak at its own position and fall off with the
    /// distance (averaged over queries, so the noise cancels), in both layouts.
    #[test]
    fn rotary_scores_peak_at_the_diagonal() {
        let (seq, d) = (512, 128);
        for layout in [Layout::Hnd, Layout::Nhd] {
            let shape = [1, 2, seq, d];
            let q = positional_bits(shape, layout, DType::F16, 3, Positional::Rotary, false);
            let k = positional_bits(shape, layout, DType::F16, 4, Positional::Rotary, true);
            let at = |bits: &[u16], h: usize, pos: usize, c: usize| {
                let i = match layout {
                    Layout::Hnd => (h * seq + pos) * d + c,
                    Layout::Nhd => (pos * 2 + h) * d + c,
                };
                bits_to_f32(bits[i], DType::F16)
            };
            // Mean score (log2 units) at distance `dist`, over queries 256..384 of head 1.
            let mean_score = |dist: usize| {
                let total: f32 = (256..384)
                    .map(|i| {
                        let dot: f32 = (0..d)
                            .map(|c| at(&q, 1, i, c) * at(&k, 1, i - dist, c))
                            .sum();
                        dot / (d as f32).sqrt() * std::f32::consts::LOG2_E
                    })
                    .sum();
                total / 128.0
            };
            let (s0, s8, s64, s250) = (
                mean_score(0),
                mean_score(8),
                mean_score(64),
                mean_score(250),
            );
            assert!((s0 - 8.2).abs() < 1.0, "{layout:?}: diagonal {s0}");
            assert!(
                s0 > s8 && s8 > s64 && s64 > s250 - 0.5,
                "{layout:?}: {s0} {s8} {s64} {s250}"
            );
            assert!(s250 < 3.0, "{layout:?}: far {s250}");
        }
        let bf = positional_bits(
            [1, 1, 4, 8],
            Layout::Hnd,
            DType::BF16,
            5,
            Positional::Rotary,
            false,
        );
        assert!(bf.iter().all(|&b| bits_to_f32(b, DType::BF16).is_finite()));
    }

    /// Large-V inputs: one sign per channel, magnitudes in [`LARGE_V`] after rounding, which
    /// must stay below f16's 65504 in both dtypes (bf16 V becomes f16 for the f16 P·V).
    #[test]
    fn large_v_stays_inside_f16_with_one_sign_per_channel() {
        for dtype in [DType::F16, DType::BF16] {
            let (rows, d) = (300, 64);
            let v = large_v_bits([1, 3, rows / 3, d], dtype, 11);
            let mut distinct = std::collections::HashSet::new();
            for (i, &b) in v.iter().enumerate() {
                let x = bits_to_f32(b, dtype);
                let c = i % d;
                assert_eq!(x > 0.0, c % 2 == 0, "{dtype:?} element {i}: {x}");
                let m = x.abs();
                assert!((29900.0..=60200.0).contains(&m), "{dtype:?}: {x}");
                assert!(f16::from_f32(x).is_finite(), "{dtype:?}: {x}");
                distinct.insert(b);
            }
            assert!(distinct.len() > 100, "{dtype:?}: random magnitudes");
        }
    }

    /// Recency inputs: every query's scores rise by about 0.1 log2 units per key (d = 128), in
    /// both layouts, and stay finite in f16 at 32K positions.
    #[test]
    fn recency_scores_rise_along_the_keys() {
        let (seq, d) = (1024, 128);
        for layout in [Layout::Hnd, Layout::Nhd] {
            let shape = [1, 2, seq, d];
            let q = positional_bits(shape, layout, DType::F16, 3, Positional::Recency, false);
            let k = positional_bits(shape, layout, DType::F16, 4, Positional::Recency, true);
            let at = |bits: &[u16], pos: usize, c: usize| {
                let i = match layout {
                    Layout::Hnd => (seq + pos) * d + c,
                    Layout::Nhd => (pos * 2 + 1) * d + c,
                };
                bits_to_f32(bits[i], DType::F16)
            };
            let score = |i: usize, j: usize| {
                let dot: f32 = (0..d).map(|c| at(&q, i, c) * at(&k, j, c)).sum();
                dot / (d as f32).sqrt() * std::f32::consts::LOG2_E
            };
            // Per-key slope from key 100 to key 900, averaged over 64 queries of head 1.
            let slope = (960..1024)
                .map(|i| (score(i, 900) - score(i, 100)) / 800.0)
                .sum::<f32>()
                / 64.0;
            assert!((slope - 0.1).abs() < 0.01, "{layout:?}: slope {slope}");
        }
        let far = positional_bits(
            [1, 1, 32768, 64],
            Layout::Hnd,
            DType::F16,
            5,
            Positional::Recency,
            true,
        );
        assert!(far.iter().all(|&b| bits_to_f32(b, DType::F16).is_finite()));
    }

    #[test]
    fn rng_stream_is_the_one_of_earlier_runs() {
        // xoshiro256++ seeded through SplitMix64: the inputs of runs before rand_xoshiro replaced
        // the bench's own generator (first samples of seed 9, chunk 0, as f16 bits).
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let first: Vec<u16> = (0..4)
            .map(|_| {
                let x: f32 = StandardNormal.sample(&mut rng);
                f16::from_f32(x).to_bits()
            })
            .collect();
        assert_eq!(first, [12797, 46316, 46314, 14902]);
    }
}
