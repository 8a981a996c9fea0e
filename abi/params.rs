//! Kernel parameter structs, passed by value (`#[repr(C)]`, all pointers `u64`, strides `i64` in
//! elements). Shared with the host through `#[path]`. Device code reads the pointers only through
//! the explicit `.global` wrappers in `ptx`, because pointers inside a by-value struct lose their
//! address space (DEVICE-RUST.md §1).

/// The attention kernel's parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnParams {
    /// INT8 Q, `[batch][q_heads][padded_qo][head_dim]` contiguous (read when `q_raw` is 0).
    pub q: u64,
    /// sm_90a kernels only: the caller's Q (f16 or bf16 as `q_bf16` says, any strides with unit
    /// last dim, `head_dim` wide), which the kernel quantizes itself, bit for bit as the
    /// preparation would (then `q` and `q_scale` are unused); 0 = read the prepared `q`.
    pub q_raw: u64,
    /// INT8 K, `[batch][kv_heads][padded_kv][head_dim]` contiguous.
    pub k: u64,
    /// f16 V, any strides with unit last dim.
    pub v: u64,
    /// Output (f16 or bf16, see `out_bf16`), any strides with unit last dim.
    pub o: u64,
    /// Optional f32 LSE `[batch][q_heads][qo_len]`; 0 = not requested.
    pub lse: u64,
    /// Optional f32 `[batch][q_heads][qo_len]` added to the LSE (the score shift K smoothing
    /// removed, `sm_scale · q·mean(K)`); 0 = none.
    pub lse_bias: u64,
    /// f32 `[batch][q_heads][padded_qo]` (per token; read when `q_raw` is 0).
    pub q_scale: u64,
    /// f32 `[batch][kv_heads][k_blocks]`.
    pub k_scale: u64,
    /// 8-bit P·V only (else 0): f32 V scales `[batch][kv_heads][2][head_dim]` (the first half is
    /// read), as `V8Params::scale`; `v` then points to the INT8 Vᵀ of `V8Params::out`.
    pub v_scale: u64,
    /// 8-bit P·V only (else 0): f32 V mean `[batch][kv_heads][head_dim]`, added back to O.
    pub v_mean: u64,
    /// V strides (batch, head, seq) in elements.
    pub v_stride: [i64; 3],
    /// Output strides (batch, head, seq) in elements.
    pub o_stride: [i64; 3],
    /// `q_raw`'s strides (batch, head, seq) in elements.
    pub q_stride: [i64; 3],
    /// Query rows per head.
    pub qo_len: u32,
    /// Keys per head.
    pub kv_len: u32,
    /// Query heads.
    pub q_heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// 1: store bf16, 0: store f16.
    pub out_bf16: u32,
    /// The caller's head_dim (a multiple of 8, at most the kernel's): the portable kernel stores
    /// only the output columns below it, so a zero-padded problem (Q, K and V prepared
    /// `out_head_dim` wide with zero columns) needs no output copy. The sm_90a kernels ignore it:
    /// the host gives them an output padded to their head_dim and copies the columns after (and
    /// read `q_raw` only below it, the kernel's columns past it being zero).
    pub head_dim: u32,
    /// `sm_scale · LOG2_E`, Q's multiplier before quantization (with `q_raw`).
    pub q_mult: f32,
    /// 1: `q_raw` is bf16, 0: f16.
    pub q_bf16: u32,
    /// sm_90a causal kernels only: `c > 0` = the (batch, head) pairs are taken in chunks of `c`
    /// (as many as have their K and V fit in L2 together), and within a chunk the Q blocks
    /// longest first across its heads: grid `(c, q_blocks, ceil(q_heads · batch / c))`, pair
    /// `blockIdx.z · c + blockIdx.x`, Q block rank `blockIdx.y` (the hardware starts CTAs in that
    /// order, so the longest blocks of a chunk's heads start first: longest-processing-time
    /// order); 0 = grid `(q_blocks, q_heads, batch)`, each head's blocks longest first.
    pub causal_chunk: u32,
    /// Batches (the pairs past `q_heads · batch` of the last chunk have nothing to do).
    pub batch: u32,
    /// sm_90a kernels only (else 0; f16 P·V: 0 also when TMA cannot describe V, and the kernel
    /// copies with cp.async): global address of two `CUtensorMap`s (64-byte aligned, 128 bytes
    /// each), the TMA descriptors of the INT8 K tiles and then of the V tiles (the 8-bit P·V's
    /// INT8 Vᵀ sub-tiles, or the caller's f16 V) (host `launch::tma`).
    pub tma: u64,
}

