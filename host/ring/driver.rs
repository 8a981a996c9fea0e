//! The ring itself, written once for every kind of rank (CPU reference, GPU) and every transport:
//!
//! 1. each local rank checks its inputs and builds its own travelling K/V shard; the transport
//!    prepares what shifting needs; then **agreement** (`agree`): every rank goes on, or every
//!    rank returns an error;
//! 2. `P` steps: at step `s` rank `r` holds the K/V shard of rank `(r - s) mod P`, runs the
//!    calls [`plan_blocks`] gives (none when that shard is hidden from all its queries) and
//!    merges them into its result; then the shards move one rank on (not after the last step);
//! 3. each rank finishes its result, and a second agreement makes a failure during the steps an
//!    error on every rank.
//!
//! A rank whose computation fails keeps forwarding shards to the end (the shift does not depend
//! on its results), so its peers never wait on it; only the transport failing stops the loop.

use super::agree::{agree, transport_error, Descriptor};
use super::layout::Sharding;
use super::plan::{plan_blocks, Block};
use super::transport::RingShift;
use crate::types::error::{Error, Result};

/// One rank's side of the ring.
pub(crate) trait RankWork {
    /// The travelling K/V shard.
    type Kv;

    /// Attention of this rank's Q shard against `blocks` of the K/V shard of rank `source`,
    /// merged into the rank's result.
    fn attend(&mut self, kv: &Self::Kv, source: usize, blocks: &[Block]) -> Result<()>;

    /// After the last step, before the final agreement (so that its failures are agreed too).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A local rank ready to run: its work, its own K/V shard and what it must agree on.
pub(crate) struct ReadyRank<W: RankWork> {
    pub(crate) work: W,
    pub(crate) kv: W::Kv,
    pub(crate) descriptor: Descriptor,
}

/// Runs the ring for the local ranks (`ready[i]` is local rank `i`, or the error that made it
/// refuse); one result per local rank. `fields` is the descriptors' length.
pub(crate) fn drive<X, W>(
    transport: &mut X,
    sharding: &Sharding,
    causal: bool,
    fields: usize,
    ready: Vec<Result<ReadyRank<W>>>,
) -> Vec<Result<W>>
where
    W: RankWork,
    X: RingShift<W::Kv> + ?Sized,
{
    let (world, ranks) = (transport.world_size(), transport.local_ranks());
    let mut ready = ready;
    if ready.len() != ranks.len() || sharding.world() != world {
        let why = format!(
            "{} local inputs and a sharding over {} ranks for a transport that drives ranks \
             {ranks:?} of {world}",
            ready.len(),
            sharding.world()
        );
        ready = ranks
            .iter()
            .map(|_| Err(Error::InvalidOption(why.clone())))
            .collect();
    }

    // 1. Prepare the transport, then agree.
    let mut parts = Vec::with_capacity(ranks.len());
    let mut checks = Vec::with_capacity(ranks.len());
    for (i, r) in ready.into_iter().enumerate() {
        match r.and_then(|r| transport.prepare(i, &r.kv).map(|()| r)) {
            Ok(r) => {
                checks.push(Ok(r.descriptor));
                parts.push(Some((r.work, r.kv)));
            }
            Err(e) => {
                checks.push(Err(e));
                parts.push(None);
            }
        }
    }
    let verdict = agree(transport, "validating their inputs", fields, checks);
    if verdict.iter().any(Result::is_err) {
        return verdict
            .into_iter()
            .map(|v| {
                Err(v.err().unwrap_or_else(|| {
                    // Agreement gives every rank an error when one rank has one.
                    Error::InvalidOption("the ring's agreement was inconsistent".into())
                }))
            })
            .collect();
    }
    let (mut works, mut held): (Vec<W>, Vec<W::Kv>) = parts.into_iter().flatten().unzip();

    // 2. The steps. A rank that fails keeps forwarding.
    let mut failures: Vec<Option<Error>> = ranks.iter().map(|_| None).collect();
    for step in 0..world {
        for (i, &rank) in ranks.iter().enumerate() {
            if failures[i].is_some() {
                continue;
            }
            let source = (rank + world - step) % world;
            let blocks = plan_blocks(sharding, rank, source, causal);
            if !blocks.is_empty() {
                failures[i] = works[i].attend(&held[i], source, &blocks).err();
            }
        }
        if step + 1 < world {
            if let Err(e) = transport.shift(&mut held) {
                let during = "passing K/V shards";
                return ranks
                    .iter()
                    .map(|_| Err(transport_error(&e, during)))
                    .collect();
            }
        }
    }

    // 3. Finish and agree again.
    let checks = works
        .iter_mut()
        .zip(failures)
        .map(|(w, failed)| match failed {
            Some(e) => Err(e),
            None => w.finish().map(|()| Descriptor::default()),
        })
        .collect();
    agree(transport, "computing their shard", 0, checks)
        .into_iter()
        .zip(works)
        .map(|(v, w)| v.map(|()| w))
        .collect()
}
