//! Smoothing and per-block INT8 quantization, bit-exact with `host/quant_ref.rs` (the contract is
//! docs/design.md, "Quantization"): f32 arithmetic in a fixed order, `max.NaN` for the block
//! maximum, `cvt.rni.sat` for rounding. Also the bf16 → f16 copy of V.

use crate::config::{MEAN_SEGMENT_ROWS, MEAN_SEQ_LANES, QUANT_CHUNKS_PER_THREAD, padded_len};
use crate::params::{
    ColumnCopyParams, ConvertParams, LseBiasParams, MeanParams, PrepareParams, QuantParams,
};
use crate::ptx;
use crate::unroll::unroll;

/// Loads 8 consecutive f16 or bf16 values (16 bytes) as f32.
///
/// # Safety
/// `ptr` is a 16-byte aligned global address of 16 readable bytes.
#[inline(always)]
pub(crate) unsafe fn load8(ptr: u64, bf16: bool) -> [f32; 8] {
    unpack8(&unsafe { ptx::ld_global_nc_v4(ptr) }, bf16)
}

/// 8 f16 or bf16 values packed in 16 bytes, as f32 (exact).
#[inline(always)]
fn unpack8(raw: &[u32; 4], bf16: bool) -> [f32; 8] {
    let mut v = [0.0f32; 8];
    unroll::<4>(
        #[inline(always)]
        |i| {
            let (lo, hi) = if bf16 {
                ptx::unpack_bf16x2(raw[i])
            } else {
                ptx::unpack_f16x2(raw[i])
            };
            v[2 * i] = lo;
            v[2 * i + 1] = hi;
        },
    );
    v
}

/// Sum of K over one segment of `MEAN_SEGMENT_ROWS` rows, per (batch, head, channel): the first
/// step of the K mean (docs/design.md, "Quantization"), run by CTAs of
/// [`sage_quantize_q_and_sum_k`]. `head_dim/8 * 16` threads or more: thread = (16-byte column
/// chunk, sequence lane); `16 * head_dim * 4` bytes of dynamic shared memory.
///
/// # Safety
/// Valid parameters and that geometry; every thread of the CTA calls it with the same coordinates.
#[inline(always)]
unsafe fn segment_sums(p: &MeanParams, segment: u32, head: u32, batch: u32) {
    let tid = ptx::thread_idx_x();
    let chunks = p.head_dim / 8;
    let (chunk, lane) = (tid % chunks, tid / chunks);
    let bf16 = p.in_bf16 != 0;
    let head_ptr = p.k as i64 + 2 * (batch as i64 * p.k_stride[0] + head as i64 * p.k_stride[1]);
    let start = segment * MEAN_SEGMENT_ROWS as u32;
    let lanes = MEAN_SEQ_LANES as u32;
    // The fused launch rounds 2·head_dim threads up to whole warps: when head_dim/8 is odd the
    // threads past the 16 lanes sum nothing and only join the barriers.
    let active = lane < lanes;
    let end = if active {
        (start + MEAN_SEGMENT_ROWS as u32).min(p.seq)
    } else {
        start
    };
    let row_ptr = |s: u32| (head_ptr + 2 * (s as i64 * p.k_stride[2] + chunk as i64 * 8)) as u64;
    let mut sum = [0.0f32; 8];
    // Rows start + lane, start + lane + 16, … are summed in increasing order (the contract); the
    // loads of AHEAD rows are issued before their adds so each thread keeps several in flight.
    const AHEAD: u32 = 8;
    let mut s = start + lane;
    while s + (AHEAD - 1) * lanes < end {
        let mut x = [[0.0f32; 8]; AHEAD as usize];
        // SAFETY: every row s + j*16 < end <= seq and chunk < head_dim/8: inside K.
        unroll::<{ AHEAD as usize }>(
            #[inline(always)]
            |j| x[j] = unsafe { load8(row_ptr(s + j as u32 * lanes), bf16) },
        );
        unroll::<{ AHEAD as usize }>(
            #[inline(always)]
            |j| {
                unroll::<8>(
                    #[inline(always)]
                    |i| sum[i] += x[j][i],
                )
            },
        );
        s += AHEAD * lanes;
    }
    while s < end {
        // SAFETY: s < seq and chunk < head_dim/8: inside K.
        let x = unsafe { load8(row_ptr(s), bf16) };
        unroll::<8>(
            #[inline(always)]
            |i| sum[i] += x[i],
        );
        s += lanes;
    }
    // partial[lane][channel] in shared memory, then the fixed tree over lanes (8, 4, 2, 1).
    let base = ptx::smem_base();
    let slot = |lane: u32, i: usize| base + 4 * (lane * p.head_dim + chunk * 8 + i as u32);
    // SAFETY: lane < 16 and channel < head_dim: inside the 16*head_dim*4-byte buffer.
    if active {
        unroll::<8>(
            #[inline(always)]
            |i| unsafe { ptx::st_shared_f32(slot(lane, i), sum[i]) },
        );
    }
    let mut stride = lanes / 2;
    while stride > 0 {
        ptx::sync_threads();
        if lane < stride {
            unroll::<8>(
                #[inline(always)]
                |i| unsafe {
                    let v = ptx::ld_shared_f32(slot(lane, i))
                        + ptx::ld_shared_f32(slot(lane + stride, i));
                    ptx::st_shared_f32(slot(lane, i), v);
                },
            );
        }
        stride /= 2;
    }
    ptx::sync_threads();
    if lane == 0 {
        let segments = p.seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
        let row = ((batch * p.heads + head) as u64 * segments + segment as u64) * p.head_dim as u64;
        let out = p.partials + 4 * (row + chunk as u64 * 8);
        unroll::<8>(
            #[inline(always)]
            |i| {
                // SAFETY: inside the [batch][heads][segments][head_dim] partials buffer.
                unsafe { ptx::st_global_f32(out + 4 * i as u64, ptx::ld_shared_f32(slot(0, i))) };
            },
        );
    }
}

