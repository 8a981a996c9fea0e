//! V for the 8-bit P·V path: smoothed by its per-channel mean, quantized per channel to INT8,
//! transposed so that keys are contiguous (the K-major B operand of the u8·s8 wgmma) and permuted
//! within 16-key groups to match the P fragments (`config::v8_key_slot`). Three launches:
//! statistics per 256-row segment, the per-channel mean and scale, then the quantized Vᵀ.
//! Bit-exact with the CPU emulation (`host` reference, docs/design.md "8-bit V"): f32 arithmetic
//! in a fixed order, `max.NaN`/`min.NaN`, `cvt.rni.sat`.

use crate::config::{
    MEAN_SEGMENT_ROWS, MEAN_SEQ_LANES, V8_QUANT_THREADS, V8_TILE, padded_len, v8_key_slot,
};
use crate::params::V8Params;
use crate::ptx;
use crate::quant::load8;
use crate::unroll::unroll;

/// `max.NaN` and its mirror: NaN anywhere makes the result NaN.
#[inline(always)]
fn min_nan(a: f32, b: f32) -> f32 {
    -ptx::max_nan(-a, -b)
}

/// Step 1: sum, max and min of each channel over one segment of `MEAN_SEGMENT_ROWS` rows. Grid
/// (segments, heads, batch); `head_dim/8 * 16` threads: thread = (16-byte channel chunk, sequence
/// lane l), and lane l takes rows `l, l+16, …` of the segment in order (the K mean's order, so the
/// sum is the same tree: sequential per lane, then lanes combined at strides 8, 4, 2, 1).
///
/// # Safety
/// Launched by the host with validated parameters and that geometry.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_v8_stats(p: V8Params) {
    let (segment, head, batch) = ptx::block_idx();
    let tid = ptx::thread_idx_x();
    let lanes = MEAN_SEQ_LANES as u32;
    let (chunk, lane) = (tid / lanes, tid % lanes);
    let row0 = segment * MEAN_SEGMENT_ROWS as u32;
    let base = p.v as i64
        + 2 * (batch as i64 * p.v_stride[0] + head as i64 * p.v_stride[1] + 8 * chunk as i64);
    let mut sum = [0.0f32; 8];
    let mut max = [f32::NEG_INFINITY; 8];
    let mut min = [f32::INFINITY; 8];
    unroll::<{ MEAN_SEGMENT_ROWS / MEAN_SEQ_LANES }>(
        #[inline(always)]
        |i| {
            let row = row0 + lane + lanes * i as u32;
            if row < p.seq {
                // SAFETY: row < seq and the chunk lies inside head_dim.
                let x = unsafe {
                    load8((base + 2 * row as i64 * p.v_stride[2]) as u64, p.in_bf16 != 0)
                };
                unroll::<8>(
                    #[inline(always)]
                    |e| {
                        sum[e] += x[e];
                        max[e] = ptx::max_nan(max[e], x[e]);
                        min[e] = min_nan(min[e], x[e]);
                    },
                );
            }
        },
    );
    // The 16 lanes of a chunk are 16 consecutive threads of one warp: `l ^ s == l + s` for the
    // lanes l < s that keep the result, so this is the K mean's tree.
    unroll::<4>(
        #[inline(always)]
        |k| {
            let s = 8 >> k;
            unroll::<8>(
                #[inline(always)]
                |e| {
                    sum[e] += ptx::shfl_xor_f32(sum[e], s);
                    max[e] = ptx::max_nan(max[e], ptx::shfl_xor_f32(max[e], s));
                    min[e] = min_nan(min[e], ptx::shfl_xor_f32(min[e], s));
                },
            );
        },
    );
    if lane == 0 {
        let segments = p.seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
        let hd = p.head_dim as u64;
        let bh = (batch * p.heads + head) as u64;
        let out = p.partials + 4 * ((bh * segments + segment as u64) * 3 * hd + 8 * chunk as u64);
        unroll::<8>(
            #[inline(always)]
            |e| {
                let e8 = 4 * e as u64;
                // SAFETY: inside the [batch][heads][segments][3][head_dim] partials.
                unsafe {
                    ptx::st_global_f32(out + e8, sum[e]);
                    ptx::st_global_f32(out + 4 * hd + e8, max[e]);
                    ptx::st_global_f32(out + 8 * hd + e8, min[e]);
                }
            },
        );
    }
}