/// The quantization job's parameters (one struct per tensor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QuantParams {
    /// Input f16/bf16, any strides with unit last dim.
    pub x: u64,
    /// Nonzero: subtract K's mean (f32 `[batch][heads][head_dim]`, this buffer; the job stages it
    /// as `PrepareParams::mean` and `PrepareParams::fold_k` say). 0: multiply by `mult` instead.
    pub mean: u64,
    /// INT8 output `[batch][heads][padded_seq][out_head_dim]`.
    pub out: u64,
    /// f32 scales `[batch][heads][blocks]`.
    pub scale: u64,
    /// Input strides (batch, head, seq) in elements.
    pub x_stride: [i64; 3],
    /// Multiplier applied before quantization when `mean == 0` (Q: `sm_scale * LOG2_E`, K: 1).
    pub mult: f32,
    /// Tokens per block (128 for Q, 64 for K).
    pub block: u32,
    /// Sequence length.
    pub seq: u32,
    /// Heads.
    pub heads: u32,
    /// Head dimension (multiple of 8).
    pub head_dim: u32,
    /// 1: input is bf16, 0: f16.
    pub in_bf16: u32,
    /// Row width of the output (≥ `head_dim`, multiple of 16): columns past `head_dim` are zero,
    /// so a kernel for a larger head_dim can run on the data (d = 80 on the d = 96 kernels).
    pub out_head_dim: u32,
    /// Padding so the struct size is a multiple of 8.
    pub _pad: u32,
}

/// The K-mean jobs' parameters (segment sums, then the mean).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanParams {
    /// Input K (f16/bf16).
    pub k: u64,
    /// f32 segment sums `[batch][heads][segments][head_dim]`.
    pub partials: u64,
    /// f32 output `[batch][heads][head_dim]`.
    pub mean: u64,
    /// K strides (batch, head, seq) in elements.
    pub k_stride: [i64; 3],
    /// Sequence length.
    pub seq: u32,
    /// Heads.
    pub heads: u32,
    /// Head dimension (multiple of 8).
    pub head_dim: u32,
    /// 1: input is bf16, 0: f16.
    pub in_bf16: u32,
}

/// The V-to-f16 job's parameters: V (f16 or bf16, any strides) to a contiguous f16
/// `[b][h][seq][out_head_dim]`, zero past `head_dim`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvertParams {
    /// Input f16 or bf16.
    pub x: u64,
    /// Output f16, contiguous.
    pub out: u64,
    /// Input strides (batch, head, seq) in elements.
    pub x_stride: [i64; 3],
    /// Sequence length.
    pub seq: u32,
    /// Heads.
    pub heads: u32,
    /// Head dimension (multiple of 8).
    pub head_dim: u32,
    /// Batch.
    pub batch: u32,
    /// Row width of the output (≥ `head_dim`, multiple of 8).
    pub out_head_dim: u32,
    /// 1: input is bf16, 0: f16.
    pub in_bf16: u32,
}

/// Copies the first `cols` columns of 16-bit rows between two strided `[b][h][seq][·]` tensors
/// (the padded output of a larger-head_dim kernel into the caller's output).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ColumnCopyParams {
    /// Source.
    pub src: u64,
    /// Destination.
    pub dst: u64,
    /// Source strides (batch, head, seq) in elements.
    pub src_stride: [i64; 3],
    /// Destination strides (batch, head, seq) in elements.
    pub dst_stride: [i64; 3],
    /// Batch.
    pub batch: u32,
    /// Heads.
    pub heads: u32,
    /// Rows per head.
    pub seq: u32,
    /// Columns to copy (multiple of 8).
    pub cols: u32,
}

/// Parameters of the single-tile mma tests and the Hopper smoke kernel: operand and result buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TestParams {
    /// A operand (or the smoke kernel's output).
    pub a: u64,
    /// B operand.
    pub b: u64,
    /// Result.
    pub d: u64,
}

