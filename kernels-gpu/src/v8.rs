//! V for the 8-bit P·V path: smoothed by its per-channel mean, quantized per channel to INT8,
//! transposed so that keys are contiguous (the K-major B operand of the u8·s8 wgmma) and permuted
//! within 16-key groups to match the P fragments (`config::v8_key_slot`). Three jobs of the fused
//! preparation kernel (`prepare.rs`): statistics per 256-row segment (in the first launch, beside
//! the Q quantization), the per-channel mean and scale (folded into the quantization CTAs for
//! short sequences, else a job of its own launch), then the quantized Vᵀ.
//! Bit-exact with the CPU emulation (`host` reference, docs/design.md "8-bit V"): f32 arithmetic
//! in a fixed order, `max.NaN`/`min.NaN`, `cvt.rni.sat`.

use crate::config::{
    padded_len, v8_key_slot, MEAN_SEGMENT_ROWS, MEAN_SEQ_LANES, V8_CHUNKS_PER_THREAD,
    V8_STATS_AHEAD, V8_TILE, V8_TILE_ROW_PAD,
};
use crate::params::V8Params;
use crate::ptx;
use crate::quant_arith::unpack8;
use crate::unroll::unroll;

/// The largest |V − mean| after the per-channel scaling: 127 for the INT8 Vᵀ; in the sm_89 module
/// (`ada_fp8`), whose preparation writes the e4m3 Vᵀ of the FP8 P·V, `config::V_FP8_MAX`.
#[cfg(not(feature = "ada_fp8"))]
const V_MAX: f32 = 127.0;
#[cfg(feature = "ada_fp8")]
const V_MAX: f32 = crate::config::V_FP8_MAX;

/// One smoothed, scaled V value as the byte the Vᵀ stores: INT8 (`round_ties_even`, clamped to
/// ±127) in the portable module, e4m3 (`cvt.rn.satfinite`) in the sm_89 one.
#[inline(always)]
fn v_byte(x: f32) -> u32 {
    #[cfg(not(feature = "ada_fp8"))]
    {
        crate::quant_arith::s8_byte(x)
    }
    #[cfg(feature = "ada_fp8")]
    {
        ptx::cvt_e4m3(x)
    }
}

/// `max.NaN` and its mirror: NaN anywhere makes the result NaN.
#[inline(always)]
fn min_nan(a: f32, b: f32) -> f32 {
    -ptx::max_nan(-a, -b)
}

/// Sum, maximum and minimum per channel of one thread's rows of a segment for [`stats`]: rows
/// `first, first + 16, …` below the sequence, in that order, from `base` (the thread's channel
/// chunk of the head's row 0). With `FULL` (every segment but a sequence's last) the loads of
/// `V8_STATS_AHEAD` rows are issued before their arithmetic, so that they are in flight at once;
/// the arithmetic stays in row order, so the bits are those of one row at a time.
///
/// # Safety
/// `base` and `p` as in [`stats`] (`p.seq > 0`); with `FULL`, every row `first + 16i` of the
/// segment is below `p.seq`; `bf16` is `p.in_bf16 != 0`.
#[inline(always)]
unsafe fn lane_stats<const FULL: bool>(
    p: &V8Params,
    base: i64,
    first: u32,
    bf16: bool,
) -> [[f32; 8]; 3] {
    let lanes = MEAN_SEQ_LANES as u32;
    let mut sum = [0.0f32; 8];
    let mut max = [f32::NEG_INFINITY; 8];
    let mut min = [f32::INFINITY; 8];
    let mut add = |raw: &[u32; 4]| {
        let x = unpack8(raw, bf16);
        unroll::<8>(
            #[inline(always)]
            |e| {
                sum[e] += x[e];
                max[e] = ptx::max_nan(max[e], x[e]);
                min[e] = min_nan(min[e], x[e]);
            },
        );
    };
    let at = |row: u32| (base + 2 * row as i64 * p.v_stride[2]) as u64;
    if FULL {
        unroll::<{ MEAN_SEGMENT_ROWS / MEAN_SEQ_LANES / V8_STATS_AHEAD }>(
            #[inline(always)]
            |group| {
                let row = |j: usize| first + lanes * (group * V8_STATS_AHEAD + j) as u32;
                let mut raw = [[0u32; 4]; V8_STATS_AHEAD];
                // SAFETY: every row of the segment is below seq; the chunk lies inside head_dim.
                unroll::<V8_STATS_AHEAD>(
                    #[inline(always)]
                    |j| raw[j] = unsafe { ptx::ld_global_nc_v4(at(row(j))) },
                );
                unroll::<V8_STATS_AHEAD>(
                    #[inline(always)]
                    |j| add(&raw[j]),
                );
            },
        );
    } else {
        // A sequence's last segment: one row at a time (loads ahead of a guard spill at the
        // 64-register bound, and this is one segment per head).
        unroll::<{ MEAN_SEGMENT_ROWS / MEAN_SEQ_LANES }>(
            #[inline(always)]
            |i| {
                let row = first + lanes * i as u32;
                if row < p.seq {
                    // SAFETY: row < seq; the chunk lies inside head_dim.
                    add(&unsafe { ptx::ld_global_nc_v4(at(row)) });
                }
            },
        );
    }
    [sum, max, min]
}

