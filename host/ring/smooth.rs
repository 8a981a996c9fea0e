//! Exact smoothing across the ring, on the CPU: K's mean over the **whole** sequence, as one call
//! takes it, from per-shard sums — and the payload that design sends (K quantized once per rank).
//!
//! Each rank sums its K shard per chunk in the kernels' order (segments of
//! [`MEAN_SEGMENT_ROWS`] rows from the chunk's first row, 16 lanes and the 8/4/2/1 tree,
//! `quant_ref`'s `lane_tree_sum`) into its chunks' slots of a table with one slot per segment of
//! the whole sequence; one all-reduce sum fills every slot on every rank (the other ranks add
//! zeros, and `x + 0 = x` exactly); every rank then adds the segments in sequence order and
//! divides by the length. When every chunk starts on a segment boundary (`seq_len` a multiple of
//! `chunks × 256`) this is bit for bit [`quant_ref::k_mean`](crate::quant_ref::k_mean) of the
//! whole K, and with chunks of whole K blocks (multiples of 64 rows) each rank's INT8 K and
//! scales are bit for bit the single call's rows: the ring quantizes K exactly as one call would.
//!
//! The GPU ring cannot do this yet: the library's call takes K's mean from the K it is given and
//! has no way to take a given mean or an already quantized K (docs/design.md, *Context
//! parallelism*, says what hook it needs). [`QuantizedKvShard`] is the payload it would send.

use super::layout::Sharding;
use super::transport::RingTransport;
use crate::device_config::MEAN_SEGMENT_ROWS;
use crate::reference::quant_ref::{lane_tree_sum, quantize_k, Quantized};
use crate::reference::HostTensor;
use crate::types::error::{Error, Result};

/// The whole sequence's segment table: slot offset of each chunk's first segment.
fn segment_offsets(sharding: &Sharding) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(sharding.chunk_count() + 1);
    let mut at = 0;
    for c in 0..sharding.chunk_count() {
        offsets.push(at);
        at += sharding.chunk_rows(c).len().div_ceil(MEAN_SEGMENT_ROWS);
    }
    offsets.push(at);
    offsets
}

/// Rank `rank`'s contribution to the segment table, `[segments][batch][heads][head_dim]` f32:
/// the sums of its K shard's segments in its chunks' slots, 0 elsewhere.
pub fn k_segment_sums(sharding: &Sharding, rank: usize, k_shard: &HostTensor) -> Vec<f32> {
    let [batch, heads, _, d] = k_shard.shape;
    let offsets = segment_offsets(sharding);
    let per_segment = batch * heads * d;
    let mut table = vec![0.0f32; offsets[sharding.chunk_count()] * per_segment];
    for c in sharding.chunks(rank) {
        for (n, start) in c.local.clone().step_by(MEAN_SEGMENT_ROWS).enumerate() {
            let end = (start + MEAN_SEGMENT_ROWS).min(c.local.end);
            let slot = (offsets[c.index] + n) * per_segment;
            for b in 0..batch {
                for h in 0..heads {
                    for ch in 0..d {
                        table[slot + (b * heads + h) * d + ch] =
                            lane_tree_sum((start..end).map(|s| k_shard.get(b, h, s, ch)));
                    }
                }
            }
        }
    }
    table
}

/// K's mean `[batch][heads][head_dim]` from the summed table: the segments added in sequence
/// order from 0, divided by `seq_len as f32` (the kernels' arithmetic).
pub fn k_mean_from_sums(
    sharding: &Sharding,
    table: &[f32],
    batch: usize,
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let per_segment = batch * heads * head_dim;
    (0..per_segment)
        .map(|i| {
            let total = table
                .iter()
                .skip(i)
                .step_by(per_segment)
                .fold(0.0f32, |t, &x| t + x);
            total / sharding.seq_len() as f32
        })
        .collect()
}

/// Every local rank's K mean over the whole sequence, through one all-reduce of the segment
/// sums (`k_shards[i]` is local rank `i`'s K shard, `[batch, kv_heads, shard_len, d]`).
pub fn global_k_mean<X: RingTransport + ?Sized>(
    transport: &mut X,
    sharding: &Sharding,
    k_shards: &[HostTensor],
) -> Result<Vec<Vec<f32>>> {
    let ranks = transport.local_ranks();
    if k_shards.len() != ranks.len() {
        return Err(Error::InvalidOption(format!(
            "{} K shards for local ranks {ranks:?}",
            k_shards.len()
        )));
    }
    let mut tables: Vec<Vec<f32>> = ranks
        .iter()
        .zip(k_shards)
        .map(|(&r, k)| k_segment_sums(sharding, r, k))
        .collect();
    transport.all_reduce_sum_f32(&mut tables)?;
    Ok(tables
        .iter()
        .zip(k_shards)
        .map(|(t, k)| k_mean_from_sums(sharding, t, k.batch(), k.heads(), k.head_dim()))
        .collect())
}

/// What travels in the exact design: a rank's K quantized once with the global mean, one
/// [`Quantized`] per chunk (blocks start at each chunk's first row, as the single call's do
/// when chunks are whole K blocks), and its V.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedKvShard {
    /// The rank whose shard this is.
    pub source: usize,
    /// INT8 K and its scales, one entry per chunk of the shard (ascending).
    pub k: Vec<Quantized>,
    /// V shard as given.
    pub v: HostTensor,
}

/// Quantizes rank `rank`'s K shard with the global `mean` (see [`global_k_mean`]).
pub fn quantize_kv_shard(
    sharding: &Sharding,
    rank: usize,
    k_shard: &HostTensor,
    v_shard: &HostTensor,
    mean: &[f32],
) -> QuantizedKvShard {
    QuantizedKvShard {
        source: rank,
        k: sharding
            .chunks(rank)
            .iter()
            .map(|c| quantize_k(&k_shard.rows(c.local.start, c.len()), Some(mean)))
            .collect(),
        v: v_shard.clone(),
    }
}