/// Parameters of the LSE-bias job: `bias[b][h][i] = sm_scale * Σ_d q[b][h][i][d] * mean[b][h/ratio][d]`
/// (f32, in order of d), the per-row score shift that subtracting the K mean removes. K's mean
/// comes from `PrepareParams::mean`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LseBiasParams {
    /// Q (f16/bf16).
    pub q: u64,
    /// f32 output `[batch][q_heads][seq]`.
    pub bias: u64,
    /// Q strides (batch, head, seq) in elements.
    pub q_stride: [i64; 3],
    /// Softmax scale (natural units).
    pub sm_scale: f32,
    /// Query rows.
    pub seq: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Head dimension (multiple of 8).
    pub head_dim: u32,
    /// 1: Q is bf16, 0: f16.
    pub in_bf16: u32,
    /// Batch.
    pub batch: u32,
    /// Padding so the struct size is a multiple of 8.
    pub _pad: u32,
}

/// Parameters of the fused preparation kernel (`sage_prepare`): every job's parameters, and which
/// CTAs of this launch run which job (`config::prep_job`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PrepareParams {
    /// Q quantization (`mean` is 0).
    pub q: QuantParams,
    /// K quantization; `mean` is K's mean buffer (smoothing) or 0.
    pub k: QuantParams,
    /// K segment sums and mean.
    pub mean: MeanParams,
    /// V to f16.
    pub convert: ConvertParams,
    /// 8-bit V.
    pub v8: V8Params,
    /// LSE bias.
    pub lse: LseBiasParams,
    /// Exclusive end of each job's CTA range, in `prep_job` order: CTAs `ends[j-1]..ends[j]`
    /// (from 0 for job 0) run job `j`; an empty range skips the job.
    pub ends: [u32; 9],
    /// 1: the K-quantization and LSE-bias CTAs reduce K's segment sums into the mean themselves
    /// (`config::MEAN_FOLD_MAX_SEGMENTS`); 0: they read the mean the `K_MEAN` job of an earlier
    /// launch wrote.
    pub fold_k: u32,
    /// 1: the 8-bit V quantization CTAs reduce V's statistics into its mean and scales themselves
    /// (`config::V8_FOLD_MAX_SEGMENTS`); 0: they read what the `V8_FINALIZE` job of an earlier
    /// launch wrote.
    pub fold_v8: u32,
    /// Padding so the struct size is a multiple of 8.
    pub _pad: u32,
}

/// The 8-bit V preparation jobs' parameters (statistics, finalize, quantization: one struct for
/// the three).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct V8Params {
    /// Input V (f16/bf16), any strides with unit last dim.
    pub v: u64,
    /// f32 per-segment statistics `[batch][heads][segments][3][head_dim]`: sum, max, min.
    pub partials: u64,
    /// f32 per-channel mean `[batch][heads][out_head_dim]`.
    pub mean: u64,
    /// f32 `[batch][heads][2][out_head_dim]`: the dequantization scale, then its inverse
    /// (the quantization multiplier).
    pub scale: u64,
    /// INT8 Vᵀ `[batch][heads][out_head_dim][padded_seq]`: keys contiguous, permuted within each
    /// 16-key group (see `config::v8_key_slot`); zero past the sequence and past `head_dim`.
    pub out: u64,
    /// V strides (batch, head, seq) in elements.
    pub v_stride: [i64; 3],
    /// Sequence length.
    pub seq: u32,
    /// Heads.
    pub heads: u32,
    /// Head dimension (multiple of 8).
    pub head_dim: u32,
    /// 1: input is bf16, 0: f16.
    pub in_bf16: u32,
    /// Channels of the output (≥ `head_dim`, the kernel's head dim).
    pub out_head_dim: u32,
    /// Padding so the struct size is a multiple of 8.
    pub _pad: u32,
}

/// Parameters of `sage_store_tma_maps`: the sm_90a kernels' two TMA descriptors (K, then V; 128
/// bytes each) and where in the call's scratch to write them. They travel as kernel parameters,
/// which a CUDA graph captures by value, where a copy from host memory would be replayed from
/// whatever that host memory holds by then.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TmaMapsParams {
    /// Destination, 64-byte aligned device memory of 256 bytes.
    pub dst: u64,
    /// The descriptors' bytes.
    pub words: [u64; 32],
}
