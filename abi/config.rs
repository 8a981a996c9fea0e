//! Tile, quantization and launch constants: the single source of truth for the device kernels and
//! the host (which includes this file with `#[path]`, so the two cannot drift). Plain `const`s and
//! `const fn`s only: this file must compile for both nvptx64 and the host.

/// Rows of a Q quantization block: the unit Q is padded to and one preparation CTA quantizes.
/// Q's scales are per token (one per row, per batch and head; rows past the sequence get 0), which
/// cut the end-to-end error by 15% on the f16 P·V path and 8% on the 8-bit one (docs/perf-notes.md,
/// v8).
pub const Q_BLOCK: usize = 128;
/// Tokens per K quantization block; equal to the attention kernel's key tile.
pub const K_BLOCK: usize = 64;
/// Warps per attention CTA; each owns `16 * M_TILES` query rows.
pub const ATTN_WARPS: usize = 4;
/// Threads per attention CTA.
pub const ATTN_THREADS: usize = ATTN_WARPS * 32;
/// Every head_dim a call accepts is a multiple of this (16-byte rows of f16/bf16 and of the
/// quantizer's 8-value chunks).
pub const HEAD_DIM_STEP: usize = 8;
/// The largest head_dim a call accepts.
pub const MAX_HEAD_DIM: usize = 256;
/// Head dimensions with a compiled portable attention kernel. Any other supported head_dim runs
/// zero-padded on the smallest of these that is at least as large ([`portable_kernel_head_dim`]).
pub const KERNEL_HEAD_DIMS: [usize; 4] = [64, 96, 128, 256];
/// Every head_dim a call accepts: the multiples of [`HEAD_DIM_STEP`] up to [`MAX_HEAD_DIM`].
pub const SUPPORTED_HEAD_DIMS: [usize; MAX_HEAD_DIM / HEAD_DIM_STEP] = {
    let mut dims = [0; MAX_HEAD_DIM / HEAD_DIM_STEP];
    let mut i = 0;
    while i < dims.len() {
        dims[i] = (i + 1) * HEAD_DIM_STEP;
        i += 1;
    }
    dims
};
/// [`SUPPORTED_HEAD_DIMS`] in words, for messages.
pub const SUPPORTED_HEAD_DIMS_TEXT: &str = "every multiple of 8 from 8 to 256";

/// Whether a call accepts `head_dim` (a member of [`SUPPORTED_HEAD_DIMS`]).
pub const fn is_supported_head_dim(head_dim: usize) -> bool {
    head_dim > 0 && head_dim <= MAX_HEAD_DIM && head_dim.is_multiple_of(HEAD_DIM_STEP)
}

/// The portable kernel `head_dim` runs on: the smallest of [`KERNEL_HEAD_DIMS`] that is at least
/// `head_dim` (the preparation kernels zero-pad Q, K and V to it). `None` for an unsupported one.
pub const fn portable_kernel_head_dim(head_dim: usize) -> Option<usize> {
    if !is_supported_head_dim(head_dim) {
        return None;
    }
    let mut i = 0;
    while i < KERNEL_HEAD_DIMS.len() {
        if KERNEL_HEAD_DIMS[i] >= head_dim {
            return Some(KERNEL_HEAD_DIMS[i]);
        }
        i += 1;
    }
    None
}
/// Extra bytes after every shared-memory row: makes the row stride ≡ 16 (mod 128) bytes, so the 8
/// rows an `ldmatrix` reads at one column hit 8 distinct 16-byte bank groups (no conflicts).
pub const SMEM_ROW_PAD: usize = 16;
/// Sequence lanes of the K-mean reduction (see docs/design.md, "Quantization").
pub const MEAN_SEQ_LANES: usize = 16;
/// Rows per segment of the K-mean reduction: one CTA sums one segment of one (batch, head), so
/// that even short sequences spread over many CTAs.
pub const MEAN_SEGMENT_ROWS: usize = 256;
/// 16-byte chunks each thread of a Q quantization CTA holds in registers (one pass over global
/// memory): a 128-row block over [`prep_threads`] threads.
pub const Q_CHUNKS_PER_THREAD: usize = 8;
/// The same for K: a 64-row block over [`prep_threads`] threads (half of Q's, which also leaves
/// the registers for K's mean within the preparation kernel's 80-register bound).
pub const K_CHUNKS_PER_THREAD: usize = 4;
/// Rows of K each thread of a `SUM_K` CTA loads before adding them (all in flight; the adds
/// stay in row order, so this never changes the bits).
pub const SUM_K_AHEAD: usize = 8;
/// The same for the 8-bit V's statistics (`V8_STATS`): rows each thread loads before their sums,
/// maxima and minima (the adds stay in row order: never changes the bits). Divides the 16 rows a
/// thread takes per segment.
pub const V8_STATS_AHEAD: usize = 4;
/// The same for the segment sums of a `sage_prepare_k_head` CTA: 4 (1024 threads × 4 × 16 B = 64
/// KiB in flight per SM). 8 spilled 8 bytes for sm_86 / sm_89 already at that entry's former
/// 80-register cap (768 threads; ptxas 12.9), and the cap is 64 now; 6 would leave 4 of a
/// thread's 16 rows per segment to one-at-a-time loads.
pub const K_HEAD_SUM_AHEAD: usize = 4;
/// Segment sums each thread of the `K_MEAN` job loads from global memory before adding them, in
/// segment order (never changes the bits): 8 puts a 4K head's 16 sums in two round trips instead
/// of eight. The CTAs that fold the mean in (at most `MEAN_FOLD_MAX_SEGMENTS` sums) keep 2.
pub const K_MEAN_AHEAD: usize = 8;
/// Longest K, in `MEAN_SEGMENT_ROWS` segments, for which the consumers of K's mean (the K
/// quantization and LSE-bias CTAs) reduce the segment sums themselves, in the `K_MEAN` order,
/// instead of reading the mean a separate launch wrote: one launch less, at the price of every
/// consumer CTA reading its head's `segments × head_dim` sums (from L2, while its K loads are in
/// flight). 4 segments = 1024 rows (an eighth of a K block's own bytes): at 16 segments the f16
/// preparation measured 21% slower at 4096 rows than with the `K_MEAN` launch (H200,
/// docs/perf-notes.md, v4). Longer sequences keep the `K_MEAN` launch.
pub const MEAN_FOLD_MAX_SEGMENTS: usize = 4;
/// The same for the 8-bit V's scales (the Vᵀ CTAs reduce V's statistics themselves): 4 segments
/// = 1024 rows, as K (never more than K's: `plan_prepare` relies on it). Three values per segment
/// and channel (sum, max, min), read before the tile's loads, make folding cost more than for K.
pub const V8_FOLD_MAX_SEGMENTS: usize = 4;

