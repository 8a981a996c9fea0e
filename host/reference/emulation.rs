//! [`attention_quantized_emulation`](super::attention_quantized_emulation): the quantized algorithm the GPU runs, on the CPU.

use half::f16;

use super::host_tensor::HostTensor;
use super::quant_ref::{self, K_BLOCK};
use super::rows::{Dims, RefOptions, RefOutput};
use super::v8::{quantize_v8, quantize_v8_as, QuantizedV8, VFormat};
use crate::device_config::{p8_tile, F16_ACC_OVERFLOW_SHIFT, P8_MAX, P_FP8_MAX};
use float8::F8E4M3;

/// CPU emulation of the quantized algorithm the GPU runs; an oracle for the **quantization** error.
///
/// Steps:
/// 1. Q and K are quantized bit-exactly as the GPU does ([`quant_ref::quantize_q`] with the
///    effective `sm_scale`, [`quant_ref::quantize_k`] with [`quant_ref::k_mean`] when `smooth_k`).
/// 2. Scores in log2 units, in `f32` as the GPU computes them:
///    `s = (q_i8 · k_i8) as f32 * (q_scale * k_scale)`.
/// 3. Base-2 softmax with the **final** row max `m` (not the online running max):
///    `p = 2^(s - m)` computed in `f64`, held as `f32` and rounded to f16 as the GPU rounds P before
///    the P·V product. The denominator sums the unrounded `p` (as kernels that accumulate the row sum
///    on CUDA cores from the f32 probabilities do).
/// 4. V is rounded to f16 (`f16::from_f32(v)`), and `o = Σ p16 · v16 / Σ p`. With
///    `pv_f16_accum == false` the sum is in `f64`. With `pv_f16_accum == true` it models an f16
///    accumulator: for each key block of [`K_BLOCK`] keys, chunks of 16 keys (one MMA k-step) are
///    summed exactly and added to an f16 block accumulator (rounding to f16 after each chunk), and the
///    block accumulator is then added to an `f64` total. A row whose output is then not finite
///    (V beyond about ±1023) is summed again with every `p` lowered by 2^-7 before its rounding
///    to f16, as the kernel's second pass does for its CTA (finite for every f16 V).
/// 5. `lse = (m + log2 Σ p) · ln 2 + c` (natural log), where with `smooth_k` the correction
///    `c = sm_scale · (q_i · mean)` (in `f64`) restores the scores of the original K, so the LSE means
///    the same as [`attention_f64`](super::attention_f64)'s; `c = 0` without smoothing.
///
/// Because it uses the final row max and `f64` exponentials, this is not bit-exact against the GPU's
/// online softmax (which rescales with running maxima and uses `ex2.approx`); it isolates the error
/// that quantization and f16 rounding cause, so GPU results should sit within a tight bound of it.
/// Non-finite inputs follow the design contract: a NaN/Inf in a Q row makes that row NaN (Q's
/// scales are per token), a NaN/Inf in a K block makes every row that sees a key of that block NaN (with
/// `smooth_k` the NaN/Inf also reaches every K block of that head through the mean, so every row of
/// the head that sees any key is NaN).
///
/// # Panics
/// On inconsistent shapes, as [`attention_f64`](super::attention_f64).
pub fn attention_quantized_emulation(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
    smooth_k: bool,
    pv_f16_accum: bool,
) -> RefOutput {
    let values = v.to_contiguous_f64(|x| f64::from(f16::from_f32(x).to_f32()));
    emulate(
        q,
        k,
        v,
        opts,
        smooth_k,
        PvEmulation::F16 {
            values,
            pv_f16_accum,
        },
    )
}