/// K's mean from the segment sums: `((0 + s₀) + s₁) + …` in segment order, divided by the length.
/// Grid (heads, batch); one thread per channel (`head_dim` threads).
///
/// # Safety
/// Launched by the host with validated parameters and that geometry, after the segment sums.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_k_mean(p: MeanParams) {
    let (head, batch, _) = ptx::block_idx();
    let d = ptx::thread_idx_x() as u64;
    let segments = p.seq.div_ceil(MEAN_SEGMENT_ROWS as u32) as u64;
    let bh = (batch * p.heads + head) as u64;
    let mut total = 0.0f32;
    let mut seg = 0;
    while seg < segments {
        // SAFETY: inside the partials buffer.
        total += unsafe {
            ptx::ld_global_nc_f32(p.partials + 4 * ((bh * segments + seg) * p.head_dim as u64 + d))
        };
        seg += 1;
    }
    // SAFETY: inside the [batch][heads][head_dim] mean buffer.
    unsafe {
        ptx::st_global_f32(
            p.mean + 4 * (bh * p.head_dim as u64 + d),
            total / p.seq as f32,
        )
    };
}

/// Per-block symmetric INT8 quantization of Q (scaled by `mult`) or K (minus the mean). Grid
/// (blocks, heads, batch); `ceil(block * head_dim / 8 / QUANT_CHUNKS_PER_THREAD)` threads rounded up
/// to whole warps; 4 bytes of dynamic shared memory per warp (`config::quant_smem_bytes`).
///
/// One pass over global memory: each thread loads its `QUANT_CHUNKS_PER_THREAD` 16-byte chunks
/// up front (all in flight at once), keeps them in registers for the block maximum, and quantizes
/// from the same registers.
///
/// # Safety
/// Launched by the host with validated parameters and that geometry.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_quantize_int8(p: QuantParams) {
    let (blk, head, batch) = ptx::block_idx();
    // SAFETY: forwarded (this entry's own contract).
    unsafe { quantize_block(&p, blk, head, batch) }
}