/// Threads of every launch of the preparation kernel: one per (16-byte chunk of a row, sequence
/// lane), the geometry of the segment jobs (`2 * head_dim`: 256 at head_dim 128, 8 warps; 512 at
/// head_dim 256). Not always whole warps: when `head_dim / 8` is odd (d = 8, 24, 40, …) the last
/// warp has 16 threads, which every job allows for (`prep_threads_ok`).
pub const fn prep_threads(head_dim: usize) -> usize {
    head_dim / 8 * MEAN_SEQ_LANES
}
/// The most threads a preparation CTA has: `prep_threads(MAX_HEAD_DIM)`. The kernel is capped at
/// 80 registers (build.rs), so 512 · 80 fits the 64 Ki registers of an SM.
pub const PREP_MAX_THREADS: usize = prep_threads(MAX_HEAD_DIM);
/// Threads per CTA of the column copy (`sage_copy_columns`).
pub const CONVERT_THREADS: usize = 256;
/// 16-byte chunks each thread of a V-conversion job copies (all loads in flight, then the stores).
pub const CONVERT_CHUNKS_PER_THREAD: usize = 4;
/// `log2(e)` as the quantizer folds it into Q's scale.
pub const LOG2_E: f32 = core::f32::consts::LOG2_E;

/// 16-row mma tiles per warp along the query dimension. Two tiles halve the shared-memory traffic
/// of K and V per query row (one tile measured shared-memory bound at d = 128, H200). At d = 128
/// the f16-accumulator variant keeps one: with two it spills (ptxas 12.9) even with 32-key tiles.
/// At d = 256 both keep one: the f32 output of one 16-row tile alone is 128 registers per thread.
pub const fn m_tiles(head_dim: usize, pv_f32: bool) -> usize {
    if head_dim > 128 || (head_dim > 96 && !pv_f32) {
        1
    } else {
        2
    }
}

/// Keys per tile of the portable kernel's main loop (a divisor of `K_BLOCK`, so a tile has one
/// K scale). Two m-tiles at d = 128 fit in registers only with 32-key tiles. At d = 256, 32-key
/// tiles keep the two K/V stages and the Q tile at 67 KiB of shared memory, under the 99 KiB a
/// block may have on sm_86/sm_89 (64-key tiles would need 117 KiB). `compact` variants
/// ([`has_compact_variant`]) take 32-key tiles too.
pub const fn cta_k(head_dim: usize, pv_f32: bool, compact: bool) -> usize {
    if head_dim > 128 || (head_dim > 96 && pv_f32) || (compact && head_dim > 64) {
        32
    } else {
        64
    }
}