/// [`attention_quantized_emulation`] for the 8-bit P·V ([`PvPrecision::Int8`](crate::PvPrecision)):
/// steps 1–3 and 5 as there; step 4 becomes
/// * V quantized bit-exactly as the GPU does ([`quantize_v8`]: per-channel mean and scale),
/// * per key tile t of [`p8_tile`]`(d)` keys (counted from key 0: 128, or 64 above head_dim
///   128), with `m_t` the row's largest score
///   of the tile, `u_j = round(255 · 2^(s_j - m_t))` (exact integers, f64 exponentials),
/// * `o_c = Σ_t 2^(m_t - m) · (Σ_j u_j · v8_jc) · scale_c / 255 / Σ p + mean_c`.
///
/// The GPU's u_j can differ by one where `ex2.approx` and f32 put `255 · p` on the other side of
/// a rounding boundary; the tests bound that.
pub fn attention_pv8_emulation(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
    smooth_k: bool,
) -> RefOutput {
    let v8 = quantize_v8(v, v.head_dim());
    emulate(q, k, v, opts, smooth_k, PvEmulation::Int8(v8))
}

/// [`attention_pv8_emulation`] for the FP8 P·V ([`PvPrecision::Fp8`](crate::PvPrecision)): the
/// same tiles, with
/// * V quantized as the sm_89 preparation does ([`quantize_v8_as`] with [`VFormat::E4m3`]),
/// * `p_j = e4m3(448 · f32(2^(s_j - m_t)))` (`float8::F8E4M3`: round to nearest even, saturating),
/// * each tile's `Σ_j p_j · v_jc` exact (`f16_accum == false`: the f32 accumulator, whose sums of
///   e4m3 products are exact or nearly so), or (`f16_accum == true`) rounded to f16 after every
///   32-key k-step from the tile's start, the model of the `.f16` accumulator;
/// * `o_c = Σ_t 2^(m_t - m) · tile_c · scale_c / 448 / Σ p + mean_c`.
///
/// The GPU's p_j can differ by one e4m3 step where `ex2.approx` (which takes the 448 inside the
/// exponent: `2^(s_j - m_t + log2 448)`) puts the value on the other side of a rounding
/// boundary, and the hardware's f16 accumulation order within an mma is not specified; the tests
/// bound both.
pub fn attention_fp8_emulation(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
    smooth_k: bool,
    f16_accum: bool,
) -> RefOutput {
    let v8 = quantize_v8_as(v, v.head_dim(), VFormat::E4m3);
    emulate(q, k, v, opts, smooth_k, PvEmulation::Fp8 { v8, f16_accum })
}

/// Keys of one k-step of the 8-bit mma (m16n8k32): the f16 accumulator rounds after each.
const PV8_MMA_K: usize = 32;

/// Step 4 of the 8-bit P·V emulations (INT8 and FP8) for one row: per key tile of
/// [`p8_tile`]`(d)` keys with `m_t` the tile's largest score, `p_j = quantize_p(2^(s_j - m_t))`
/// (in units of `p_max`), the tile's `Σ_j p_j · v_jc` summed per 32-key k-step (rounded to f16
/// after each step when `f16_steps`: the FP8 f16 accumulator), then
/// `o_c = Σ_t 2^(m_t - m) · tile_c · scale_c / p_max / Σ p + mean_c`. The INT8 sums are integers
/// below 2^53, so exact in f64 whatever the order.
#[allow(clippy::too_many_arguments)]
fn pv8_row(
    o_row: &mut [f64],
    scores: &[f64],
    (row_max, denominator): (f64, f64),
    v8: &QuantizedV8,
    (b, kv): (usize, usize),
    p_max: f32,
    quantize_p: impl Fn(f64) -> f64,
    f16_steps: bool,
) {
    let d = o_row.len();
    let mut tile_sum = vec![0.0_f64; d];
    let mut step_sum = vec![0.0_f64; d];
    let p_tile = p8_tile(d);
    for (t, tile) in scores.chunks(p_tile).enumerate() {
        let tile_max = tile.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        tile_sum.fill(0.0);
        for (step, chunk) in tile.chunks(PV8_MMA_K).enumerate() {
            step_sum.fill(0.0);
            for (i, &s) in chunk.iter().enumerate() {
                let p = quantize_p((s - tile_max).exp2());
                let key = t * p_tile + step * PV8_MMA_K + i;
                for (c, sum) in step_sum.iter_mut().enumerate() {
                    *sum += p * v8.value_f64(b, kv, key, c);
                }
            }
            for (acc, &sum) in tile_sum.iter_mut().zip(&step_sum) {
                *acc = if f16_steps {
                    f64::from(f16::from_f64(*acc + sum).to_f32())
                } else {
                    *acc + sum
                };
            }
        }
        let factor = (tile_max - row_max).exp2();
        for (acc, &sum) in o_row.iter_mut().zip(&tile_sum) {
            *acc += factor * sum;
        }
    }
    for (c, acc) in o_row.iter_mut().enumerate() {
        let scale = f64::from(v8.scale_of(b, kv, c)) / f64::from(p_max);
        *acc = *acc * scale / denominator + f64::from(v8.mean_of(b, kv, c));
    }
}