/// Step 1 (job `V8_STATS`): sum, max and min of each channel over one segment of
/// `MEAN_SEGMENT_ROWS` rows of one (head, batch); `head_dim/8 * 16` threads: thread = (16-byte
/// channel chunk, sequence lane l), and lane l takes rows `l, l+16, …` of the segment in order (the
/// K mean's order, so the sum is the same tree: sequential per lane, then lanes combined at
/// strides 8, 4, 2, 1). `AHEAD` (`sage_prepare_stats8`) keeps several rows' loads in flight per
/// thread; the bits are the same either way.
///
/// # Safety
/// Valid parameters and that geometry; every thread of the CTA calls it with the same coordinates.
#[inline(always)]
pub(crate) unsafe fn stats<const AHEAD: bool>(p: &V8Params, segment: u32, head: u32, batch: u32) {
    let tid = ptx::thread_idx_x();
    let lanes = MEAN_SEQ_LANES as u32;
    let (chunk, lane) = (tid / lanes, tid % lanes);
    let row0 = segment * MEAN_SEGMENT_ROWS as u32;
    let base = p.v as i64
        + 2 * (batch as i64 * p.v_stride[0] + head as i64 * p.v_stride[1] + 8 * chunk as i64);
    // With AHEAD, every segment but a sequence's last takes a body of its own per input type
    // (`bf16` a constant in each: no per-element branches) with the loads issued ahead. Without
    // it, `sage_prepare`'s single body: the extra bodies there cost another job 8 bytes of spills
    // at its 80-register bound (ptxas 12.9, sm_90).
    let full = AHEAD && p.seq - row0 >= MEAN_SEGMENT_ROWS as u32;
    let first = row0 + lane;
    // SAFETY: forwarded (base is this thread's chunk of row 0 of the head; `full` as checked).
    let [mut sum, mut max, mut min] = unsafe {
        match (full, p.in_bf16 != 0) {
            (true, false) => lane_stats::<true>(p, base, first, false),
            (true, true) => lane_stats::<true>(p, base, first, true),
            (false, bf16) => lane_stats::<false>(p, base, first, bf16),
        }
    };
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

/// Step 2 for one channel `c < head_dim` of head `bh` (`batch * heads + head`): `mean = (Σ segment
/// sums, in order) / seq`, `amax = max(max - mean, mean - min)` (the largest |v - mean|),
/// `scale = amax / V_MAX`, `inv = V_MAX / amax` (0 where that is not finite; `V_MAX` = 127, or 1
/// for e4m3). Returns (mean, scale, inv). The one implementation of that order: the `V8_FINALIZE`
/// job and the quantization CTAs that fold it in call it.
///
/// # Safety
/// `c < head_dim`, `bh < batch * heads`; the statistics were written by an earlier launch.
#[inline(always)]
unsafe fn channel_scale(p: &V8Params, bh: u64, c: u64) -> (f32, f32, f32) {
    let hd = p.head_dim as u64;
    let segments = p.seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
    let mut at = p.partials + 4 * (bh * segments * 3 * hd + c);
    let step = 4 * 3 * hd;
    let mut total = 0.0f32;
    let mut max = f32::NEG_INFINITY;
    let mut min = f32::INFINITY;
    let mut seg = 0;
    // Four segments' loads in flight, then combined in segment order.
    while seg + 4 <= segments {
        let mut x = [[0.0f32; 3]; 4];
        unroll::<4>(
            #[inline(always)]
            |j| {
                let at = at + j as u64 * step;
                // SAFETY: segments seg..seg+4 of this head, inside the partials written by step 1.
                x[j] = unsafe {
                    [
                        ptx::ld_global_nc_f32(at),
                        ptx::ld_global_nc_f32(at + 4 * hd),
                        ptx::ld_global_nc_f32(at + 8 * hd),
                    ]
                };
            },
        );
        unroll::<4>(
            #[inline(always)]
            |j| {
                total += x[j][0];
                max = ptx::max_nan(max, x[j][1]);
                min = min_nan(min, x[j][2]);
            },
        );
        at += 4 * step;
        seg += 4;
    }
    while seg < segments {
        // SAFETY: inside the partials written by step 1.
        unsafe {
            total += ptx::ld_global_nc_f32(at);
            max = ptx::max_nan(max, ptx::ld_global_nc_f32(at + 4 * hd));
            min = min_nan(min, ptx::ld_global_nc_f32(at + 8 * hd));
        }
        at += step;
        seg += 1;
    }
    let mean = total / p.seq as f32;
    let amax = ptx::max_nan(max - mean, mean - min);
    // 0 where the quotient is not finite: amax 0; amax so small that it overflows (every value
    // within 2^-128 of the mean, bf16 subnormals: they quantize to 0, so the channel's output is
    // its mean, off by less than amax, where ∞ made e4m3 values of ±448, past the f16
    // accumulator's bound, and 0 · ∞ a NaN); or NaN (the scale carries it to the output).
    let inv = V_MAX / amax;
    let inv = if inv.is_finite() { inv } else { 0.0 };
    (mean, amax / V_MAX, inv)
}

/// Channel `c < out_head_dim` of head `bh`: [`channel_scale`] for `c < head_dim`, zeros past it.
///
/// # Safety
/// As [`channel_scale`] with `c < out_head_dim`.
#[inline(always)]
unsafe fn channel_or_pad(p: &V8Params, bh: u64, c: u32) -> (f32, f32, f32) {
    if c < p.head_dim {
        // SAFETY: forwarded.
        unsafe { channel_scale(p, bh, c as u64) }
    } else {
        (0.0, 0.0, 0.0)
    }
}

/// Stores channel `c`'s mean, scale and inverse scale of head `bh` into the mean
/// (`[batch][heads][out_head_dim]`) and scale (`[batch][heads][2][out_head_dim]`) buffers.
///
/// # Safety
/// `c < out_head_dim`, `bh < batch * heads`.
#[inline(always)]
unsafe fn store_channel(p: &V8Params, bh: u64, c: u32, (mean, scale, inv): (f32, f32, f32)) {
    let (out_hd, c) = (p.out_head_dim as u64, c as u64);
    // SAFETY: inside the mean and scale buffers.
    unsafe {
        ptx::st_global_f32(p.mean + 4 * (bh * out_hd + c), mean);
        ptx::st_global_f32(p.scale + 4 * (bh * 2 * out_hd + c), scale);
        ptx::st_global_f32(p.scale + 4 * (bh * 2 * out_hd + out_hd + c), inv);
    }
}

/// Step 2 (job `V8_FINALIZE`, only when the quantization CTAs do not fold it in): every channel
/// of head `bh` (channels in `head_dim..out_head_dim` get 0 for all three), any block size.
///
/// # Safety
/// Valid parameters, `bh < batch * heads`, after the launch that ran step 1.
#[inline(always)]
pub(crate) unsafe fn finalize(p: &V8Params, bh: u32) {
    let bh = bh as u64;
    let mut c = ptx::thread_idx_x();
    while c < p.out_head_dim {
        // SAFETY: c < out_head_dim; forwarded.
        unsafe { store_channel(p, bh, c, channel_or_pad(p, bh, c)) };
        c += ptx::block_dim_x();
    }
}

/// Step 3 (job `V8_QUANT`): one 64-key tile of Vᵀ. `q = clamp(round_ties_even((v - mean) · inv),
/// -127, 127)` per element (0 past the sequence or past `head_dim`), written at row `channel`,
/// column `v8_key_slot(key)`. `head_dim/8 × 16` threads (`config::prep_threads`);
/// `config::prep_smem_bytes(V8_QUANT)` bytes of dynamic shared memory: the mean and the inverse
/// scales of the head, then the tile.
///
/// 1. The mean and inverse scales are staged: with `fold` the CTA computes step 2 itself for its
///    head (the tile-0 CTA also stores the results, which the attention kernel reads); else it
///    reads what the `V8_FINALIZE` job of an earlier launch stored. (First: with the tile's loads
///    in flight, the 80-register bound spills.)
/// 2. The tile's keys are loaded with 16-byte loads (`V8_CHUNKS_PER_THREAD` per thread, all in
///    flight) into shared memory, rows `V8_TILE_ROW_PAD` bytes apart.
/// 3. Thread → (channel, 16-key group) pairs, channels fastest: a warp reads 32 consecutive
///    channels of a key from shared memory (conflict-free) and writes each group's 16 bytes with
///    one global store, in slot order.
///
/// # Safety
/// Valid parameters and that geometry, after the launch that ran step 1 (and step 2 unless
/// `fold`); every thread of the CTA calls it with the same coordinates.
#[inline(always)]
pub(crate) unsafe fn quantize(p: &V8Params, fold: bool, tile: u32, head: u32, batch: u32) {
    let bh = (batch * p.heads + head) as u64;
    let out_hd = p.out_head_dim;
    let tid = ptx::thread_idx_x();
    let threads = ptx::block_dim_x();
    let smem = ptx::smem_base();
    let (mean_at, inv_at) = (|c: u32| smem + 4 * c, |c: u32| smem + 4 * (out_hd + c));
    let key0 = tile * V8_TILE as u32;

    // 1. The head's mean and inverse scales.
    let mut c = tid;
    while c < out_hd {
        // SAFETY: c < out_head_dim: inside the mean and scale buffers and the staging area.
        unsafe {
            let (m, k) = if fold {
                let channel = channel_or_pad(p, bh, c);
                if tile == 0 {
                    store_channel(p, bh, c, channel);
                }
                (channel.0, channel.2)
            } else {
                (
                    ptx::ld_global_nc_f32(p.mean + 4 * (bh * out_hd as u64 + c as u64)),
                    ptx::ld_global_nc_f32(
                        p.scale + 4 * (bh * 2 * out_hd as u64 + (out_hd + c) as u64),
                    ),
                )
            };
            ptx::st_shared_f32(mean_at(c), m);
            ptx::st_shared_f32(inv_at(c), k);
        }
        c += threads;
    }
    // 2. The tile, 16 bytes per load: chunk j of this thread is c = tid + j * threads, (row, column
    // chunk) of the tile.
    let chunks = p.head_dim / 8;
    let row_stride = 2 * p.head_dim + V8_TILE_ROW_PAD as u32;
    let tile_smem = smem + 8 * out_hd;
    let base = p.v as i64 + 2 * (batch as i64 * p.v_stride[0] + head as i64 * p.v_stride[1]);
    let mut raw = [[0u32; 4]; V8_CHUNKS_PER_THREAD];
    unroll::<V8_CHUNKS_PER_THREAD>(
        #[inline(always)]
        |j| {
            let c = tid + j as u32 * threads;
            let (row, chunk) = (c / chunks, c % chunks);
            // Unconditional loads, so that all of them are in flight at once: a chunk outside the
            // tile or past the sequence reads the tile's first chunk instead (a key below seq),
            // whose bytes land in rows that step 3 never reads.
            let (key, chunk) = if row < V8_TILE as u32 && key0 + row < p.seq {
                (key0 + row, chunk)
            } else {
                (key0, 0)
            };
            let at = base + 2 * (key as i64 * p.v_stride[2] + 8 * chunk as i64);
            // SAFETY: key < seq and chunk < head_dim/8: inside V.
            raw[j] = unsafe { ptx::ld_global_nc_v4(at as u64) };
        },
    );

    unroll::<V8_CHUNKS_PER_THREAD>(
        #[inline(always)]
        |j| {
            let c = tid + j as u32 * threads;
            let (row, chunk) = (c / chunks, c % chunks);
            if row < V8_TILE as u32 {
                // SAFETY: row < 64 and chunk < head_dim/8: inside the tile (16-byte aligned rows;
                // rows of keys past the sequence are never read).
                unsafe { ptx::st_shared_v4(tile_smem + row * row_stride + 16 * chunk, raw[j]) };
            }
        },
    );
    ptx::sync_threads();

    // 3. Quantize, transpose and store.
    let padded = padded_len(p.seq as usize, V8_TILE) as u64;
    let groups = (V8_TILE / 16) as u32;
    let mut i = tid;
    while i < out_hd * groups {
        let (c, g) = (i % out_hd, i / out_hd);
        let mut q = [0u32; 16];
        if c < p.head_dim {
            // SAFETY: c < head_dim <= out_head_dim: inside the staged mean and inverse scales.
            let (m, k) = unsafe {
                (
                    ptx::ld_shared_f32(mean_at(c)),
                    ptx::ld_shared_f32(inv_at(c)),
                )
            };
            // Channel c of row r is the (c & 1) half of the 4-byte word at 4 * (c / 2).
            let (word, shift) = (4 * (c / 2), 16 * (c & 1));
            unroll::<16>(
                #[inline(always)]
                |r| {
                    let row = 16 * g + r as u32;
                    if key0 + row < p.seq {
                        // SAFETY: row < 64, c < head_dim: inside the tile.
                        let w = unsafe { ptx::ld_shared_u32(tile_smem + row * row_stride + word) };
                        let x = (w >> shift) as u16;
                        let x = if p.in_bf16 != 0 {
                            f32::from_bits(u32::from(x) << 16)
                        } else {
                            ptx::f16_to_f32(x)
                        };
                        q[v8_key_slot(r)] = v_byte((x - m) * k);
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
        i += threads;
    }
}