/// Whether the portable kernel has a compact variant for `head_dim` and accumulator: the same
/// kernel over 32-key tiles, for d = 96 (both accumulators) and d = 128 with the f16 one, whose
/// 64-key tiles take 54 and 61 KiB of shared memory, so that an SM of 100 KiB (sm_86, sm_89:
/// the RTX 3090 and 4090) holds one CTA of four warps. Over 32-key tiles they take 34 and 35 KiB
/// and two CTAs fit (their registers, at most 255 per thread of 128, allow two as well).
pub const fn has_compact_variant(head_dim: usize, pv_f32: bool) -> bool {
    head_dim > 64 && head_dim <= 128 && cta_k(head_dim, pv_f32, false) == 64
}

/// Whether the portable kernel has an f16-accumulator (`PvAccum::F16`) variant for `head_dim`.
/// Not at d = 256: next to the 128 registers of the f32 output, the f16 partial sums did not fit
/// in 255 registers in any schedule tried (ptxas 12.9 spilled 24–1008 B with 16- or 32-key tiles,
/// either tile copy, per-tile or per-k-step partials), so `PvAccum::F16` runs the f32 variant.
pub const fn has_f16_accum_variant(head_dim: usize) -> bool {
    head_dim <= 128
}

/// Query rows per attention CTA.
pub const fn cta_q(head_dim: usize, pv_f32: bool) -> usize {
    ATTN_WARPS * 16 * m_tiles(head_dim, pv_f32)
}

/// Shared-memory row stride (bytes) of a tile whose rows hold `row_bytes` bytes.
pub const fn smem_row_stride(row_bytes: usize) -> usize {
    row_bytes + SMEM_ROW_PAD
}

/// Byte offset of the 16-byte `chunk` of `row` in a padded tile.
pub const fn smem_offset(row_bytes: usize, row: usize, chunk: usize) -> usize {
    row * smem_row_stride(row_bytes) + chunk * 16
}

/// Bytes of the Q tile (int8), one K stage (int8) and one V stage (f16).
pub const fn q_tile_bytes(head_dim: usize, pv_f32: bool) -> usize {
    cta_q(head_dim, pv_f32) * smem_row_stride(head_dim)
}
/// See [`q_tile_bytes`].
pub const fn k_stage_bytes(head_dim: usize, pv_f32: bool, compact: bool) -> usize {
    cta_k(head_dim, pv_f32, compact) * smem_row_stride(head_dim)
}
/// See [`q_tile_bytes`].
pub const fn v_stage_bytes(head_dim: usize, pv_f32: bool, compact: bool) -> usize {
    cta_k(head_dim, pv_f32, compact) * smem_row_stride(2 * head_dim)
}

/// Pipeline stages for K and V (double buffering).
pub const STAGES: usize = 2;

/// Dynamic shared memory of the attention kernel.
pub const fn attn_smem_bytes(head_dim: usize, pv_f32: bool, compact: bool) -> usize {
    q_tile_bytes(head_dim, pv_f32)
        + STAGES
            * (k_stage_bytes(head_dim, pv_f32, compact) + v_stage_bytes(head_dim, pv_f32, compact))
}

/// Keys per tile of the 8-bit Vᵀ (one attention key tile).
pub const V8_TILE: usize = K_BLOCK;
/// 16-byte chunks of V each thread of a Vᵀ CTA loads (a 64-key tile over [`prep_threads`]
/// threads).
pub const V8_CHUNKS_PER_THREAD: usize = 4;
/// Bytes after every key row of the V tile a Vᵀ CTA stages in shared memory (keeps rows 16-byte
/// aligned for the 16-byte stores).
pub const V8_TILE_ROW_PAD: usize = 16;
/// log2 of the factor by which the portable kernel's f16 accumulator's second pass lowers every
/// probability (the CPU emulation redoes such rows with the same factor). It makes the pass
/// finite for every f16 V: without headroom, its exact-path probabilities are at most `2^-7`
/// each and its fast path keeps a row's tile sum at or below `cta_k · 2^-7` (a limit scaled with
/// it), so a tile's `Σ p·v` stays within `64 · 2^-7 · 65504 = 32752`, half of f16's largest
/// value, which leaves room for the accumulator's roundings. The price: a probability more than
/// 17 log2 units below its row max rounds to zero in f16 (the first pass: 21, with its headroom
/// of 3), and one more than 7 below is a subnormal (first pass: 11).
pub const F16_ACC_OVERFLOW_SHIFT: u32 = 7;
/// The largest P after its per-tile scaling, as an unsigned 8-bit integer (P·V on u8 · s8).
pub const P8_MAX: f32 = 255.0;
/// The largest P after its per-tile scaling on the FP8 P·V (e4m3 × e4m3, `PvPrecision::Fp8`):
/// e4m3's largest finite value, so that P uses the whole format (its smallest probabilities stay
/// out of the subnormals down to `2^-6 / 448`).
pub const P_FP8_MAX: f32 = 448.0;
/// `log2(P_FP8_MAX)`: the FP8 P·V's softmax adds it in the exponent, which gives P in e4m3 units
/// without a multiply per probability (its row sums come out in the same unit).
pub const LOG2_P_FP8_MAX: f32 = 8.807_355;
/// The largest |V − mean| of a channel after its FP8 scaling. With an f16 accumulator, one key
/// tile's `Σ P·V` is at most `keys · P_FP8_MAX · V_FP8_MAX` = 128 · 448 · 1 = 57344 < 65504 (the
/// f16 maximum), so no tile can overflow whatever the data; a power of two, so the e4m3 rounding
/// of V is the same relative rounding as at any other scale (only values below `2^-6` of the
/// channel's range become subnormal).
pub const V_FP8_MAX: f32 = 1.0;
/// Keys per tile of the 8-bit P·V up to head_dim 128: the u8 P is scaled to each tile's row
/// maximum (tiles start at key 0), and each tile's s32 product is folded into the f32 output once.
/// The key tile of the portable and the sm_90a 8-bit kernels (two 64-key K blocks); see
/// [`p8_tile`] for larger head dims.
pub const P8_TILE: usize = 128;

