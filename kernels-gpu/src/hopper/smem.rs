//! Shared-memory tile layouts that wgmma reads, their matrix descriptors, and the wgmma issue
//! helpers for the two products of the kernel.
//!
//! * **K-major INT8 tiles** (Q and K: one token per row, `HD` bytes of head dim per row). With
//!   `HD = 128` a row is 128 bytes and the tile uses the 128-byte swizzle: the 16-byte chunk `c` of
//!   row `r` is stored at chunk `c ^ (r % 8)`; 8 rows (1024 bytes) form one swizzle atom, so the
//!   descriptor's stride byte offset (between 8-row groups) is 1024. With `HD = 64` a row is 64
//!   bytes and the tile uses the 64-byte swizzle: chunk `c` of row `r` at `c ^ ((r / 2) % 4)`,
//!   atoms of 8 rows = 512 bytes. With `HD = 256` a row is two 128-byte halves, stored as two
//!   64-row column blocks of the `HD = 128` layout one after the other (chunks `8b..8b+8` of row
//!   `r` in block b): the 128-byte swizzle spans one row of a block, so this is the widest row it
//!   takes. With `HD = 96` the tile is the `HD = 128` one with only the first 6 chunks of each row
//!   written (rows 128 bytes apart, `config::sm90_kmajor_row_bytes`) and 3 k-steps issued. A k-step of 32 bytes advances the descriptor's start address by 32 bytes, and by a
//!   block at every fourth k-step of `HD = 256` (the hardware applies the XOR to the final address
//!   bits, which is why the tiles must sit at 1024-byte aligned addresses).
//! * **N-major f16 V tiles** (one key per row, head dim contiguous: for P·V the key is the k
//!   dimension and the head dim is n, so the layout is MN-major, `imm-trans-b = 1`). The tile is
//!   split into `HD / 64` column blocks of 64 head-dim values; each block is 64 key rows × 128
//!   bytes with the 128-byte swizzle. Descriptor: leading byte offset = distance between column
//!   blocks (64·128 bytes), stride byte offset = distance between 8-key groups (1024 bytes). A
//!   k-step of 16 keys advances the start address by 2048 bytes. A 128-key tile (the wide f16
//!   d = 128 CTAs) has column blocks of 128 key rows (16 KiB apart), the same k-step. With
//!   `HD = 96` (n = 96 is not a whole number of 64-channel blocks, and CUTLASS picks the 64-byte
//!   swizzle for such an N-major operand) the tile is three column blocks of 32 channels, each
//!   64 key rows × 64 bytes with the 64-byte swizzle (chunk `c` of row `r` at
//!   `c ^ ((r / 2) % 4)`, as a d = 64 K tile): leading byte offset 64·64 bytes, stride byte
//!   offset 512 (8 keys × 64 bytes), 1024 bytes per k-step.

use super::config::SM90_CTA_K;
use crate::ptx;
use crate::unroll::unroll;

/// Bytes of one column block of a K-major `HD = 256` tile (64 rows of 128 bytes).
pub const KMAJOR_BLOCK_BYTES: u32 = 64 * 128;

/// Byte offset of 16-byte chunk `c` of row `r` in a K-major INT8 tile with `HD`-byte rows (with
/// `HD = 256`, a tile of 64 rows).
#[inline(always)]
pub const fn kmajor_offset<const HD: usize>(r: u32, c: u32) -> u32 {
    if HD == 256 {
        (c >> 3) * KMAJOR_BLOCK_BYTES + r * 128 + (((c & 7) ^ (r & 7)) << 4)
    } else if HD == 128 || HD == 96 {
        r * 128 + ((c ^ (r & 7)) << 4)
    } else {
        r * 64 + ((c ^ ((r >> 1) & 3)) << 4)
    }
}

/// Bytes between the column blocks of a V tile of `keys` keys (64, or 128 for the f16 P·V's wide
/// d = 128 tiles: each column block is then 128 key rows).
pub const fn v_block_bytes(keys: u32) -> u32 {
    keys * 128
}

/// Bytes between the 32-channel column blocks of a `HD = 96` V tile (64-byte swizzle).
pub const V96_BLOCK_BYTES: u32 = (SM90_CTA_K * 64) as u32;

/// Byte offset of 16-byte chunk `c` (head-dim values `8c..8c+8`) of key row `r` in a V tile of
/// `keys` keys (d = 96: [`v96_offset`]).
#[inline(always)]
pub const fn v_offset(r: u32, c: u32, keys: u32) -> u32 {
    (c >> 3) * v_block_bytes(keys) + r * 128 + (((c & 7) ^ (r & 7)) << 4)
}