/// Q quantization and K segment sums in ONE launch (they are independent): CTAs
/// `0..q_ctas` quantize Q blocks (as [`sage_quantize_int8`], flattened over (block, head, batch)),
/// the rest sum K segments (flattened over (segment, head, batch)).
/// One launch instead of two lets the two memory-bound passes overlap, which matters for short
/// sequences. Block size and shared memory: the larger of the two kernels' (`2 * head_dim`
/// threads rounded up to whole warps).
///
/// # Safety
/// Launched by the host with validated parameters and that geometry.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_quantize_q_and_sum_k(p: PrepareParams) {
    let bx = ptx::block_idx().0;
    if bx < p.q_ctas {
        let q_blocks = p.quant.seq.div_ceil(p.quant.block);
        let (blk, rest) = (bx % q_blocks, bx / q_blocks);
        // SAFETY: blk < q_blocks, rest < heads * batch by the grid size; CTA-uniform branch.
        unsafe { quantize_block(&p.quant, blk, rest % p.quant.heads, rest / p.quant.heads) }
    } else {
        let i = bx - p.q_ctas;
        let segments = p.mean.seq.div_ceil(MEAN_SEGMENT_ROWS as u32);
        let (segment, rest) = (i % segments, i / segments);
        // SAFETY: as above for the K segments.
        unsafe { segment_sums(&p.mean, segment, rest % p.mean.heads, rest / p.mean.heads) }
    }
}

/// The body of [`sage_quantize_int8`] for one (block, head, batch).
///
/// # Safety
/// As [`sage_quantize_int8`]; every thread of the CTA calls it with the same coordinates.
#[inline(always)]
unsafe fn quantize_block(p: &QuantParams, blk: u32, head: u32, batch: u32) {
    let tid = ptx::thread_idx_x();
    let threads = ptx::block_dim_x();
    let chunks = p.head_dim / 8;
    let total = p.block * chunks;
    let row0 = blk * p.block;
    let bf16 = p.in_bf16 != 0;
    let head_ptr = p.x as i64 + 2 * (batch as i64 * p.x_stride[0] + head as i64 * p.x_stride[1]);
    let mean_row = p.mean + 4 * (batch * p.heads + head) as u64 * p.head_dim as u64;

    // Chunk i of this thread is c = tid + i * threads: (row, column chunk) of the block.
    let mut raw = [[0u32; 4]; QUANT_CHUNKS_PER_THREAD];
    unroll::<QUANT_CHUNKS_PER_THREAD>(
        #[inline(always)]
        |i| {
            let c = tid + i as u32 * threads;
            let row = row0 + c / chunks;
            if c < total && row < p.seq {
                let ptr = head_ptr + 2 * (row as i64 * p.x_stride[2] + (c % chunks) as i64 * 8);
                // SAFETY: row < seq, chunk < head_dim/8: inside the validated input.
                raw[i] = unsafe { ptx::ld_global_nc_v4(ptr as u64) };
            }
        },
    );
    // The value the contract quantizes: x * mult (Q, and K without smoothing) or x - mean (K).
    let values = |raw: &[u32; 4], chunk: u32| -> [f32; 8] {
        let mut x = unpack8(raw, bf16);
        if p.mean != 0 {
            // SAFETY: inside the [batch][heads][head_dim] mean buffer (16-byte aligned rows).
            let m = unsafe {
                [
                    ptx::ld_global_nc_v4(mean_row + 32 * chunk as u64),
                    ptx::ld_global_nc_v4(mean_row + 32 * chunk as u64 + 16),
                ]
            };
            unroll::<8>(
                #[inline(always)]
                |i| x[i] -= f32::from_bits(m[i / 4][i % 4]),
            );
        } else {
            unroll::<8>(
                #[inline(always)]
                |i| x[i] *= p.mult,
            );
        }
        x
    };
    let in_range = |i: usize| {
        let c = tid + i as u32 * threads;
        c < total && row0 + c / chunks < p.seq
    };

    let mut amax = 0.0f32;
    unroll::<QUANT_CHUNKS_PER_THREAD>(
        #[inline(always)]
        |i| {
            if in_range(i) {
                let v = values(&raw[i], (tid + i as u32 * threads) % chunks);
                unroll::<8>(
                    #[inline(always)]
                    |e| amax = ptx::max_nan(amax, ptx::abs(v[e])),
                );
            }
        },
    );
    // Block-wide NaN-propagating max: warp butterfly, then one slot per warp.
    let mut m = amax;
    let mut mask = 16;
    while mask > 0 {
        m = ptx::max_nan(m, ptx::shfl_xor_f32(m, mask));
        mask /= 2;
    }
    let base = ptx::smem_base();
    let warps = threads / 32;
    // SAFETY: 4 bytes per warp, inside the `quant_smem_bytes` buffer.
    unsafe {
        if tid & 31 == 0 {
            ptx::st_shared_f32(base + 4 * (tid >> 5), m);
        }
        ptx::sync_threads();
        m = ptx::ld_shared_f32(base);
        let mut w = 1;
        while w < warps {
            m = ptx::max_nan(m, ptx::ld_shared_f32(base + 4 * w));
            w += 1;
        }
    }
    let amax = m;
    let inv = if amax == 0.0 { 0.0 } else { 127.0 / amax };
    let blocks = padded_len(p.seq as usize, p.block as usize) as u64 / p.block as u64;
    if tid == 0 {
        let idx = (batch * p.heads + head) as u64 * blocks + blk as u64;
        // SAFETY: inside the [batch][heads][blocks] scale buffer.
        unsafe { ptx::st_global_f32(p.scale + 4 * idx, amax / 127.0) };
    }

    let padded = blocks * p.block as u64;
    let out_head = p.out + (batch * p.heads + head) as u64 * padded * p.out_head_dim as u64;
    unroll::<QUANT_CHUNKS_PER_THREAD>(
        #[inline(always)]
        |i| {
            let c = tid + i as u32 * threads;
            if c < total {
                let (row, chunk) = (row0 + c / chunks, c % chunks);
                let mut packed = [0u32; 2];
                if row < p.seq {
                    let v = values(&raw[i], chunk);
                    unroll::<8>(
                        #[inline(always)]
                        |e| {
                            let q = ptx::cvt_rni_sat_s8(v[e] * inv) as u32 & 0xff;
                            packed[e / 4] |= q << (8 * (e % 4));
                        },
                    );
                }
                // Rows past the sequence end (padding up to the block) are stored as zeros.
                let dst = out_head + row as u64 * p.out_head_dim as u64 + chunk as u64 * 8;
                // SAFETY: row < padded length, inside the padded INT8 buffer; 8-byte aligned.
                unsafe { ptx::st_global_v2(dst, packed) };
            }
        },
    );
    // Columns past head_dim (when a larger-head_dim kernel runs on this data) are zero: one
    // thread per row (no division by the run-time pad width).
    let mut row = row0 + tid;
    while p.out_head_dim > p.head_dim && row < row0 + p.block {
        let mut col = p.head_dim;
        while col < p.out_head_dim {
            let dst = out_head + row as u64 * p.out_head_dim as u64 + col as u64;
            // SAFETY: row < padded length and col < out_head_dim: inside the INT8 buffer.
            unsafe { ptx::st_global_v2(dst, [0, 0]) };
            col += 8;
        }
        row += threads;
    }
}