/// The P tile of the 8-bit P·V for a head_dim (the caller's or the kernel's: both sides of 128
/// agree): [`P8_TILE`] up to 128, one 64-key K block above (the sm_90a d = 256 kernel, whose
/// 128 f32 output registers per thread leave room for a 64-key tile's scores only).
pub const fn p8_tile(head_dim: usize) -> usize {
    if head_dim <= 128 {
        P8_TILE
    } else {
        K_BLOCK
    }
}

/// Slot of key `k` (within its aligned 16-key group) in the 8-bit Vᵀ rows. The u8 P operand of
/// the wgmma is built from the Q·Kᵀ accumulator without shuffles: lane `4g + t` holds keys
/// `2t, 2t+1, 8+2t, 9+2t` of its rows, and puts them in k slots `4t..4t+4` of the A fragment, so
/// Vᵀ stores key `2t + (e & 1) + 8(e >> 1)` at slot `4t + e`. This is its inverse. The mma.sync
/// m16n8k32 A fragment has the same per-warp layout (a0/a2: row g, k slots `4t..4t+4` /
/// `16+4t..`), so the portable kernel packs P the same way, and its B fragment (b0/b1: k slots
/// `4t..4t+4` / `16+4t..` of column g) is 4 contiguous bytes of a Vᵀ row: the prepared Vᵀ serves
/// both kernels unchanged.
pub const fn v8_key_slot(k: usize) -> usize {
    let (t, e) = ((k & 7) >> 1, (k & 1) | (((k >> 3) & 1) << 1));
    (k & !15) | (4 * t + e)
}

/// Head dimensions with a compiled portable 8-bit P·V kernel (`attention_pv8/`, the entries of
/// `for_each_pv8_attention_variant!`); other head_dims that are multiples of 16 run zero-padded
/// on the smallest of these at least as large (`dispatch::portable_pv8_kernel`).
pub const PV8_KERNEL_HEAD_DIMS: [usize; 4] = [64, 96, 128, 256];
/// Warps per CTA of the portable 8-bit P·V kernel (`attention_pv8/`); each owns 16 query rows
/// (one m-tile). 8 up to head_dim 128; 4 above, where the 128-row Q tile and two stages of K and
/// Vᵀ would pass the 99 KiB a block may opt in to on sm_86/sm_89 (see [`pv8_smem_bytes`]).
pub const fn pv8_warps(head_dim: usize) -> usize {
    if head_dim <= 128 {
        8
    } else {
        4
    }
}
/// Threads per CTA of the portable 8-bit P·V kernel.
pub const fn pv8_threads(head_dim: usize) -> usize {
    pv8_warps(head_dim) * 32
}
/// Query rows per CTA of the portable 8-bit P·V kernel: one Q quantization block up to head_dim
/// 128, half of one above (Q's scales are per token, and the padded Q holds whole blocks).
pub const fn pv8_cta_q(head_dim: usize) -> usize {
    pv8_warps(head_dim) * 16
}
/// Keys per tile of the portable 8-bit P·V kernel: one P tile ([`p8_tile`]: two K blocks up to
/// head_dim 128, one above, where the 128 f32 output registers per thread leave room for a 64-key
/// tile's scores only, as in the sm_90a kernel).
pub const fn pv8_cta_k(head_dim: usize) -> usize {
    p8_tile(head_dim)
}
/// Pipeline stages of its K and Vᵀ tiles (double buffering, one cp.async group per tile).
pub const PV8_STAGES: usize = 2;