/// The P·V step of the emulation, with the V it reads.
enum PvEmulation {
    /// V rounded to f16 (contiguous f64), optionally an f16 accumulator per key block.
    F16 {
        values: Vec<f64>,
        pv_f16_accum: bool,
    },
    /// u8 P (per key tile) and INT8 V (per channel, mean-smoothed).
    Int8(QuantizedV8),
    /// e4m3 P (per key tile) and e4m3 V (per channel, mean-smoothed), f32 or f16 accumulator.
    Fp8 { v8: QuantizedV8, f16_accum: bool },
}

fn emulate(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
    smooth_k: bool,
    pv: PvEmulation,
) -> RefOutput {
    let dims = Dims::of(q, k, v);
    let sm_scale = opts.sm_scale_for(dims.head_dim);
    let q_quant = quant_ref::quantize_q(q, sm_scale);
    let mean = smooth_k.then(|| quant_ref::k_mean(k));
    let k_quant = quant_ref::quantize_k(k, mean.as_deref());
    let d = dims.head_dim;

    dims.for_each_row(opts.causal, |task| {
        let q_row = q_quant.row(task.b, task.h, task.i);
        let q_scale = q_quant.scale_of(task.b, task.h, task.i);
        let scores: Vec<f64> = (0..task.visible)
            .map(|j| {
                let k_row = k_quant.row(task.b, task.kv_head, j);
                let k_scale = k_quant.scale_of(task.b, task.kv_head, j);
                let int_dot: i32 = q_row
                    .iter()
                    .zip(k_row)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
                f64::from(int_dot as f32 * (q_scale * k_scale))
            })
            .collect();
        let row_max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let probabilities: Vec<f64> = scores.iter().map(|&s| (s - row_max).exp2()).collect();
        let denominator: f64 = probabilities.iter().sum();

        match &pv {
            PvEmulation::F16 {
                values,
                pv_f16_accum,
            } => {
                let base = dims.kv_offset(task.b, task.kv_head, 0);
                let p_f16 = |j: usize| f64::from(f16::from_f32(probabilities[j] as f32).to_f32());
                if *pv_f16_accum {
                    let value = |j: usize| &values[base + j * d..base + (j + 1) * d];
                    accumulate_pv_f16(task.o_row, task.visible, p_f16, value);
                    // The kernel's second pass: a CTA whose output is not finite runs again with
                    // every probability lowered by 2^-F16_ACC_OVERFLOW_SHIFT, here per row.
                    if task.o_row.iter().any(|x| !x.is_finite()) {
                        task.o_row.fill(0.0);
                        let lowered = |j: usize| {
                            let p = probabilities[j] * OVERFLOW_SCALE;
                            f64::from(f16::from_f32(p as f32).to_f32())
                        };
                        accumulate_pv_f16(task.o_row, task.visible, lowered, value);
                        for acc in task.o_row.iter_mut() {
                            *acc /= OVERFLOW_SCALE;
                        }
                    }
                } else {
                    for j in 0..task.visible {
                        let p = p_f16(j);
                        let value = &values[base + j * d..base + (j + 1) * d];
                        for (acc, &x) in task.o_row.iter_mut().zip(value) {
                            *acc += p * x;
                        }
                    }
                }
                for acc in task.o_row.iter_mut() {
                    *acc /= denominator;
                }
            }
            PvEmulation::Int8(v8) => pv8_row(
                task.o_row,
                &scores[..task.visible],
                (row_max, denominator),
                v8,
                (task.b, task.kv_head),
                P8_MAX,
                |x| (f64::from(P8_MAX) * x).round_ties_even(),
                false,
            ),
            PvEmulation::Fp8 { v8, f16_accum } => pv8_row(
                task.o_row,
                &scores[..task.visible],
                (row_max, denominator),
                v8,
                (task.b, task.kv_head),
                P_FP8_MAX,
                |x| f64::from(F8E4M3::from_f32(x as f32 * P_FP8_MAX).to_f32()),
                *f16_accum,
            ),
        }
        // Smoothing subtracted `mean` from every key, which lowered every score of the row by
        // `sm_scale * q_i · mean`; add it back so the LSE refers to the original K, as the contract
        // defines it (the output itself is invariant to the shift).
        let smoothing_correction = mean.as_deref().map_or(0.0, |mean| {
            let start = (task.b * dims.kv_heads + task.kv_head) * d;
            let q_dot_mean: f64 = mean[start..start + d]
                .iter()
                .enumerate()
                .map(|(c, &m)| f64::from(q.get(task.b, task.h, task.i, c)) * f64::from(m))
                .sum();
            f64::from(sm_scale) * q_dot_mean
        });
        *task.lse = (row_max + denominator.log2()) * std::f64::consts::LN_2 + smoothing_correction;
    })
}

