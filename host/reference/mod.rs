//! CPU reference implementations of attention, used to check GPU results.
//!
//! * [`attention_f64`]: exact attention (scores, softmax and the weighted sum of V all in `f64`),
//!   parallel over rows with rayon. This is the ground truth for accuracy metrics.
//! * [`attention_quantized_emulation`]: the quantized algorithm the GPU runs (INT8 Q/K from
//!   [`quant_ref`], base-2 softmax, f16 V and f16 P), otherwise in `f64`. GPU results should be
//!   much closer to this than to the exact reference, so tests can use a tight bound against it.
//! * [`attention_pv8_emulation`]: the same for the 8-bit P·V (u8 P per key tile, INT8 V per
//!   channel from [`v8`]).
//! * [`naive_attention_f64`]: the most literal formulation, without rayon or any numerical trick;
//!   only meant to cross-check [`attention_f64`] in tests.
//! * [`attention_varlen`], [`attention_varlen_f64`], [`attention_varlen_quantized_emulation`]:
//!   the same per sequence of a packed (variable-length) batch, each sequence cut out and run
//!   through the batched reference.
//! * [`compare`] / [`compare_f64`]: NaN-aware error metrics ([`Metrics`]).
//!
//! Semantics follow `docs/design.md`, "Attention semantics": tensors have the logical shape
//! `[batch, heads, seq, head_dim]`; grouped-query attention maps query head `h` to kv head
//! `h / (q_heads / kv_heads)`; `qo_len` may differ from `kv_len`; causal masking is bottom-right
//! aligned (query `i` sees key `j` iff `j <= i + kv_len - qo_len`); a row that sees no key outputs 0
//! with LSE `-inf`. NaN and infinities in the inputs are not special-cased: they flow through the
//! arithmetic exactly as plain `f64` math makes them.
//!
//! Files: [`HostTensor`] (`host_tensor.rs`), the options, output and row driver every reference
//! shares (`rows.rs`), the exact references (`exact.rs`), the emulation (`emulation.rs`), the
//! metrics (`metrics.rs`), the varlen references (`varlen.rs`) and the bit-exact quantizer emulation ([`quant_ref`]).

mod emulation;
mod exact;
pub(crate) mod host_tensor;
mod metrics;
pub mod quant_ref;
mod rows;
pub mod v8;
mod varlen;

pub use emulation::{
    attention_fp8_emulation, attention_pv8_emulation, attention_quantized_emulation,
};
pub use exact::{attention_f64, naive_attention_f64};
pub use host_tensor::HostTensor;
pub use metrics::{compare, compare_f64, Metrics};
pub use rows::{visible_key_count, RefOptions, RefOutput};
pub use varlen::{attention_varlen, attention_varlen_f64, attention_varlen_quantized_emulation};