/// Bytes of the INT8 Q tile of the portable 8-bit P·V kernel (padded rows, as [`q_tile_bytes`]).
pub const fn pv8_q_tile_bytes(head_dim: usize) -> usize {
    pv8_cta_q(head_dim) * smem_row_stride(head_dim)
}
/// Bytes of one INT8 K stage (one key per padded row).
pub const fn pv8_k_stage_bytes(head_dim: usize) -> usize {
    pv8_cta_k(head_dim) * smem_row_stride(head_dim)
}
/// Bytes of one INT8 Vᵀ stage: one channel per padded row of [`pv8_cta_k`] key slots, the layout
/// of the prepared Vᵀ (so that its rows are the mma's B operand as K's rows are for Q·Kᵀ).
pub const fn pv8_v_stage_bytes(head_dim: usize) -> usize {
    head_dim * smem_row_stride(pv8_cta_k(head_dim))
}
/// Dynamic shared memory of the portable 8-bit P·V kernel: 48 KiB at d = 64, 69 KiB at d = 96,
/// 90 KiB at d = 128, 91 KiB at d = 256 (within the 99 KiB a block may opt in to on sm_86/sm_89).
pub const fn pv8_smem_bytes(head_dim: usize) -> usize {
    pv8_q_tile_bytes(head_dim)
        + PV8_STAGES * (pv8_k_stage_bytes(head_dim) + pv8_v_stage_bytes(head_dim))
}

/// The key tiles a CTA visits, `(n_tiles, n_unmasked)`: tiles of `tile` keys from key 0, up to the
/// sequence end and (causal, bottom-right aligned: query i sees key j iff `j <= i + kv_len -
/// qo_len`) the limit of the CTA's last row among `q_row0..q_row0 + rows` (rows past `qo_len`
/// do not count); the first `n_unmasked` of them need no mask for any row (whole tiles inside the
/// sequence that the CTA's first row sees entirely).
pub const fn key_tiles(
    q_row0: usize,
    rows: usize,
    tile: usize,
    qo_len: usize,
    kv_len: usize,
    causal: bool,
) -> (usize, usize) {
    let full_len_tiles = kv_len / tile;
    if !causal {
        return (kv_len.div_ceil(tile), full_len_tiles);
    }
    let diag = kv_len as i64 - qo_len as i64;
    let row_end = if q_row0 + rows < qo_len {
        q_row0 + rows
    } else {
        qo_len
    };
    // Keys the CTA's last row sees, clamped to 0..=kv_len.
    let mut kv_end = row_end as i64 + diag;
    if kv_end < 0 {
        kv_end = 0;
    }
    if kv_end > kv_len as i64 {
        kv_end = kv_len as i64;
    }
    let n_tiles = (kv_end as usize).div_ceil(tile);
    // Keys the first row sees: the tiles entirely below that are unmasked for every row.
    let first_visible = q_row0 as i64 + diag + 1;
    let mut n_unmasked = if first_visible > 0 {
        first_visible as usize / tile
    } else {
        0
    };
    if n_unmasked > full_len_tiles {
        n_unmasked = full_len_tiles;
    }
    if n_unmasked > n_tiles {
        n_unmasked = n_tiles;
    }
    (n_tiles, n_unmasked)
}

/// Rows padded up to a whole number of blocks.
pub const fn padded_len(len: usize, block: usize) -> usize {
    len.div_ceil(block) * block
}

/// Calls `$m!(name, head_dim, causal, pv_f32, compact)` once per compiled attention variant
/// (`compact`: [`has_compact_variant`]). The device crate stamps the kernel entries from it and
/// the host builds its name table from it.
#[macro_export]
macro_rules! for_each_attention_variant {
    ($m:ident) => {
        $m!("sage_attn_hd64_full_f16acc", 64, false, false, false);
        $m!("sage_attn_hd64_causal_f16acc", 64, true, false, false);
        $m!("sage_attn_hd64_full_f32acc", 64, false, true, false);
        $m!("sage_attn_hd64_causal_f32acc", 64, true, true, false);
        $m!("sage_attn_hd96_full_f16acc", 96, false, false, false);
        $m!("sage_attn_hd96_causal_f16acc", 96, true, false, false);
        $m!("sage_attn_hd96_full_f32acc", 96, false, true, false);
        $m!("sage_attn_hd96_causal_f32acc", 96, true, true, false);
        $m!("sage_attn_hd96_full_f16acc_compact", 96, false, false, true);
        $m!(
            "sage_attn_hd96_causal_f16acc_compact",
            96,
            true,
            false,
            true
        );
        $m!("sage_attn_hd96_full_f32acc_compact", 96, false, true, true);
        $m!("sage_attn_hd96_causal_f32acc_compact", 96, true, true, true);
        $m!("sage_attn_hd128_full_f16acc", 128, false, false, false);
        $m!("sage_attn_hd128_causal_f16acc", 128, true, false, false);
        $m!(
            "sage_attn_hd128_full_f16acc_compact",
            128,
            false,
            false,
            true
        );
        $m!(
            "sage_attn_hd128_causal_f16acc_compact",
            128,
            true,
            false,
            true
        );
        $m!("sage_attn_hd128_full_f32acc", 128, false, true, false);
        $m!("sage_attn_hd128_causal_f32acc", 128, true, true, false);
        $m!("sage_attn_hd256_full_f32acc", 256, false, true, false);
        $m!("sage_attn_hd256_causal_f32acc", 256, true, true, false);
    };
}