/// [`v_offset`] of a `HD = 96` V tile (three 32-channel blocks, 64-byte swizzle). A function of
/// its own rather than a branch in `v_offset`: making that generic changed the d = 64 kernel's
/// copy code (LLVM inlines and folds it differently).
#[inline(always)]
pub const fn v96_offset(r: u32, c: u32) -> u32 {
    (c >> 2) * V96_BLOCK_BYTES + r * 64 + (((c & 3) ^ ((r >> 1) & 3)) << 4)
}

/// `(x & 0x3FFFF) >> 4`, the descriptor encoding of addresses and offsets.
#[inline(always)]
const fn enc(x: u32) -> u64 {
    ((x & 0x3FFFF) >> 4) as u64
}

/// A wgmma shared-memory matrix descriptor. `swizzle`: 1 = 128-byte, 2 = 64-byte.
#[inline(always)]
pub const fn descriptor(addr: u32, leading: u32, stride: u32, swizzle: u64) -> u64 {
    enc(addr) | (enc(leading) << 16) | (enc(stride) << 32) | (swizzle << 62)
}

/// Descriptor of a K-major INT8 tile of `HD`-byte rows at `addr` (1024-byte aligned).
#[inline(always)]
pub const fn kmajor_desc<const HD: usize>(addr: u32) -> u64 {
    if HD > 64 {
        descriptor(addr, 16, 1024, 1)
    } else {
        descriptor(addr, 16, 512, 2)
    }
}

/// Descriptor of an N-major f16 V tile of `keys` keys at `addr` (1024-byte aligned; d = 96:
/// [`v96_desc`]).
#[inline(always)]
pub const fn v_desc(addr: u32, keys: u32) -> u64 {
    descriptor(addr, v_block_bytes(keys), 1024, 1)
}

/// Descriptor of a `HD = 96` V tile at `addr` (512-byte aligned): three 32-channel column blocks
/// ([`v96_offset`]), 64-byte swizzle.
#[inline(always)]
pub const fn v96_desc(addr: u32) -> u64 {
    descriptor(addr, V96_BLOCK_BYTES, 512, 2)
}

/// The descriptor of an f16 V tile of head dim `HD` and `keys` keys at `addr`: [`v96_desc`] at
/// d = 96 (64 keys), else [`v_desc`] (chosen by `if const`, so each head dim's code is exactly its
/// own).
#[inline(always)]
pub fn v_tile_desc<const HD: usize>(addr: u32, keys: u32) -> u64 {
    if const { HD == 96 } {
        v96_desc(addr)
    } else {
        v_desc(addr, keys)
    }
}

/// The descriptors of the `KS` k-steps of `Q·Kᵀ` (Q's, then K's), computed and pinned before the
/// issue sequence: ptxas serializes wgmmas (C7513) when a non-wgmma instruction defines one of their
/// inputs between the `wgmma.fence` and the wait.
#[inline(always)]
pub fn qk_descs<const KS: usize>(q_desc: u64, k_desc: u64) -> [[u64; KS]; 2] {
    let mut d = [[0u64; KS]; 2];
    unroll::<KS>(
        #[inline(always)]
        |ks| {
            // 32 bytes per k-step = 2 in descriptor units (16 bytes); HD = 256 (KS = 8) moves to
            // the second column block after 4 k-steps.
            let step = if KS == 8 {
                (ks / 4) as u64 * (KMAJOR_BLOCK_BYTES / 16) as u64 + 2 * (ks % 4) as u64
            } else {
                2 * ks as u64
            };
            d[0][ks] = q_desc + step;
            d[1][ks] = k_desc + step;
            ptx::pin_u64(&mut d[0][ks]);
            ptx::pin_u64(&mut d[1][ks]);
        },
    );
    d
}

/// The descriptors of the `steps` k-steps (32 keys each; 2 for a 64-key tile, 4 for 128) of the
/// 8-bit `P·V` on a Vᵀ tile, pinned (see [`qk_descs`]). The tile is stored as 64-key sub-tiles of
/// `HD` rows (channels) × 64 bytes, K-major; `v_desc` describes the first.
#[inline(always)]
pub fn pv8_descs<const HD: usize>(v_desc: u64, steps: usize) -> [u64; 4] {
    let mut d = [0u64; 4];
    unroll::<4>(
        #[inline(always)]
        |kk| {
            if kk < steps {
                // 32 keys = 32 bytes = 2 descriptor units; a sub-tile is HD·64 bytes.
                d[kk] = v_desc + (kk / 2 * HD * 64 / 16) as u64 + 2 * (kk % 2) as u64;
                ptx::pin_u64(&mut d[kk]);
            }
        },
    );
    d
}

