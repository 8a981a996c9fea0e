//! The ring on the CPU: each rank's Q, K, V shard as [`HostTensor`]s, any block attention (the
//! exact [`attention_f64`](crate::reference::attention_f64), the quantized emulation, ...) and
//! the merge in f64. The oracle of the GPU ring: the same blocks and merge, so a GPU ring can be
//! checked against the CPU ring with the kernel's own tolerance, and the f64 ring against one
//! f64 call to rounding.

use super::agree::Descriptor;
use super::driver::{drive, RankWork, ReadyRank};
use super::layout::Sharding;
use super::merge::Accumulator;
use super::plan::Block;
use super::transport::{RingShift, SimulatedRing};
use crate::reference::{HostTensor, RefOutput};
use crate::types::error::{Error, Result};

/// One rank's inputs: its shards of Q (`[batch, q_heads, shard_len, d]`) and of K and V
/// (`[batch, kv_heads, shard_len, d]`).
#[derive(Clone, Debug)]
pub struct HostShard {
    /// Q shard.
    pub q: HostTensor,
    /// K shard.
    pub k: HostTensor,
    /// V shard.
    pub v: HostTensor,
}

/// A K/V shard travelling on the host.
#[derive(Clone, Debug)]
pub struct HostKv {
    /// K shard.
    pub k: HostTensor,
    /// V shard.
    pub v: HostTensor,
}

/// Attention of a block on the host: `(q rows, k rows, v rows, causal)` → output and LSE.
pub trait HostAttention: Fn(&HostTensor, &HostTensor, &HostTensor, bool) -> RefOutput {}
impl<F: Fn(&HostTensor, &HostTensor, &HostTensor, bool) -> RefOutput> HostAttention for F {}

struct HostRank<'f, A> {
    q: HostTensor,
    attend: &'f A,
    acc: Accumulator<f64>,
}

impl<A: HostAttention> RankWork for HostRank<'_, A> {
    type Kv = HostKv;

    fn attend(&mut self, kv: &HostKv, _source: usize, blocks: &[Block]) -> Result<()> {
        for b in blocks {
            let q = self.q.rows(b.q.start, b.q.len());
            let (k, v) = (
                kv.k.rows(b.k.start, b.k.len()),
                kv.v.rows(b.k.start, b.k.len()),
            );
            let part = (self.attend)(&q, &k, &v, b.causal);
            self.acc.merge_block(b.q.clone(), &part.o, &part.lse);
        }
        Ok(())
    }
}

/// Number of fields of the host ring's descriptor.
const HOST_FIELDS: usize = 7;

/// Checks one rank's shards against the sharding; returns what every rank must agree on.
fn check_host_shard(
    sharding: &Sharding,
    rank: usize,
    s: &HostShard,
    causal: bool,
) -> Result<Descriptor> {
    let [batch, q_heads, q_len, head_dim] = s.q.shape;
    let [kb, kv_heads, k_len, kd] = s.k.shape;
    for (name, t) in [("q", &s.q), ("k", &s.k), ("v", &s.v)] {
        if t.shape.contains(&0) {
            return Err(Error::EmptyTensor {
                tensor: name,
                shape: t.shape,
            });
        }
    }
    let want = sharding.shard_len(rank);
    if q_len != want || k_len != want || s.v.shape != s.k.shape || kb != batch || kd != head_dim {
        return Err(Error::ShapeMismatch {
            what: format!(
                "rank {rank} holds q {:?}, k {:?}, v {:?}; its shard has {want} rows and k, v \
                 must share q's batch and head_dim",
                s.q.shape, s.k.shape, s.v.shape
            ),
        });
    }
    if q_heads % kv_heads != 0 {
        return Err(Error::HeadsNotDivisible { q_heads, kv_heads });
    }
    Ok(Descriptor(vec![
        ("seq_len", sharding.seq_len() as u64),
        ("layout", sharding.layout().code()),
        ("batch", batch as u64),
        ("q_heads", q_heads as u64),
        ("kv_heads", kv_heads as u64),
        ("head_dim", head_dim as u64),
        ("causal", u64::from(causal)),
    ]))
}

/// Runs the ring on the CPU for the local ranks of `transport` (`shards[i]` is local rank `i`'s):
/// each rank's merged output and LSE for its Q shard (`qo_len` = its shard length), or the error
/// that stopped it — a bad shard on one rank is an error on every rank.
pub fn ring_attention_host<X, A>(
    transport: &mut X,
    sharding: &Sharding,
    shards: Vec<HostShard>,
    causal: bool,
    attend: &A,
) -> Vec<Result<RefOutput>>
where
    X: RingShift<HostKv> + ?Sized,
    A: HostAttention,
{
    let ranks = transport.local_ranks();
    let ready = shards
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            // More shards than local ranks: `drive` refuses the count on every rank.
            let rank = *ranks.get(i).ok_or_else(|| {
                Error::InvalidOption(format!("shard {i} has no local rank ({ranks:?})"))
            })?;
            let descriptor = check_host_shard(sharding, rank, &s, causal)?;
            let [batch, q_heads, rows, d] = s.q.shape;
            Ok(ReadyRank {
                work: HostRank {
                    q: s.q,
                    attend,
                    acc: Accumulator::new(batch, q_heads, rows, d),
                },
                kv: HostKv { k: s.k, v: s.v },
                descriptor,
            })
        })
        .collect();
    drive(transport, sharding, causal, HOST_FIELDS, ready)
        .into_iter()
        .map(|w| {
            w.map(|w| {
                let a = w.acc;
                RefOutput {
                    o: a.o,
                    lse: a.lse,
                    batch: a.batch,
                    q_heads: a.heads,
                    qo_len: a.rows,
                    head_dim: a.width,
                }
            })
        })
        .collect()
}

/// Whole-sequence tensors in, whole-sequence result out: shards `q`, `k`, `v` (`[batch, heads,
/// seq_len, d]`), runs the ring over a [`SimulatedRing`] of `sharding.world()` ranks and puts the
/// ranks' rows back in sequence order. Equal to `attend(q, k, v, causal)` on the whole sequence up
/// to what `attend` does differently on parts (nothing, for exact attention).
pub fn simulate_ring_host<A: HostAttention>(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    sharding: &Sharding,
    causal: bool,
    attend: &A,
) -> Result<RefOutput> {
    let mut ring = SimulatedRing::new(sharding.world())?;
    let shards = (0..sharding.world())
        .map(|r| HostShard {
            q: sharding.shard_host(q, r),
            k: sharding.shard_host(k, r),
            v: sharding.shard_host(v, r),
        })
        .collect();
    let outs = ring_attention_host(&mut ring, sharding, shards, causal, attend)
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let [batch, q_heads, _, d] = q.shape;
    let o: Vec<Vec<f64>> = outs.iter().map(|o| o.o.clone()).collect();
    let lse: Vec<Vec<f64>> = outs.into_iter().map(|o| o.lse).collect();
    Ok(RefOutput {
        o: sharding.unshard_rows(&o, batch, q_heads, d),
        lse: sharding.unshard_rows(&lse, batch, q_heads, 1),
        batch,
        q_heads,
        qo_len: sharding.seq_len(),
        head_dim: d,
    })
}