/// Calls `$m!(name, head_dim, causal)` once per entry of the portable 8-bit P·V kernel
/// (`attention_pv8/`, mma.sync u8·s8, sm_80+). The device crate stamps the entries from it and the
/// host builds its name table from it.
#[macro_export]
macro_rules! for_each_pv8_attention_variant {
    ($m:ident) => {
        $m!("sage_attn_pv8_hd64_full", 64, false);
        $m!("sage_attn_pv8_hd64_causal", 64, true);
        $m!("sage_attn_pv8_hd96_full", 96, false);
        $m!("sage_attn_pv8_hd96_causal", 96, true);
        $m!("sage_attn_pv8_hd128_full", 128, false);
        $m!("sage_attn_pv8_hd128_causal", 128, true);
        $m!("sage_attn_pv8_hd256_full", 256, false);
        $m!("sage_attn_pv8_hd256_causal", 256, true);
    };
}

/// Calls `$m!(name, head_dim, causal, f16_accum)` once per entry of the FP8 P·V kernel
/// (`attention_pv8/` with e4m3 P and Vᵀ, mma.sync m16n8k32 e4m3·e4m3, the sm_89 module: Ada and
/// Hopper). The device crate stamps the entries from it and the host builds its name table from it.
#[macro_export]
macro_rules! for_each_fp8_attention_variant {
    ($m:ident) => {
        $m!("sage_attn_fp8_hd64_full_f32acc", 64, false, false);
        $m!("sage_attn_fp8_hd64_causal_f32acc", 64, true, false);
        $m!("sage_attn_fp8_hd64_full_f16acc", 64, false, true);
        $m!("sage_attn_fp8_hd64_causal_f16acc", 64, true, true);
        $m!("sage_attn_fp8_hd96_full_f32acc", 96, false, false);
        $m!("sage_attn_fp8_hd96_causal_f32acc", 96, true, false);
        $m!("sage_attn_fp8_hd96_full_f16acc", 96, false, true);
        $m!("sage_attn_fp8_hd96_causal_f16acc", 96, true, true);
        $m!("sage_attn_fp8_hd128_full_f32acc", 128, false, false);
        $m!("sage_attn_fp8_hd128_causal_f32acc", 128, true, false);
        $m!("sage_attn_fp8_hd128_full_f16acc", 128, false, true);
        $m!("sage_attn_fp8_hd128_causal_f16acc", 128, true, true);
        $m!("sage_attn_fp8_hd256_full_f32acc", 256, false, false);
        $m!("sage_attn_fp8_hd256_causal_f32acc", 256, true, false);
        $m!("sage_attn_fp8_hd256_full_f16acc", 256, false, true);
        $m!("sage_attn_fp8_hd256_causal_f16acc", 256, true, true);
    };
}

/// The jobs of the fused preparation kernel (`sage_prepare`, `kernels-gpu/src/prepare.rs`). One
/// launch runs any subset of them: CTAs `ends[j-1]..ends[j]` of the grid run job `j`, in this
/// order. The order keeps what a later launch reads again in L2: the first launch reads K last
/// (its segment sums), and the K quantization of the last launch starts from K's end (its CTAs
/// run in reverse), so its first blocks are the most recently read ones.
pub mod prep_job {
    /// Q: one `Q_BLOCK` block of rows, one scale per row.
    pub const QUANT_Q: usize = 0;
    /// V to a contiguous f16 copy (bf16 converted, rows zero-padded).
    pub const CONVERT_V: usize = 1;
    /// 8-bit V: sum, max and min per channel over one `MEAN_SEGMENT_ROWS` segment.
    pub const V8_STATS: usize = 2;
    /// K: sum per channel over one segment (the first step of the K mean).
    pub const SUM_K: usize = 3;
    /// K mean from the segment sums (only when the consumers do not fold it).
    pub const K_MEAN: usize = 4;
    /// 8-bit V: mean and scales from the segment statistics (only when not folded).
    pub const V8_FINALIZE: usize = 5;
    /// K: one `K_BLOCK` quantization block (minus the mean when smoothing); CTAs in reverse.
    pub const QUANT_K: usize = 6;
    /// 8-bit V: one 64-key tile of the INT8 Vᵀ.
    pub const V8_QUANT: usize = 7;
    /// The LSE bias `sm_scale · q·mean(K)` of one block of query rows.
    pub const LSE_BIAS: usize = 8;
    /// Number of jobs.
    pub const COUNT: usize = 9;
}