/// The descriptors of the `PK` k-steps (16 keys each: 4 for a 64-key tile, 8 for 128) of `P·V`,
/// pinned (see [`qk_descs`]): `[0]` for the first 128 head-dim columns (all of them when
/// `NT <= 16`), `[1]` for columns 128..256 (`NT = 32`, 64-key tiles: two column blocks further).
#[inline(always)]
pub fn pv_descs<const NT: usize, const PK: usize>(v_desc: u64) -> [[u64; PK]; 2] {
    const { assert!(PK == 4 || PK == 8) };
    let mut d = [[0u64; PK]; 2];
    unroll::<PK>(
        #[inline(always)]
        |kk| {
            // 16 keys × 128 bytes = 2048 bytes = 128 descriptor units (NT = 12, the 64-byte rows
            // of d = 96: 1024 bytes = 64 units).
            let step = if NT == 12 { 64 } else { 128 };
            d[0][kk] = v_desc + step * kk as u64;
            ptx::pin_u64(&mut d[0][kk]);
            if NT == 32 {
                d[1][kk] = d[0][kk] + (2 * v_block_bytes(SM90_CTA_K as u32) / 16) as u64;
                ptx::pin_u64(&mut d[1][kk]);
            }
        },
    );
    d
}

/// Issues `S = Q·Kᵀ` for 64 query rows and 64 keys over `KS = HD/32` k-steps (no fence, commit or
/// wait) and returns the (in-flight) accumulator.
#[inline(always)]
pub fn issue_qk<const KS: usize>(d: &[[u64; KS]; 2]) -> [[i32; 4]; 8] {
    let mut s = ptx::wgmma_m64n64k32_s8_first(d[0][0], d[1][0]);
    unroll::<KS>(
        #[inline(always)]
        |ks| {
            if ks > 0 {
                ptx::wgmma_m64n64k32_s8(&mut s, d[0][ks], d[1][ks]);
            }
        },
    );
    s
}

/// [`issue_qk`] for a 128-key K tile stored as two consecutive 64-key ones (d = 64 and 128,
/// whose K-major rows continue linearly across them): one `m64n128k32` per k-step.
#[inline(always)]
pub fn issue_qk128<const KS: usize>(d: &[[u64; KS]; 2]) -> [[i32; 4]; 16] {
    let mut s = ptx::wgmma_m64n128k32_s8_first(d[0][0], d[1][0]);
    unroll::<KS>(
        #[inline(always)]
        |ks| {
            if ks > 0 {
                ptx::wgmma_m64n128k32_s8(&mut s, d[0][ks], d[1][ks]);
            }
        },
    );
    s
}

/// Issues `O += P·V` for 64 query rows and the keys of a V tile (`PK` k-steps of 16 keys; no
/// fence, commit or wait). `p[kk]` is the f16 A fragment of keys `16kk..16kk+16`. `NT = HD/8`;
/// d = 96 takes one n = 96 wgmma per k-step; d = 256 two n = 128 ones (n = 256 would need all
/// 128 output registers as operands of one asm statement, for the same tensor work).
#[inline(always)]
pub fn issue_pv<const NT: usize, const PK: usize>(
    o: &mut [[f32; 4]; NT],
    p: &[[u32; 4]; PK],
    d: &[[u64; PK]; 2],
) {
    const { assert!(NT == 8 || NT == 12 || NT == 16 || NT == 32) };
    unroll::<PK>(
        #[inline(always)]
        |kk| {
            if NT == 32 {
                let base = o as *mut [[f32; 4]; NT];
                // SAFETY: NT == 32: the two halves are disjoint 16-tile arrays inside `o`.
                let (lo, hi) = unsafe {
                    (
                        &mut *base.cast::<[[f32; 4]; 16]>(),
                        &mut *base.cast::<[f32; 4]>().add(16).cast::<[[f32; 4]; 16]>(),
                    )
                };
                ptx::wgmma_m64n128k16_f32_f16_rs(lo, p[kk], d[0][kk]);
                ptx::wgmma_m64n128k16_f32_f16_rs(hi, p[kk], d[1][kk]);
            } else if NT == 16 {
                // SAFETY: NT == 16, so this is the same array.
                let o16 = unsafe { &mut *(o as *mut [[f32; 4]; NT]).cast::<[[f32; 4]; 16]>() };
                ptx::wgmma_m64n128k16_f32_f16_rs(o16, p[kk], d[0][kk]);
            } else if NT == 12 {
                // SAFETY: NT == 12, so this is the same array.
                let o12 = unsafe { &mut *(o as *mut [[f32; 4]; NT]).cast::<[[f32; 4]; 12]>() };
                ptx::wgmma_m64n96k16_f32_f16_rs(o12, p[kk], d[0][kk]);
            } else {
                // SAFETY: NT == 8, so this is the same array.
                let o8 = unsafe { &mut *(o as *mut [[f32; 4]; NT]).cast::<[[f32; 4]; 8]>() };
                ptx::wgmma_m64n64k16_f32_f16_rs(o8, p[kk], d[0][kk]);
            }
        },
    );
}