/// Copies V (f16 or bf16) to a contiguous f16 buffer `[b][h][seq][out_head_dim]`, zero past
/// `head_dim` (the P·V mma takes f16; the padding lets a larger-head_dim kernel run). Grid-stride
/// over 16-byte output chunks.
///
/// # Safety
/// Launched by the host with validated parameters.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_v_to_f16(p: ConvertParams) {
    let in_chunks = (p.head_dim / 8) as u64;
    let chunks = (p.out_head_dim / 8) as u64;
    let rows = p.batch as u64 * p.heads as u64 * p.seq as u64;
    let total = rows * chunks;
    let step = ptx::grid_dim_x() as u64 * ptx::block_dim_x() as u64;
    let mut c = ptx::block_idx().0 as u64 * ptx::block_dim_x() as u64 + ptx::thread_idx_x() as u64;
    while c < total {
        let (row, chunk) = (c / chunks, c % chunks);
        let s = row % p.seq as u64;
        let bh = row / p.seq as u64;
        let (b, h) = (bh / p.heads as u64, bh % p.heads as u64);
        let mut out = [0u32; 4];
        if chunk < in_chunks {
            let src = p.x as i64
                + 2 * (b as i64 * p.x_stride[0]
                    + h as i64 * p.x_stride[1]
                    + s as i64 * p.x_stride[2]
                    + chunk as i64 * 8);
            // SAFETY: indices inside the validated input.
            let raw = unsafe { ptx::ld_global_nc_v4(src as u64) };
            out = if p.in_bf16 != 0 {
                raw.map(ptx::bf16x2_to_f16x2)
            } else {
                raw
            };
        }
        // SAFETY: c < total: inside the contiguous output.
        unsafe { ptx::st_global_v4(p.out + 16 * c, out) };
        c += step;
    }
}