/// Whether a CTA of `threads` threads can run preparation job `job` at `head_dim` (the host
/// checks every launch against it): the segment jobs map one thread to each (16-byte channel
/// chunk, sequence lane); a quantization CTA holds its whole block in registers
/// (`Q_CHUNKS_PER_THREAD` / `K_CHUNKS_PER_THREAD` chunks per thread, at most
/// [`PREP_MAX_THREADS`]) and every thread keeps one column chunk (`threads` a multiple of
/// `head_dim / 8`); the others loop over whatever they get. A last warp that is not whole is
/// allowed (its block-maximum butterfly names only the warp's threads) except for the 8-bit V's
/// statistics, whose shuffles span whole warps (the 8-bit P·V runs only for head_dims that are
/// multiples of 16, where `prep_threads` is whole warps).
pub const fn prep_threads_ok(job: usize, threads: usize, head_dim: usize) -> bool {
    let chunks = head_dim / 8;
    if threads == 0 || threads > PREP_MAX_THREADS {
        return false;
    }
    match job {
        prep_job::SUM_K => threads == chunks * MEAN_SEQ_LANES,
        prep_job::V8_STATS => threads == chunks * MEAN_SEQ_LANES && threads.is_multiple_of(32),
        prep_job::QUANT_Q => quant_threads_ok(threads, chunks, Q_BLOCK, Q_CHUNKS_PER_THREAD),
        prep_job::QUANT_K => quant_threads_ok(threads, chunks, K_BLOCK, K_CHUNKS_PER_THREAD),
        prep_job::V8_QUANT => threads * V8_CHUNKS_PER_THREAD >= V8_TILE * chunks,
        _ => true,
    }
}

/// See [`prep_threads_ok`]: a quantization CTA of `threads` threads, `per_thread` chunks each,
/// for a block of `rows` rows of `chunks` 16-byte chunks.
const fn quant_threads_ok(threads: usize, chunks: usize, rows: usize, per_thread: usize) -> bool {
    chunks > 0 && threads.is_multiple_of(chunks) && threads * per_thread >= rows * chunks
}

/// Bytes of the warp-maximum slots of a quantization CTA (one f32 per warp, at most
/// `PREP_MAX_THREADS / 32` = 16 warps); the K mean it subtracts follows them in shared memory.
pub const QUANT_MAX_SLOTS_BYTES: usize = 4 * PREP_MAX_THREADS.div_ceil(32);

/// Dynamic shared memory one CTA of preparation job `job` uses (see [`prep_job`]).
pub const fn prep_smem_bytes(job: usize, head_dim: usize, out_head_dim: usize) -> usize {
    match job {
        prep_job::SUM_K => MEAN_SEQ_LANES * head_dim * 4,
        // One maximum per row of the block (Q's scales are per token).
        prep_job::QUANT_Q => 4 * Q_BLOCK,
        prep_job::QUANT_K => QUANT_MAX_SLOTS_BYTES + head_dim * 4,
        prep_job::LSE_BIAS => head_dim * 4,
        prep_job::V8_QUANT => 2 * out_head_dim * 4 + V8_TILE * (2 * head_dim + V8_TILE_ROW_PAD),
        _ => 0,
    }
}

/// Most threads of a `sage_prepare_k_head` CTA (the one-CTA-per-head K preparation,
/// docs/perf-notes.md, "Preparation v6"): [`k_head_groups`] groups of [`prep_threads`] threads.
/// The entry is bounded `.maxntid K_HEAD_MAX_THREADS, .minnctapersm 1` (build.rs), so ptxas caps
/// it at 65536 / 1024 = 64 registers: one CTA per SM. 1024 threads (4 groups at d = 128, against 3
/// at 768: the segments and blocks of a 1K or 2K head spread evenly) fit with 62 (sm_80/86/89) /
/// 64 (sm_90) registers and no spill once the phase-3 group and the segment count go through
/// opaque moves (`quant::k_head`).
pub const K_HEAD_MAX_THREADS: usize = 1024;
/// Most groups of a `sage_prepare_k_head` CTA: each group syncs on its own named barrier
/// (`bar.sync 1 + group, prep_threads`), and a CTA has 16 (0 is the whole CTA's).
pub const K_HEAD_MAX_GROUPS: usize = 8;
/// Longest K that the one-CTA-per-head preparation takes (`plan_prepare`'s choice): a head's K
/// (at most 2048 × 256 × 2 = 1 MiB, 512 KiB at d = 128) is read twice by one CTA, the second
/// time from L2, and its segment sums (8 segments) stay in shared memory.
pub const K_HEAD_MAX_KV_LEN: usize = 2048;

