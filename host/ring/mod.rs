//! Context parallelism: SageAttention over one long sequence split among `P` ranks (GPUs), by
//! ring attention (Liu et al., arXiv 2310.01889), as ring-flash-attention and Llama 3's context
//! parallelism do it.
//!
//! Each rank holds a shard of Q, K and V — one chunk of the sequence, or two mirrored chunks in
//! the zig-zag layout that balances causal work ([`layout`]). K/V shards travel around the ring:
//! at step `s` rank `r` holds rank `(r - s) mod P`'s, runs attention of its queries against the
//! parts of it they may see — everything, a causal diagonal, or nothing ([`plan`]) — and merges
//! each partial output into its result by the LSE merge ([`merge`]). After `P` steps every rank
//! has the attention of its queries over the whole sequence.
//!
//! The algorithm (`driver.rs`) is written once over two traits ([`transport`]): an in-process
//! [`SimulatedRing`] (all ranks in one thread: tests, one GPU) and `nccl::NcclRing` (cargo feature
//! `nccl`, `libnccl` loaded at run time). Before the first transfer the ranks agree on their
//! inputs (`agree.rs`): a bad input on one rank is an error on every rank, never a hang.
//!
//! Two kinds of rank: [`ring_sageattn`] runs each block through the library's
//! [`sageattn`](crate::sageattn) on a GPU; [`ring_attention_host`] runs any CPU attention (the
//! exact f64 reference, the quantized emulation) and is the GPU ring's oracle. [`smooth`] does
//! K's smoothing exactly across ranks (the whole sequence's mean from all-reduced per-shard sums,
//! K quantized once per rank, INT8 K as the payload) on the CPU; the GPU ring still smooths per
//! call, see `gpu.rs` and docs/design.md (*Context parallelism*) for the library hook it needs.
//!
//! Read order: `layout.rs` → `plan.rs` → `merge.rs` → `transport.rs` → `agree.rs` → `driver.rs` →
//! `host.rs` / `gpu.rs` → `smooth.rs` → `nccl.rs`.

mod agree;
mod driver;
mod gpu;
mod host;
pub mod layout;
pub mod merge;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod plan;
pub mod smooth;
pub mod transport;

pub use agree::Descriptor;
pub use gpu::{ring_sageattn, DeviceKv, RankInputs};
pub use host::{ring_attention_host, simulate_ring_host, HostAttention, HostKv, HostShard};
pub use layout::{Chunk, ShardLayout, Sharding};
pub use merge::{merge_partials, merge_row, Accumulator, MergeFloat};
pub use plan::{plan_blocks, rank_work, visibility, Block, Visibility};
pub use transport::{RingShift, RingTransport, SimulatedRing};
