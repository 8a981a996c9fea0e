//! Agreement before (and after) the ring's work, so that a failure on one rank becomes an error
//! on every rank instead of a collective that waits forever for a rank that has left.
//!
//! Each local rank contributes one slot of a `world × (1 + fields)` buffer: a failure flag and
//! the named integers every rank must share (its [`Descriptor`]: shapes, dtype, options,
//! sharding); the other slots are 0. One all-reduce sum is then an all-gather, and every rank
//! decides the same way from the same numbers:
//!
//! * some rank failed → that rank returns its own error, every other one
//!   [`Error::RingPeerFailed`] naming the failed ranks;
//! * two descriptors differ → every rank returns [`Error::RingMismatch`] naming the first field
//!   that differs (before any shard-sized buffer is exchanged: disagreeing sizes would make the
//!   transfers themselves disagree);
//! * otherwise every rank goes on.
//!
//! The only collective a rank can be left waiting in is this all-reduce itself, and every rank
//! reaches it whatever its inputs: the checks before it never return early.

use super::transport::RingTransport;
use crate::types::error::{Error, Result};

/// The named integers one rank's problem is described by; every rank builds the same fields in
/// the same order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor(pub Vec<(&'static str, u64)>);

/// Whether the ring may go on: one result per local rank, in `local_ranks` order.
///
/// `local` holds each local rank's check: its descriptor (`fields` entries), or the error that
/// made it refuse. A transport failure becomes [`Error::Transport`] on every local rank.
pub(crate) fn agree<X: RingTransport + ?Sized>(
    transport: &mut X,
    phase: &'static str,
    fields: usize,
    local: Vec<Result<Descriptor>>,
) -> Vec<Result<()>> {
    let (world, ranks) = (transport.world_size(), transport.local_ranks());
    let width = 1 + fields;
    let mut bufs: Vec<Vec<u64>> = ranks
        .iter()
        .zip(&local)
        .map(|(&r, check)| {
            let mut buf = vec![0u64; world * width];
            let slot = &mut buf[r * width..(r + 1) * width];
            match check {
                Err(_) => slot[0] = 1,
                Ok(d) => {
                    // A descriptor of another length is a bug of the caller: refuse, never
                    // exchange buffers of different lengths.
                    if d.0.len() != fields {
                        slot[0] = 1;
                    }
                    for (s, (_, value)) in slot[1..].iter_mut().zip(&d.0) {
                        *s = *value;
                    }
                }
            }
            buf
        })
        .collect();
    if let Err(e) = transport.all_reduce_sum_u64(&mut bufs) {
        return ranks
            .iter()
            .map(|_| Err(transport_error(&e, phase)))
            .collect();
    }
    let table = bufs.into_iter().next().unwrap_or_default();
    let failed: Vec<usize> = (0..world).filter(|&r| table[r * width] != 0).collect();
    let names: Vec<&'static str> = local
        .iter()
        .find_map(|c| c.as_ref().ok())
        .map(|d| d.0.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    let mismatch = (1..world).find_map(|r| {
        (1..width)
            .find(|&f| table[r * width + f] != table[f])
            .map(|f| {
                let name = names.get(f - 1).copied().unwrap_or("a field");
                format!(
                    "{name}: rank 0 has {}, rank {r} has {}",
                    table[f],
                    table[r * width + f]
                )
            })
    });
    ranks
        .iter()
        .zip(local)
        .map(|(&rank, check)| match check {
            Err(e) => Err(e),
            Ok(d) if d.0.len() != fields => Err(Error::InvalidOption(format!(
                "ring rank {rank}: a descriptor of {} fields, expected {fields}",
                d.0.len()
            ))),
            Ok(_) if !failed.is_empty() => Err(Error::RingPeerFailed {
                rank,
                failed: failed.clone(),
                phase,
            }),
            Ok(_) => match &mismatch {
                Some(what) => Err(Error::RingMismatch {
                    rank,
                    what: what.clone(),
                }),
                None => Ok(()),
            },
        })
        .collect()
}

/// The transport's failure, once per rank (`Error` is not `Clone`).
pub(crate) fn transport_error(e: &Error, during: &str) -> Error {
    match e {
        Error::Transport { op, reason } => Error::Transport {
            op: op.clone(),
            reason: reason.clone(),
        },
        other => Error::Transport {
            op: during.into(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::transport::SimulatedRing;
    use super::*;

    fn desc(batch: u64) -> Result<Descriptor> {
        Ok(Descriptor(vec![("batch", batch), ("heads", 8)]))
    }

    #[test]
    fn one_bad_rank_stops_every_rank() {
        let mut ring = SimulatedRing::new(3).unwrap();
        let all_ok = agree(&mut ring, "validating", 2, vec![desc(2), desc(2), desc(2)]);
        assert!(all_ok.iter().all(Result::is_ok));

        let local = vec![desc(2), Err(Error::InvalidOption("bad".into())), desc(2)];
        let out = agree(&mut ring, "validating their inputs", 2, local);
        assert!(matches!(out[1], Err(Error::InvalidOption(_))));
        for r in [0, 2] {
            match &out[r] {
                Err(Error::RingPeerFailed { rank, failed, .. }) => {
                    assert_eq!((*rank, failed.as_slice()), (r, &[1][..]))
                }
                other => panic!("{other:?}"),
            }
        }

        let out = agree(&mut ring, "validating", 2, vec![desc(2), desc(2), desc(3)]);
        for (r, res) in out.iter().enumerate() {
            match res {
                Err(Error::RingMismatch { rank, what }) => {
                    assert_eq!(*rank, r);
                    assert_eq!(what, "batch: rank 0 has 2, rank 2 has 3");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
