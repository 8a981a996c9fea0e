//! Random inputs: N(0,1) samples in f16 or bf16, from xoshiro256++ streams seeded per chunk (so
//! the data depends on the seed only, not on the thread count), generated on the host in parallel
//! and uploaded once into a device pool.

use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use rand::SeedableRng;
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

/// The 16-bit patterns of a `[batch, heads, seq, head_dim]` tensor in `layout` (contiguous):
/// N(0,1) samples of the stream of `seed` plus [`rotary_component`] of each element's sequence
/// position and channel (in parallel, deterministic for a seed).
pub fn rotary_bits(shape: [usize; 4], layout: Layout, dtype: DType, seed: u64) -> Vec<u16> {
    let [_, heads, seq, d] = shape;
    let mut out = vec![0u16; shape.iter().product()];
    out.par_chunks_mut(d).enumerate().for_each(|(row, chunk)| {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
            seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        // Contiguous rows: HND is (batch, head, pos), NHD (batch, pos, head).
        let pos = match layout {
            Layout::Hnd => row % seq,
            Layout::Nhd => (row / heads) % seq,
        };
        for (c, x) in chunk.iter_mut().enumerate() {
            let z: f32 = StandardNormal.sample(&mut rng);
            *x = f32_to_bits(z + rotary_component(pos, c, d), dtype);
        }
    });
    out
}

/// Overwrites the first `sets` input sets of `shape` in `pool` (Q, K, V one after the other, as
/// the sweep's views read them) with Q and K of [`rotary_bits`] and V of N(0,1) samples
/// ([`fill_normal_bits`]), each tensor from its own seed.
pub fn fill_rotary_sets(
    rt: &Runtime,
    pool: &mut CudaSlice<u16>,
    shape: &Shape,
    sets: usize,
    layout: Layout,
    dtype: DType,
    seed: u64,
) -> Result<(), SageError> {
    let mut at = 0;
    for set in 0..sets {
        for (t, tensor_shape) in [shape.q_shape(), shape.kv_shape(), shape.kv_shape()]
            .into_iter()
            .enumerate()
        {
            let tensor_seed = seed ^ ((3 * set + t + 1) as u64).wrapping_mul(0xA24B_AED4_963E_E407);
            let host = if t < 2 {
                rotary_bits(tensor_shape, layout, dtype, tensor_seed)
            } else {
                let mut v = vec![0u16; tensor_shape.iter().product()];
                fill_normal_bits(&mut v, dtype, tensor_seed, 0);
                v
            };
            let mut dst = pool.slice_mut(at..at + host.len());
            rt.stream()
                .memcpy_htod(&host, &mut dst)
                .with_op(|| format!("uploading {} rotary input elements", host.len()))?;
            at += host.len();
        }
    }
    rt.synchronize()
}

/// N(0,1) f32 samples rounded to `dtype` (for the self-check, whose reference needs the values).
pub fn normal_values(n: usize, dtype: DType, seed: u64) -> Vec<f32> {
    let mut bits = vec![0u16; n];
    fill_normal_bits(&mut bits, dtype, seed, 0);
    bits.iter().map(|&b| bits_to_f32(b, dtype)).collect()
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
            let q = rotary_bits(shape, layout, DType::F16, 3);
            let k = rotary_bits(shape, layout, DType::F16, 4);
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
        let bf = rotary_bits([1, 1, 4, 8], Layout::Hnd, DType::BF16, 5);
        assert!(bf.iter().all(|&b| bits_to_f32(b, DType::BF16).is_finite()));
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
