//! Online softmax in base 2 over one warp's 16 rows of a score tile: a wgmma m64nN tile (the
//! sm_90a kernel) or 16 rows of mma.sync m16n8 tiles (the portable 8-bit P·V kernel). The
//! accumulator layout is the mma.sync m16n8 C layout per 8-key n-tile (lane holds rows g and g+8,
//! index `h`), so this is `attention/softmax.rs` with one m-tile, kept arithmetic-for-arithmetic
//! identical (the portable kernel's results are the reference for this one), plus the per-tile
//! P scaling of the 8-bit P·V (`PER_TILE`), which both 8-bit kernels share.
//!
//! `cfg(test)` on the sm_90a-only items is for the host test that compiles this file
//! (tests/cpu_softmax16_warp.rs); the device crate is never built with it.

use crate::acc_layout::{acc_col, acc_row};
use crate::ptx;
use crate::reduce::acc_row_max;
use crate::unroll::unroll;

/// Which scores of a tile a warp may see: key `j` of row `i` iff `j < kv_len` and, causal,
/// `j <= i + diag` (bottom-right alignment).
pub(crate) struct TileBounds {
    /// First key of the tile.
    pub key0: u32,
    /// The warp's first query row (within the head).
    pub row0: u32,
    pub lane: u32,
    pub kv_len: u32,
    /// `kv_len - qo_len`.
    pub diag: i32,
}

/// How far (log2 units) a tile's row max may pass the 8-bit P·V's reference max before the
/// reference moves ([`OnlineSoftmax::advance`]): factors up to 2^8 cannot overflow the f32 output
/// (each tile adds at most its u8 product, below 2^23, times 2^8).
pub(crate) const LAZY_MAX_SLACK: f32 = 8.0;

/// The largest lane-partial row sum of one tile that [`OnlineSoftmax::probabilities_against_max`]
/// accepts: every probability is then at most 2^14, which f16 holds (to 65504) with its full
/// relative precision, and the f32 output and sums grow by at most that factor per tile between
/// moves of the max (2^14 · 2^17 keys stays far inside f32).
#[cfg(any(feature = "hopper", test))]
pub(crate) const FAST_SUM_LIMIT: f32 = 16384.0;

/// Writes `2^arg(x, n-tile)` of row `h`'s scores `x` in `src` (accumulator layout, `NK` n-tiles of
/// 8 keys) to the same places of `out` and returns their sum, in the order the row sums have
/// always been taken. (The portable f16 kernel's softmax, `attention::softmax`, uses it per
/// m-tile.)
#[inline(always)]
pub(crate) fn exponentiate_row<T: Copy, const NK: usize>(
    src: &[[T; 4]; NK],
    out: &mut [[f32; 4]; NK],
    h: usize,
    arg: impl Fn(T, usize) -> f32,
) -> f32 {
    let mut row_sum = 0.0f32;
    unroll::<NK>(
        #[inline(always)]
        |nt| {
            unroll::<2>(
                #[inline(always)]
                |e| {
                    let v = ptx::ex2(arg(src[nt][2 * h + e], nt));
                    out[nt][2 * h + e] = v;
                    row_sum += v;
                },
            );
        },
    );
    row_sum
}

/// A row's dequantization factors in a key tile, one per 64-key half: `q_scale · k_scales[half]`.
#[inline(always)]
fn row_scales(q_scale: f32, k_scales: [f32; 2]) -> [f32; 2] {
    [q_scale * k_scales[0], q_scale * k_scales[1]]
}

/// Running max (log2 units) and lane-partial running sum of the two rows a lane holds.
pub(crate) struct OnlineSoftmax {
    pub max: [f32; 2],
    pub sum: [f32; 2],
}

impl OnlineSoftmax {
    #[inline(always)]
    pub fn new() -> Self {
        OnlineSoftmax {
            max: [f32::NEG_INFINITY; 2],
            sum: [0.0; 2],
        }
    }

    /// Row `h`'s step to a new running max from its lane's part of the tile max: reduces the tile
    /// max over the quad, moves `max`, sets `rescale[h]` (what the previous output is worth now)
    /// and returns the quad's tile max and the base the probabilities are taken against.
    ///
    /// With `PER_TILE` the running max is only a reference point: each tile's probabilities are
    /// taken against the tile's own max, and what they are worth against the reference goes into
    /// the f32 fold. So the reference moves only when a tile max passes it by more than
    /// [`LAZY_MAX_SLACK`]: most tiles then leave every row of the warp unchanged and the output's
    /// rescale is skipped (the f32 output and sums grow by at most 2^slack in between).
    #[inline(always)]
    fn advance<const PER_TILE: bool>(
        &mut self,
        h: usize,
        lane_max: f32,
        rescale: &mut [f32; 2],
    ) -> (f32, f32) {
        let mut tile_max = lane_max.max(ptx::shfl_xor_f32(lane_max, 1));
        tile_max = tile_max.max(ptx::shfl_xor_f32(tile_max, 2));
        let new_max = if PER_TILE && tile_max <= self.max[h] + LAZY_MAX_SLACK {
            self.max[h]
        } else {
            self.max[h].max(tile_max)
        };
        // A row that has seen only masked keys keeps max = -inf; subtract 0 instead so that
        // 2^(-inf - 0) = 0 rather than NaN.
        let base = if new_max == f32::NEG_INFINITY {
            0.0
        } else {
            new_max
        };
        rescale[h] = ptx::ex2(self.max[h] - base);
        self.max[h] = new_max;
        (tile_max, base)
    }

