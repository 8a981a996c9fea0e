//! The options of one attention call: plain values, checked by `launch::validate` and read by
//! `launch::dispatch` and `launch::enqueue`.

use super::dtype::Layout;

/// How P·V accumulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PvAccum {
    /// f16 accumulator within each 64-key tile, summed into an f32 running output
    /// (SageAttention's default; fastest). The portable kernel for head_dim above 128 (the d = 256
    /// one) has only the f32 accumulator, which this then runs.
    ///
    /// Range: a tile's `Σ p·v` runs in f16, which cannot overflow while every `|V| ≤ 1023`
    /// (2047 in the 32-key tiles of the compact d = 96/128 variants that GPUs with 100 KiB of
    /// shared memory per SM run), whatever the scores. Above that, a tile whose keys share most
    /// of the weight can reach f16's 65504: the kernel then sees a non-finite output in that
    /// CTA and runs the CTA's rows again with every probability lowered by 2^-7, which is finite
    /// for every f16 V. Such rows cost about twice as much, and probabilities more than 17 log2
    /// units below their row's maximum count as 0 there (21 otherwise); [`PvAccum::F32`] has
    /// neither cost. This concerns the portable f16 P·V kernel only: on Hopper with
    /// [`Backend::Auto`] the f16 P·V accumulates in f32 whatever this says.
    #[default]
    F16,
    /// f32 accumulator throughout (slower, slightly more accurate).
    F32,
}

/// Precision of the P·V product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PvPrecision {
    /// P and V in f16 on the f16 tensor cores (bf16 V is converted): the v1 accuracy contract,
    /// rel L1 ≤ 0.0135 and cos ≥ 0.9999 against exact attention on N(0,1) inputs. V must fit f16:
    /// bf16 V values beyond ±65504 become ±∞ in the conversion (and the output with them), and
    /// see [`PvAccum::F16`] for the portable kernel's tile sums; the 8-bit precisions scale V per
    /// channel and take bf16's whole range.
    #[default]
    F16,
    /// 8-bit P·V, the SageAttention2 class of speed: each key tile's probabilities are scaled so
    /// that their row maximum is 255 and rounded to u8; V is smoothed by its per-channel mean and
    /// quantized per channel to INT8; the product runs on the INT8 tensor cores (the FP8 peak on
    /// Hopper and on Ada with an f16 accumulator, twice Ada's FP8 rate with an f32 one) with an
    /// exact s32 result per 128-key tile, accumulated in f32 (two levels). u8 P × s8 V is used
    /// rather than e4m3 × e4m3 because it halves the error: on N(0,1), d = 64–128, N = 2048,
    /// measured on an H200 rel L1 ≈ 0.015 (cos ≥ 0.99988) against 0.037 for the official e4m3
    /// SageAttention 2.2 (docs/perf-notes.md; the contract tested is rel L1 ≤ 0.020, cos ≥
    /// 0.9998). Runs on
    /// every sm_80+ GPU: the sm_90a wgmma kernel on Hopper with [`Backend::Auto`], the portable
    /// mma.sync kernel (`mma.sync m16n8k32` u8·s8) everywhere else and with
    /// [`Backend::Portable`]; both compute the same thing (one CPU emulation). head_dim a
    /// multiple of 16 up to 256; others return [`Error::PvPrecisionUnavailable`](crate::Error).
    Int8,
    /// FP8 P·V, the SageAttention2/2++ algorithm: as [`PvPrecision::Int8`] (INT8 Q·Kᵀ,
    /// per-tile P, V smoothed by its per-channel mean, two-level accumulation) but with P and V
    /// in e4m3: `mma.sync m16n8k32 e4m3·e4m3` (the sm_89 module), and on Hopper with
    /// [`Backend::Auto`] the sm_90a kernel's `wgmma m64nNk32.f32.e4m3.e4m3` (the official
    /// SageAttention 2.2 sm90 algorithm). P is scaled to 448 per tile, V per channel to ±1 (so
    /// that an f16 accumulator cannot overflow). [`PvAccum`] picks the accumulator of each key
    /// tile's product on the sm_89 kernel: [`PvAccum::F16`] (the default; twice the f32 rate on
    /// GeForce Ada) or [`PvAccum::F32`]; the sm_90a kernel accumulates in f32 whichever is asked
    /// (an f16 accumulator is no faster on Hopper). **Less accurate than
    /// `Int8`:** e4m3 keeps 3 mantissa bits against u8/s8's 8/7 bits, and on N(0,1) inputs the
    /// CPU emulation gives rel L1 ≈ 0.036, cos ≈ 0.99934 against exact attention with either
    /// accumulator (docs/perf-notes.md, "FP8 P·V on Ada"), where `Int8` gives 0.015 / 0.99989;
    /// on the RTX 4090 the model puts it at `Int8`'s speed with the f16 accumulator.
    /// Runs on compute capability 8.9 and newer (Ada; Hopper, with either [`Backend`]); older
    /// devices get [`Error::PvPrecisionUnavailable`](crate::Error). head_dim as `Int8`.
    Fp8,
}

impl PvPrecision {
    /// The variant's name, as errors and the CLI print it.
    pub const fn name(self) -> &'static str {
        match self {
            PvPrecision::F16 => "F16",
            PvPrecision::Int8 => "Int8",
            PvPrecision::Fp8 => "Fp8",
        }
    }
}

/// Which attention kernel runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The fastest kernel for the device: on Hopper (sm_90) the wgmma kernel (zero-padded to
    /// 64, 96, 128 or 256; the 8-bit P·V to 64, 128 or 256), whose P·V accumulates in f32 (an
    /// f16 accumulator is not faster on Hopper, so [`PvAccum::F16`] gets the more accurate f32
    /// result there); elsewhere the portable kernel as [`PvAccum`] asks (zero-padded to 64, 96,
    /// 128 or 256), or its 8-bit P·V variant for [`PvPrecision::Int8`].
    #[default]
    Auto,
    /// The portable mma.sync kernel (sm_80+), which honours [`PvAccum`] on every device (and
    /// runs [`PvPrecision::Int8`] with its 8-bit P·V variant). [`PvPrecision::Fp8`] runs the
    /// sm_89 kernel with either backend.
    Portable,
}

/// Options of [`sageattn`](crate::sageattn).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Causal mask, bottom-right aligned (see [`attention`](crate::attention)).
    pub causal: bool,
    /// Subtract K's mean over the sequence before quantizing (default on): exact for softmax,
    /// and much smaller INT8 error when K has channel-wise offsets.
    pub smooth_k: bool,
    /// Softmax scale; `None` = `1/sqrt(head_dim)`.
    pub sm_scale: Option<f32>,
    /// Memory layout of the output [`sageattn`](crate::sageattn) allocates.
    pub layout: Layout,
    /// P·V accumulation (of the f16 and the FP8 P·V; the INT8 one always accumulates exactly per
    /// tile).
    pub pv_accum: PvAccum,
    /// P·V precision (default f16).
    pub pv_precision: PvPrecision,
    /// Also return the log-sum-exp (natural log) of each query row, f32 `[batch, q_heads, qo_len]`.
    pub return_lse: bool,
    /// Kernel selection (default: the fastest for the device).
    pub backend: Backend,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            causal: false,
            smooth_k: true,
            sm_scale: None,
            layout: Layout::Hnd,
            pv_accum: PvAccum::F16,
            pv_precision: PvPrecision::F16,
            return_lse: false,
            backend: Backend::Auto,
        }
    }
}