/// Step 2: per channel, `mean = (Σ segment sums, in order) / seq`, `amax = max(max - mean,
/// mean - min)` (the largest |v - mean|), `scale = amax / 127`, `inv = 127 / amax` (0 when amax is
/// 0). Channels in `head_dim..out_head_dim` get 0 for all three. Grid (heads, batch);
/// `out_head_dim` threads.
///
/// # Safety
/// Launched by the host with validated parameters and that geometry, after step 1.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_v8_finalize(p: V8Params) {
    let (head, batch, _) = ptx::block_idx();
    let c = ptx::thread_idx_x() as u64;
    let bh = (batch * p.heads + head) as u64;
    let (hd, out_hd) = (p.head_dim as u64, p.out_head_dim as u64);
    let (mut mean, mut scale, mut inv) = (0.0f32, 0.0f32, 0.0f32);
    if c < hd {
        let segments = p.seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
        let mut total = 0.0f32;
        let mut max = f32::NEG_INFINITY;
        let mut min = f32::INFINITY;
        let mut seg = 0;
        while seg < segments {
            let at = p.partials + 4 * ((bh * segments + seg) * 3 * hd + c);
            // SAFETY: inside the partials written by step 1.
            unsafe {
                total += ptx::ld_global_nc_f32(at);
                max = ptx::max_nan(max, ptx::ld_global_nc_f32(at + 4 * hd));
                min = min_nan(min, ptx::ld_global_nc_f32(at + 8 * hd));
            }
            seg += 1;
        }
        mean = total / p.seq as f32;
        let amax = ptx::max_nan(max - mean, mean - min);
        scale = amax / 127.0;
        inv = if amax == 0.0 { 0.0 } else { 127.0 / amax };
    }
    // SAFETY: inside the [batch][heads][out_head_dim] mean and [batch][heads][2][out_head_dim] scales.
    unsafe {
        ptx::st_global_f32(p.mean + 4 * (bh * out_hd + c), mean);
        ptx::st_global_f32(p.scale + 4 * (bh * 2 * out_hd + c), scale);
        ptx::st_global_f32(p.scale + 4 * (bh * 2 * out_hd + out_hd + c), inv);
    }
}

/// Step 3: one 64-key tile of Vᵀ. `q = clamp(round_ties_even((v - mean) · inv), -127, 127)` per
/// element (0 past the sequence or past `head_dim`), written at row `channel`, column
/// `v8_key_slot(key)`. Grid (padded_seq / 64, heads, batch); `V8_QUANT_THREADS` threads. Thread
/// → (channel, 16-key group) pairs, channels fastest: a warp reads 32 consecutive channels of a
/// key (64 bytes) per load and writes each group's 16 bytes with one store, in slot order.
///
/// # Safety
/// Launched by the host with validated parameters and that geometry, after step 2.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_v8_quantize(p: V8Params) {
    let (tile, head, batch) = ptx::block_idx();
    let bh = (batch * p.heads + head) as u64;
    let out_hd = p.out_head_dim;
    let key0 = tile * V8_TILE as u32;
    let base = p.v as i64 + 2 * (batch as i64 * p.v_stride[0] + head as i64 * p.v_stride[1]);
    let padded = padded_len(p.seq as usize, V8_TILE) as u64;
    let groups = (V8_TILE / 16) as u32;
    let mut i = ptx::thread_idx_x();
    while i < out_hd * groups {
        let (c, g) = (i % out_hd, i / out_hd);
        let mut q = [0u32; 16];
        if c < p.head_dim {
            // SAFETY: c < head_dim <= out_head_dim: inside this head's mean and inverse scales.
            let (m, k) = unsafe {
                (
                    ptx::ld_global_nc_f32(p.mean + 4 * (bh * out_hd as u64 + c as u64)),
                    ptx::ld_global_nc_f32(p.scale + 4 * (bh * 2 * out_hd as u64 + (out_hd + c) as u64)),
                )
            };
            unroll::<16>(
                #[inline(always)]
                |r| {
                    let key = key0 + 16 * g + r as u32;
                    if key < p.seq {
                        // SAFETY: key < seq and c < head_dim: inside V.
                        let x = unsafe {
                            ptx::ld_global_nc_u16(
                                (base + 2 * (key as i64 * p.v_stride[2] + c as i64)) as u64,
                            )
                        };
                        let x = if p.in_bf16 != 0 {
                            f32::from_bits(u32::from(x) << 16)
                        } else {
                            ptx::f16_to_f32(x)
                        };
                        q[v8_key_slot(r)] = (ptx::cvt_rni_sat_s8((x - m) * k).max(-127) as u32) & 0xff;
                    }
                },
            );
        }
        let mut word = [0u32; 4];
        unroll::<4>(
            #[inline(always)]
            |w| word[w] = q[4 * w] | q[4 * w + 1] << 8 | q[4 * w + 2] << 16 | q[4 * w + 3] << 24,
        );
        let at = p.out + (bh * out_hd as u64 + c as u64) * padded + (key0 + 16 * g) as u64;
        // SAFETY: c < out_head_dim and key0 + 16g + 16 <= padded: inside Vᵀ.
        unsafe { ptx::st_global_v4(at, word) };
        i += V8_QUANT_THREADS as u32;
    }
}