    /// Folds one key tile of scores `s` (8 n-tiles of 8 keys) into the state: replaces `s` by
    /// `2^(s - max + p_scale_log2)` (`p_scale_log2`: the probabilities' unit, 0 for P in [0, 1];
    /// the FP8 P·V takes `log2 448`, the e4m3 scale, which saves a multiply per probability; the
    /// row sums are in the same unit) and returns the factor each row's previous output must be
    /// scaled by, and the tile factor (1). With `PER_TILE` (the 8-bit P·V), `s` becomes `2^(s - tile max)` instead,
    /// which puts each row's largest probability of the tile at 1, and the tile factor is
    /// `2^(tile max - max)`, what those probabilities are worth against the running maximum.
    #[inline(always)]
    pub fn update<const PER_TILE: bool, const NK: usize>(
        &mut self,
        s: &mut [[f32; 4]; NK],
        p_scale_log2: f32,
    ) -> ([f32; 2], [f32; 2]) {
        let mut rescale = [1.0f32; 2];
        let mut tile_factor = [1.0f32; 2];
        unroll::<2>(
            #[inline(always)]
            |h| {
                // As a tree (not a chain from -inf); the outer max keeps the chain's -inf for a
                // lane whose scores of the row are all NaN.
                let tile_max = f32::NEG_INFINITY.max(acc_row_max::<NK, NK>(s, h, 0));
                let (tile_max, base) = self.advance::<PER_TILE>(h, tile_max, &mut rescale);
                let p_base = if PER_TILE {
                    tile_factor[h] = ptx::ex2(tile_max - base);
                    if tile_max == f32::NEG_INFINITY {
                        0.0
                    } else {
                        tile_max
                    }
                } else {
                    base
                } - p_scale_log2;
                // In place: the scores are read from a copy (registers, no cost) and overwritten.
                let row_sum = exponentiate_row(&{ *s }, s, h, |x, _| x - p_base);
                self.sum[h] = self.sum[h] * rescale[h] + row_sum * tile_factor[h];
            },
        );
        (rescale, tile_factor)
    }

    /// [`Self::update`] for a tile without masked scores, taking them unscaled: `s` holds the integer
    /// scores as f32 (exact), `scales[h]` the dequantization factors (>= 0) of row `h`'s two 64-key
    /// halves (n-tiles `8k..8k+8` use `scales[h][k]`; a 64-key tile uses `scales[h][0]` only). The
    /// row max is taken on the unscaled scores and scaled once, and each probability is `2^(s·scale - max)` with one
    /// fused multiply-add, saving a multiply and a subtraction per score (the result differs from
    /// [`Self::update`] by the rounding of that product only).
    #[inline(always)]
    pub fn update_unscaled<const PER_TILE: bool, const NK: usize>(
        &mut self,
        s: &mut [[f32; 4]; NK],
        scales: [[f32; 2]; 2],
        p_scale_log2: f32,
    ) -> ([f32; 2], [f32; 2]) {
        const { assert!(NK == 8 || NK == 16) };
        let mut rescale = [1.0f32; 2];
        let mut tile_factor = [1.0f32; 2];
        unroll::<2>(
            #[inline(always)]
            |h| {
                // The max of each half on the unscaled scores, scaled once (scales are >= 0).
                let mut tile_max = f32::NEG_INFINITY;
                unroll::<2>(
                    #[inline(always)]
                    |half| {
                        if 8 * half < NK {
                            // A tree; where all its scores are NaN it gives NaN, which this
                            // max from -inf drops as the chain's -inf would be.
                            let raw_max = acc_row_max::<8, NK>(s, h, 8 * half);
                            tile_max = tile_max.max(raw_max * scales[h][half]);
                        }
                    },
                );
                // A NaN scale (non-finite input) leaves the max alone; the probabilities are NaN.
                let (tile_max, base) = self.advance::<PER_TILE>(h, tile_max, &mut rescale);
                // Unmasked: every score is finite (or NaN), so the tile max is too.
                let p_base = if PER_TILE {
                    tile_factor[h] = ptx::ex2(tile_max - base);
                    tile_max
                } else {
                    base
                } - p_scale_log2;
                let row_sum = exponentiate_row(&{ *s }, s, h, |x, nt| {
                    ptx::fma(x, scales[h][nt / 8], -p_base)
                });
                self.sum[h] = self.sum[h] * rescale[h] + row_sum * tile_factor[h];
            },
        );
        (rescale, tile_factor)
    }

