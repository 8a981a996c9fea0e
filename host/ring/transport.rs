//! The communication a ring needs, as traits: [`RingTransport`] (who is in the ring, and the small
//! all-reduces of the agreement and of K's sums) and [`RingShift`] (pass each rank's travelling
//! K/V shard to the next rank). [`SimulatedRing`] runs every rank in this thread, moving payloads
//! without copying them; the NCCL transport (`ring::nccl`, feature `nccl`) moves device buffers
//! between GPUs.
//!
//! Every operation takes one entry per *local* rank — the ranks this thread drives, in
//! [`RingTransport::local_ranks`] order: all of them for the simulated ring or for one thread
//! driving every GPU through NCCL group calls, one for a thread or process per GPU. The ring's
//! algorithm is written once against this interface.

use crate::types::error::{Error, Result};

/// Membership and the small collectives.
pub trait RingTransport {
    /// Number of ranks in the ring (`P`).
    fn world_size(&self) -> usize;

    /// The ranks this thread drives, ascending; every per-rank slice the operations take is in
    /// this order.
    fn local_ranks(&self) -> Vec<usize>;

    /// Element-wise sum over every rank of the ring; `bufs[i]` is local rank `i`'s contribution
    /// and receives the sum. Every rank passes the same length.
    fn all_reduce_sum_u64(&mut self, bufs: &mut [Vec<u64>]) -> Result<()>;

    /// As [`RingTransport::all_reduce_sum_u64`], for f32 (used as an all-gather: each rank fills
    /// its own slots and leaves the others 0, and `x + 0 = x` exactly).
    fn all_reduce_sum_f32(&mut self, bufs: &mut [Vec<f32>]) -> Result<()>;
}

/// Passing payloads of type `P` around the ring.
pub trait RingShift<P>: RingTransport {
    /// Called once per local rank with its own payload before the first collective, so that a
    /// transport can allocate what shifting needs (a receive buffer); a failure here is reported
    /// through the agreement like a bad input, so it cannot leave other ranks waiting.
    fn prepare(&mut self, local_index: usize, own: &P) -> Result<()> {
        let _ = (local_index, own);
        Ok(())
    }

    /// Every local rank `r` sends `held[i]` to rank `(r + 1) % P` and, in its place, receives
    /// what rank `(r - 1) % P` held. `held` has one entry per local rank.
    fn shift(&mut self, held: &mut [P]) -> Result<()>;
}

/// All `P` ranks in this thread, one after the other: shifting rotates the payloads (no copy),
/// all-reduces sum in rank order. For tests and for a single GPU (the ranks then share it).
#[derive(Clone, Copy, Debug)]
pub struct SimulatedRing {
    world: usize,
}

impl SimulatedRing {
    /// A ring of `world >= 1` simulated ranks.
    pub fn new(world: usize) -> Result<Self> {
        if world == 0 {
            return Err(Error::InvalidOption(
                "a ring needs at least one rank".into(),
            ));
        }
        Ok(SimulatedRing { world })
    }

    fn check_len(&self, n: usize, op: &str) -> Result<()> {
        if n != self.world {
            return Err(Error::Transport {
                op: op.into(),
                reason: format!(
                    "the simulated ring drives all {} ranks; got {n} buffers",
                    self.world
                ),
            });
        }
        Ok(())
    }
}

/// Element-wise sum of equally long buffers into every one of them, in rank order from zero.
fn sum_into_all<T: Copy + Default + std::ops::Add<Output = T>>(bufs: &mut [Vec<T>]) -> Result<()> {
    let len = bufs.first().map_or(0, Vec::len);
    if let Some(bad) = bufs.iter().position(|b| b.len() != len) {
        return Err(Error::Transport {
            op: "all-reduce".into(),
            reason: format!(
                "rank {bad} contributes {} values, rank 0 {len}",
                bufs[bad].len()
            ),
        });
    }
    let mut total = vec![T::default(); len];
    for b in bufs.iter() {
        for (t, &x) in total.iter_mut().zip(b) {
            *t = *t + x;
        }
    }
    for b in bufs.iter_mut() {
        b.copy_from_slice(&total);
    }
    Ok(())
}

impl RingTransport for SimulatedRing {
    fn world_size(&self) -> usize {
        self.world
    }

    fn local_ranks(&self) -> Vec<usize> {
        (0..self.world).collect()
    }

    fn all_reduce_sum_u64(&mut self, bufs: &mut [Vec<u64>]) -> Result<()> {
        self.check_len(bufs.len(), "all-reduce")?;
        sum_into_all(bufs)
    }

    fn all_reduce_sum_f32(&mut self, bufs: &mut [Vec<f32>]) -> Result<()> {
        self.check_len(bufs.len(), "all-reduce")?;
        sum_into_all(bufs)
    }
}

impl<P> RingShift<P> for SimulatedRing {
    fn shift(&mut self, held: &mut [P]) -> Result<()> {
        self.check_len(held.len(), "shift")?;
        // Rank r now holds what rank r - 1 held.
        held.rotate_right(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_passes_to_the_next_rank_and_sums_reach_everyone() {
        let mut ring = SimulatedRing::new(3).unwrap();
        let mut held = vec!["a", "b", "c"];
        ring.shift(&mut held).unwrap();
        assert_eq!(held, ["c", "a", "b"]);
        let mut bufs = vec![vec![1u64, 0], vec![0, 2], vec![4, 4]];
        ring.all_reduce_sum_u64(&mut bufs).unwrap();
        assert!(bufs.iter().all(|b| b == &[5, 6]));
        assert!(ring.all_reduce_sum_u64(&mut [vec![1], vec![2]]).is_err());
        assert!(ring
            .all_reduce_sum_f32(&mut [vec![1.0], vec![2.0], vec![]])
            .is_err());
    }
}