/// Issues the 8-bit `P·V` for 64 query rows and the 64 keys of a Vᵀ tile (2 k-steps of 32 keys;
/// no fence, commit or wait) into a fresh s32 accumulator, returned (in flight). `p[kk]` is the u8
/// A fragment of k-step kk (see `attention::pack_probs_u8`), `d` from [`pv8_descs`]. `NT = HD/8`.
#[inline(always)]
pub fn issue_pv8<const NT: usize>(p: &[[u32; 4]; 4], d: &[u64; 4], steps: usize) -> [[i32; 4]; NT] {
    const { assert!(NT == 8 || NT == 16) };
    let mut acc = [[0i32; 4]; NT];
    if NT == 16 {
        // SAFETY: NT == 16, so this is the same array.
        let a16 = unsafe { &mut *(&mut acc as *mut [[i32; 4]; NT]).cast::<[[i32; 4]; 16]>() };
        *a16 = ptx::wgmma_m64n128k32_u8s8_rs_first(p[0], d[0]);
        unroll::<4>(
            #[inline(always)]
            |kk| {
                if kk > 0 && kk < steps {
                    ptx::wgmma_m64n128k32_u8s8_rs(a16, p[kk], d[kk]);
                }
            },
        );
    } else {
        // SAFETY: NT == 8, so this is the same array.
        let a8 = unsafe { &mut *(&mut acc as *mut [[i32; 4]; NT]).cast::<[[i32; 4]; 8]>() };
        *a8 = ptx::wgmma_m64n64k32_u8s8_rs_first(p[0], d[0]);
        unroll::<4>(
            #[inline(always)]
            |kk| {
                if kk > 0 && kk < steps {
                    ptx::wgmma_m64n64k32_u8s8_rs(a8, p[kk], d[kk]);
                }
            },
        );
    }
    acc
}

/// [`issue_pv8`] with e4m3 P and an e4m3 Vᵀ (the FP8 P·V): the same descriptors and k-steps,
/// `wgmma m64n{8NT}k32.f32.e4m3.e4m3` into a fresh f32 accumulator (the tile's product alone: the
/// two-level accumulation that keeps wgmma's FP8 sums short).
#[inline(always)]
pub fn issue_pv_fp8<const NT: usize>(
    p: &[[u32; 4]; 4],
    d: &[u64; 4],
    steps: usize,
) -> [[f32; 4]; NT] {
    const { assert!(NT == 8 || NT == 16) };
    let mut acc = [[0.0f32; 4]; NT];
    if NT == 16 {
        // SAFETY: NT == 16, so this is the same array.
        let a16 = unsafe { &mut *(&mut acc as *mut [[f32; 4]; NT]).cast::<[[f32; 4]; 16]>() };
        *a16 = ptx::wgmma_m64n128k32_e4m3_rs_first(p[0], d[0]);
        unroll::<4>(
            #[inline(always)]
            |kk| {
                if kk > 0 && kk < steps {
                    ptx::wgmma_m64n128k32_e4m3_rs(a16, p[kk], d[kk]);
                }
            },
        );
    } else {
        // SAFETY: NT == 8, so this is the same array.
        let a8 = unsafe { &mut *(&mut acc as *mut [[f32; 4]; NT]).cast::<[[f32; 4]; 8]>() };
        *a8 = ptx::wgmma_m64n64k32_e4m3_rs_first(p[0], d[0]);
        unroll::<4>(
            #[inline(always)]
            |kk| {
                if kk > 0 && kk < steps {
                    ptx::wgmma_m64n64k32_e4m3_rs(a8, p[kk], d[kk]);
                }
            },
        );
    }
    acc
}

/// Ordering point after a wgmma wait for an s32 accumulator: the scores of [`issue_qk`] or
/// [`issue_qk128`], the 8-bit product of [`issue_pv8`] (see [`ptx::pin_i32x4`]).
#[inline(always)]
pub fn pin_acc<const NT: usize>(a: &mut [[i32; 4]; NT]) {
    unroll::<NT>(
        #[inline(always)]
        |j| ptx::pin_i32x4(&mut a[j]),
    );
}

/// Ordering point after a wgmma wait for an f32 accumulator (see [`ptx::pin_f32x4`]).
#[inline(always)]
pub fn pin_o<const NT: usize>(o: &mut [[f32; 4]; NT]) {
    unroll::<NT>(
        #[inline(always)]
        |j| ptx::pin_f32x4(&mut o[j]),
    );
}
