//! Online softmax in base 2 over the accumulator layout: each lane holds rows g and g+8 of every
//! 16-row tile (index `h` = 0, 1); a row's 64 scores of a key tile are spread over the 4 lanes of a
//! quad, so row reductions need two butterfly shuffles (xor 1, xor 2). The running sum stays
//! lane-partial until the epilogue (FlashAttention-2's trick).

use crate::frag::{AccF32, AccS32};
use crate::ptx;
use crate::softmax16::exponentiate_row;
use crate::unroll::unroll;

/// Running max (log2 units) and lane-partial running sum of each row a lane holds.
pub(crate) struct OnlineSoftmax<const MT: usize> {
    pub max: [[f32; 2]; MT],
    pub sum: [[f32; 2]; MT],
}

impl<const MT: usize> OnlineSoftmax<MT> {
    #[inline(always)]
    pub fn new() -> Self {
        OnlineSoftmax {
            max: [[f32::NEG_INFINITY; 2]; MT],
            sum: [[0.0; 2]; MT],
        }
    }

    /// Folds one key tile of scores `s` (KT n-tiles of 8 keys) into the state: replaces `s` by
    /// `2^(s - max)` and returns the factor each row's previous output must be scaled by.
    /// `headroom` (log2 units, ≥ 0): a row whose tile max passes its running max moves it that
    /// far above the tile max instead of to it, so this tile's probabilities stay ≤ 2^-headroom
    /// and the next tiles, taken against that max without a reduction
    /// ([`Self::probabilities_against_max`]), have room to rise before they must be taken again
    /// (the softmax is the same against any reference).
    ///
    /// `shift` (log2 units, ≥ 0) keeps every probability of the tile at or below `2^-shift`: a
    /// row's max then moves once its tile max comes within `shift` of it, to `shift + headroom`
    /// above the tile max. It is how a CTA's second pass keeps the f16 accumulator's partial
    /// products finite for large V (`config::F16_ACC_OVERFLOW_SHIFT`). The stored max includes
    /// it, so the output (`Σ p·v / Σ p`) and the LSE (`max + log2 Σ p`) are those of the
    /// unshifted softmax.
    #[inline(always)]
    pub fn update<const KT: usize>(
        &mut self,
        s: &mut [[AccF32; KT]; MT],
        headroom: f32,
        shift: f32,
    ) -> [[f32; 2]; MT] {
        let mut rescale = [[1.0f32; 2]; MT];
        unroll::<MT>(
            #[inline(always)]
            |mt| {
                unroll::<2>(
                    #[inline(always)]
                    |h| {
                        let mut tile_max = f32::NEG_INFINITY;
                        unroll::<KT>(
                            #[inline(always)]
                            |nt| {
                                tile_max = tile_max.max(s[mt][nt][2 * h]).max(s[mt][nt][2 * h + 1]);
                            },
                        );
                        tile_max = tile_max.max(ptx::shfl_xor_f32(tile_max, 1));
                        tile_max = tile_max.max(ptx::shfl_xor_f32(tile_max, 2));
                        let old_max = self.max[mt][h];
                        // Not `+ 0.0` when unshifted: IEEE keeps that add (−0 + 0 = +0).
                        let lifted = if shift == 0.0 {
                            tile_max
                        } else {
                            tile_max + shift
                        };
                        let new_max = if headroom == 0.0 {
                            old_max.max(lifted)
                        } else if lifted > old_max {
                            lifted + headroom
                        } else {
                            old_max
                        };
                        // A row that has seen only masked keys keeps max = -inf; subtract 0 instead so
                        // that 2^(-inf - 0) = 0 rather than NaN.
                        let base = if new_max == f32::NEG_INFINITY {
                            0.0
                        } else {
                            new_max
                        };
                        rescale[mt][h] = ptx::ex2(self.max[mt][h] - base);
                        self.max[mt][h] = new_max;
                        // In place: the scores are read from a copy (registers, no cost).
                        let row_sum = exponentiate_row(&{ s[mt] }, &mut s[mt], h, |x, _| x - base);
                        self.sum[mt][h] = self.sum[mt][h] * rescale[mt][h] + row_sum;
                    },
                );
            },
        );
        rescale
    }

    /// The probabilities of an unmasked tile against the running max as it stands, without the
    /// tile's max: `2^(s·scale - max)` for every integer score `s` (`scale = q_scale · k_scale`,
    /// one fused multiply-add), and the lane's part of each row's sum. The last value says
    /// whether every one of those lane sums stays at or below `limit` (false also for NaN, an
    /// infinite probability, or a row without a max yet). When it holds for the whole warp the
    /// tile needs no new max and the output no rescale: the caller adds the sums
    /// ([`Self::add_sums`]). Otherwise it discards the result and takes the tile through
    /// [`Self::update`] from its scores again. Skipping the max takes its reduction (a compare
    /// per score, two shuffles per row) off the path from the scores to the first exponential.
    #[inline(always)]
    pub fn probabilities_against_max<const KT: usize>(
        &self,
        s_int: &[[AccS32; KT]; MT],
        q_scale: &[[f32; 2]; MT],
        k_scale: f32,
        limit: f32,
    ) -> ([[AccF32; KT]; MT], [[f32; 2]; MT], bool) {
        let mut p = [[[0.0f32; 4]; KT]; MT];
        let mut sums = [[0.0f32; 2]; MT];
        let mut within = true;
        unroll::<MT>(
            #[inline(always)]
            |mt| {
                unroll::<2>(
                    #[inline(always)]
                    |h| {
                        let (base, scale) = (self.max[mt][h], q_scale[mt][h] * k_scale);
                        let row_sum = exponentiate_row(&s_int[mt], &mut p[mt], h, |x, _| {
                            ptx::fma(x as f32, scale, -base)
                        });
                        sums[mt][h] = row_sum;
                        // Against a max of -inf every probability is +inf or NaN: the sum fails.
                        within &= row_sum <= limit;
                    },
                );
            },
        );
        (p, sums, within)
    }

    /// Adds a tile's lane-partial row sums taken against the unchanged max
    /// ([`Self::probabilities_against_max`]).
    #[inline(always)]
    pub fn add_sums(&mut self, sums: &[[f32; 2]; MT]) {
        unroll::<MT>(
            #[inline(always)]
            |mt| {
                self.sum[mt][0] += sums[mt][0];
                self.sum[mt][1] += sums[mt][1];
            },
        );
    }

    /// The full row sum of row `h` of tile `mt` (reduces the quad's partial sums).
    #[inline(always)]
    pub fn row_sum(&self, mt: usize, h: usize) -> f32 {
        let mut l = self.sum[mt][h];
        l += ptx::shfl_xor_f32(l, 1);
        l += ptx::shfl_xor_f32(l, 2);
        l
    }
}