/// Copies the first `cols` columns of every row from `src` to `dst` (16-bit elements, 16-byte
/// chunks), both strided `[b][h][seq][·]`. Grid-stride.
///
/// # Safety
/// Launched by the host with validated parameters.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_copy_columns(p: ColumnCopyParams) {
    let chunks = (p.cols / 8) as u64;
    let rows = p.batch as u64 * p.heads as u64 * p.seq as u64;
    let total = rows * chunks;
    let step = ptx::grid_dim_x() as u64 * ptx::block_dim_x() as u64;
    let mut c = ptx::block_idx().0 as u64 * ptx::block_dim_x() as u64 + ptx::thread_idx_x() as u64;
    while c < total {
        let (row, chunk) = (c / chunks, c % chunks);
        let s = (row % p.seq as u64) as i64;
        let bh = row / p.seq as u64;
        let (b, h) = ((bh / p.heads as u64) as i64, (bh % p.heads as u64) as i64);
        let offset = |st: [i64; 3]| 2 * (b * st[0] + h * st[1] + s * st[2] + chunk as i64 * 8);
        // SAFETY: indices inside both validated tensors; 16-byte aligned rows.
        unsafe {
            let v = ptx::ld_global_nc_v4((p.src as i64 + offset(p.src_stride)) as u64);
            ptx::st_global_v4((p.dst as i64 + offset(p.dst_stride)) as u64, v);
        }
        c += step;
    }
}

/// The LSE correction for smoothed K: one thread per query row (grid-stride), `sm_scale · q·mean`.
/// Only launched when the caller asks for the LSE with smoothing on.
///
/// # Safety
/// Launched by the host with validated parameters.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sage_lse_bias(p: LseBiasParams) {
    let rows = p.batch as u64 * p.heads as u64 * p.seq as u64;
    let step = ptx::grid_dim_x() as u64 * ptx::block_dim_x() as u64;
    let mut r = ptx::block_idx().0 as u64 * ptx::block_dim_x() as u64 + ptx::thread_idx_x() as u64;
    let bf16 = p.in_bf16 != 0;
    while r < rows {
        let s = r % p.seq as u64;
        let bh = r / p.seq as u64;
        let (b, h) = (bh / p.heads as u64, bh % p.heads as u64);
        let kv_head = h / (p.heads / p.kv_heads) as u64;
        let row = p.q as i64
            + 2 * (b as i64 * p.q_stride[0] + h as i64 * p.q_stride[1] + s as i64 * p.q_stride[2]);
        let mean = p.mean + 4 * (b * p.kv_heads as u64 + kv_head) * p.head_dim as u64;
        let mut dot = 0.0f32;
        let mut chunk = 0;
        while chunk < p.head_dim / 8 {
            // SAFETY: inside the validated Q row and the mean buffer.
            let (x, m) = unsafe {
                (
                    load8((row + 16 * chunk as i64) as u64, bf16),
                    [
                        ptx::ld_global_nc_v4(mean + 32 * chunk as u64),
                        ptx::ld_global_nc_v4(mean + 32 * chunk as u64 + 16),
                    ],
                )
            };
            unroll::<8>(
                #[inline(always)]
                |i| dot = ptx::fma(x[i], f32::from_bits(m[i / 4][i % 4]), dot),
            );
            chunk += 1;
        }
        // SAFETY: r < batch * heads * seq, the bias buffer's length.
        unsafe { ptx::st_global_f32(p.bias + 4 * r, dot * p.sm_scale) };
        r += step;
    }
}