/// Whether the one-CTA-per-head K preparation runs at `head_dim`: its groups must be whole warps
/// (named barriers count warps), i.e. `head_dim / 8` even.
pub const fn k_head_supported(head_dim: usize) -> bool {
    is_supported_head_dim(head_dim) && head_dim.is_multiple_of(2 * HEAD_DIM_STEP)
}

/// Groups of a `sage_prepare_k_head` CTA at `head_dim` (each one the segment / quantization
/// geometry of [`prep_threads`] threads): 8 at d = 64, 5 at d = 96, 4 at d = 128, 2 at d = 256.
pub const fn k_head_groups(head_dim: usize) -> usize {
    let g = K_HEAD_MAX_THREADS / prep_threads(head_dim);
    if g > K_HEAD_MAX_GROUPS {
        K_HEAD_MAX_GROUPS
    } else {
        g
    }
}

/// Threads of a `sage_prepare_k_head` CTA at `head_dim`.
pub const fn k_head_threads(head_dim: usize) -> usize {
    k_head_groups(head_dim) * prep_threads(head_dim)
}

/// Bytes of one group's shared memory in a `sage_prepare_k_head` CTA: the segment sums' tree
/// (`MEAN_SEQ_LANES × head_dim` f32), reused for the block maximum's warp slots.
pub const fn k_head_group_smem_bytes(head_dim: usize) -> usize {
    let tree = MEAN_SEQ_LANES * head_dim * 4;
    if tree > QUANT_MAX_SLOTS_BYTES {
        tree
    } else {
        QUANT_MAX_SLOTS_BYTES
    }
}

/// Dynamic shared memory of a `sage_prepare_k_head` CTA: K's mean (`head_dim` f32), the head's
/// segment sums (`segments × head_dim` f32), then one region per group
/// ([`k_head_group_smem_bytes`]). At most 25 KiB (d = 256, 2048 keys); 28.5 KiB at d = 128.
pub const fn k_head_smem_bytes(head_dim: usize, kv_len: usize) -> usize {
    let segments = kv_len.div_ceil(MEAN_SEGMENT_ROWS);
    (1 + segments) * head_dim * 4 + k_head_groups(head_dim) * k_head_group_smem_bytes(head_dim)
}

/// Entry names of the smoothing / quantization / conversion kernels and the primitive tests.
pub mod names {
    /// The fused preparation kernel: any subset of the [`prep_job`](super::prep_job) jobs per
    /// launch (K mean, Q/K quantization, LSE bias, V to f16, 8-bit V).
    pub const PREPARE: &str = "sage_prepare";
    /// K's preparation with smoothing (segment sums, mean, INT8 K and scales) for short K, one
    /// CTA per (batch, kv head): see `config::K_HEAD_MAX_KV_LEN`.
    pub const PREPARE_K_HEAD: &str = "sage_prepare_k_head";
    /// The `SUM_K` job alone, at a tighter register bound than [`PREPARE`] (more CTAs per SM).
    pub const PREPARE_SUM_K: &str = "sage_prepare_sum_k";
    /// The `QUANT_K` job alone, likewise.
    pub const PREPARE_QUANT_K: &str = "sage_prepare_quant_k";
    /// The 8-bit preparation's statistics (`V8_STATS`, `SUM_K`), likewise.
    pub const PREPARE_STATS8: &str = "sage_prepare_stats8";
    /// The 8-bit preparation's quantization (`QUANT_K`, `V8_QUANT`), likewise.
    pub const PREPARE_QUANT8: &str = "sage_prepare_quant8";
    /// Copies the first columns of a padded output into the caller's output.
    pub const COPY_COLUMNS: &str = "sage_copy_columns";
    /// Writes a call's TMA descriptors into its scratch (from kernel parameters: graph-safe).
    pub const STORE_TMA_MAPS: &str = "sage_store_tma_maps";
    /// Single-tile mma tests (one per mma shape).
    pub const TEST_MMA_S8: &str = "sage_test_mma_s8";
    /// See [`TEST_MMA_S8`].
    pub const TEST_MMA_F16_F32: &str = "sage_test_mma_f16_f32";
    /// See [`TEST_MMA_S8`].
    pub const TEST_MMA_F16_F16: &str = "sage_test_mma_f16_f16";
    /// Hopper module smoke kernel.
    pub const HOPPER_SMOKE: &str = "sage_hopper_smoke";
}