    /// The f16 P·V's probabilities of an unmasked tile against the running max as it stands,
    /// without taking the tile's max first: `2^(s·scale - max)` for every score, and the lane's
    /// part of each row's sum. The last value says whether those sums stay at or below
    /// [`FAST_SUM_LIMIT`] (false also for NaN or an infinite probability, and for a row without a
    /// max yet); when it holds for the whole warpgroup, every probability is at most that limit
    /// — inside f16 with its full relative precision — so the tile needs no new max and the
    /// output no rescale, and the caller adds the sums with [`Self::add_sums`]. Otherwise the
    /// caller discards the result and takes the tile through [`Self::update_tile`] from its
    /// scores again. Skipping the max takes its reduction (a compare per score and two shuffles
    /// per row) off the path from the scores to the first exponential.
    #[cfg(any(feature = "hopper", test))]
    #[inline(always)]
    pub fn probabilities_against_max<const NK: usize>(
        &self,
        s_int: &[[i32; 4]; NK],
        q_scale: [f32; 2],
        k_scales: [f32; 2],
    ) -> ([[f32; 4]; NK], [f32; 2], bool) {
        let mut p = [[0.0f32; 4]; NK];
        let mut sums = [0.0f32; 2];
        let mut within = true;
        unroll::<2>(
            #[inline(always)]
            |h| {
                let (base, scales) = (self.max[h], row_scales(q_scale[h], k_scales));
                sums[h] = exponentiate_row(s_int, &mut p, h, |x, nt| {
                    ptx::fma(x as f32, scales[nt / 8], -base)
                });
                // Against a max of -inf every probability is +inf or NaN: the sum fails too.
                within &= sums[h] <= FAST_SUM_LIMIT;
            },
        );
        (p, sums, within)
    }

    /// Adds a tile's lane-partial row sums taken against the unchanged max
    /// ([`Self::probabilities_against_max`]).
    #[cfg(any(feature = "hopper", test))]
    #[inline(always)]
    pub fn add_sums(&mut self, sums: [f32; 2]) {
        self.sum[0] += sums[0];
        self.sum[1] += sums[1];
    }

    /// A tile of integer scores (accumulator layout, `NK` n-tiles of 8 keys) → probabilities,
    /// with the previous output's rescale factor and the tile factor ([`Self::update`]). Row `h`'s
    /// scores in the tile's 64-key half `k` are worth `q_scale[h] · k_scales[k]`. Unmasked tiles
    /// take the scale inside the exponent ([`Self::update_unscaled`]); with `MASK` the scores are
    /// dequantized and those `bounds` hides set to −∞ first.
    #[inline(always)]
    pub fn update_tile<
        const PER_TILE: bool,
        const MASK: bool,
        const CAUSAL: bool,
        const NK: usize,
    >(
        &mut self,
        s_int: &[[i32; 4]; NK],
        q_scale: [f32; 2],
        k_scales: [f32; 2],
        bounds: &TileBounds,
        p_scale_log2: f32,
    ) -> ([[f32; 4]; NK], [f32; 2], [f32; 2]) {
        let scales = [
            row_scales(q_scale[0], k_scales),
            row_scales(q_scale[1], k_scales),
        ];
        let mut s = [[0.0f32; 4]; NK];
        if !MASK {
            unroll::<NK>(
                #[inline(always)]
                |j| {
                    unroll::<4>(
                        #[inline(always)]
                        |e| s[j][e] = s_int[j][e] as f32,
                    );
                },
            );
            let (rescale, factor) =
                self.update_unscaled::<PER_TILE, NK>(&mut s, scales, p_scale_log2);
            return (s, rescale, factor);
        }
        unroll::<NK>(
            #[inline(always)]
            |j| {
                unroll::<4>(
                    #[inline(always)]
                    |e| {
                        s[j][e] = s_int[j][e] as f32 * scales[e >> 1][j / 8];
                        let key = bounds.key0 + 8 * j as u32 + acc_col(bounds.lane, e);
                        let row = bounds.row0 + acc_row(bounds.lane, e);
                        let mut visible = key < bounds.kv_len;
                        if CAUSAL {
                            visible &= key as i32 <= row as i32 + bounds.diag;
                        }
                        if !visible {
                            s[j][e] = f32::NEG_INFINITY;
                        }
                    },
                );
            },
        );
        let (rescale, factor) = self.update::<PER_TILE, NK>(&mut s, p_scale_log2);
        (s, rescale, factor)
    }

    /// The full sum of row `h` (reduces the quad's partial sums).
    #[inline(always)]
    pub fn row_sum(&self, h: usize) -> f32 {
        let mut l = self.sum[h];
        l += ptx::shfl_xor_f32(l, 1);
        l += ptx::shfl_xor_f32(l, 2);
        l
    }
}