/// `2^-F16_ACC_OVERFLOW_SHIFT`: the factor of the f16 accumulator's second pass.
const OVERFLOW_SCALE: f64 = 1.0 / (1u32 << F16_ACC_OVERFLOW_SHIFT) as f64;

/// Keys summed exactly before each rounding of the f16 accumulator (the k extent of one MMA).
const PV_MMA_K: usize = 16;

/// Model of P·V with an f16 accumulator: per key block of [`K_BLOCK`] keys, chunks of [`PV_MMA_K`]
/// keys are summed exactly and added to an f16 accumulator (one rounding per chunk); each block's
/// f16 partial is then added to `o_row` in `f64`.
fn accumulate_pv_f16<'v>(
    o_row: &mut [f64],
    visible: usize,
    probability: impl Fn(usize) -> f64,
    value: impl Fn(usize) -> &'v [f64],
) {
    let mut block_acc = vec![f16::ZERO; o_row.len()];
    let mut chunk_sum = vec![0.0_f64; o_row.len()];
    for block_start in (0..visible).step_by(K_BLOCK) {
        let block_end = (block_start + K_BLOCK).min(visible);
        block_acc.fill(f16::ZERO);
        for chunk_start in (block_start..block_end).step_by(PV_MMA_K) {
            let chunk_end = (chunk_start + PV_MMA_K).min(block_end);
            chunk_sum.fill(0.0);
            for j in chunk_start..chunk_end {
                let p = probability(j);
                for (sum, &x) in chunk_sum.iter_mut().zip(value(j)) {
                    *sum += p * x;
                }
            }
            for (acc, &sum) in block_acc.iter_mut().zip(&chunk_sum) {
                *acc = f16::from_f32((f64::from(acc.to_f32()) + sum) as f32);
            }
        }
        for (total, acc) in o_row.iter_mut().zip(&block_acc) {
            *total += f64::from(acc.to_f32());
        }
    }
}
