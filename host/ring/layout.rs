//! Which rows of the sequence each rank holds: the sequence of `seq_len` tokens is cut into equal
//! chunks (sizes differ by at most one row), and each rank holds one chunk ([`ShardLayout::Contiguous`])
//! or two ([`ShardLayout::ZigZag`]: chunks `r` and `2P - 1 - r` of `2P`, so that every rank has as
//! much causal work as every other). A rank's shard is its chunks concatenated in ascending order:
//! that is the local tensor the rank passes to the ring.

use std::ops::Range;

use crate::reference::HostTensor;
use crate::types::error::{Error, Result};

/// How the sequence is cut among the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardLayout {
    /// `P` chunks, rank `r` holds chunk `r`. With a causal mask rank `P - 1` does `P` times the
    /// work of rank 0 (it sees every key), so the ring runs at the speed of the last rank.
    Contiguous,
    /// `2P` chunks, rank `r` holds chunks `r` and `2P - 1 - r` (a head and the mirrored tail):
    /// with a causal mask every rank sees the same number of (query, key) pairs, up to rounding
    /// (the layout of ring-flash-attention's `zigzag_ring_flash_attn` and of Llama 3's context
    /// parallelism).
    ZigZag,
}

impl ShardLayout {
    /// A small stable code, for the agreement between ranks.
    pub(crate) fn code(self) -> u64 {
        match self {
            ShardLayout::Contiguous => 1,
            ShardLayout::ZigZag => 2,
        }
    }
}

/// One chunk as a rank holds it: its rows in the whole sequence and in the rank's shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Chunk index in sequence order (`0..chunks`).
    pub index: usize,
    /// Rows of the whole sequence.
    pub global: Range<usize>,
    /// Rows of the rank's shard (the local tensor).
    pub local: Range<usize>,
}

impl Chunk {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.global.len()
    }

    /// Whether the chunk has no rows (never, for a [`Sharding`] that [`Sharding::new`] accepted).
    pub fn is_empty(&self) -> bool {
        self.global.is_empty()
    }
}

/// The cut of one sequence of `seq_len` rows among `world` ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharding {
    seq_len: usize,
    world: usize,
    layout: ShardLayout,
}

impl Sharding {
    /// Checks that every chunk gets at least one row (`seq_len >= chunks`, `world >= 1`).
    ///
    /// Errors: [`Error::InvalidOption`] naming the values.
    pub fn new(seq_len: usize, world: usize, layout: ShardLayout) -> Result<Self> {
        if world == 0 {
            return Err(Error::InvalidOption(
                "a ring needs at least one rank".into(),
            ));
        }
        let s = Sharding {
            seq_len,
            world,
            layout,
        };
        if seq_len < s.chunk_count() {
            return Err(Error::InvalidOption(format!(
                "a sequence of {seq_len} rows cannot be cut into {} chunks ({layout:?} over \
                 {world} ranks): every chunk needs at least one row",
                s.chunk_count()
            )));
        }
        Ok(s)
    }

    /// Rows of the whole sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The layout.
    pub fn layout(&self) -> ShardLayout {
        self.layout
    }

    /// Number of chunks: `world` (contiguous) or `2 * world` (zig-zag).
    pub fn chunk_count(&self) -> usize {
        match self.layout {
            ShardLayout::Contiguous => self.world,
            ShardLayout::ZigZag => 2 * self.world,
        }
    }

    /// Rows of chunk `c` in the sequence: `c * N / n .. (c + 1) * N / n` (sizes differ by at most
    /// one). When `N` is a multiple of `n × 256` every chunk starts on a K-mean segment, a Q block
    /// (128) and a K block (64) boundary of the single call.
    pub fn chunk_rows(&self, c: usize) -> Range<usize> {
        let n = self.chunk_count();
        assert!(c < n, "chunk {c} out of range ({n} chunks)");
        // u128: seq_len * chunk cannot overflow.
        let at = |i: usize| (self.seq_len as u128 * i as u128 / n as u128) as usize;
        at(c)..at(c + 1)
    }

    /// The chunk indices rank `r` holds, ascending.
    pub fn chunk_indices(&self, rank: usize) -> Vec<usize> {
        assert!(
            rank < self.world,
            "rank {rank} out of range ({} ranks)",
            self.world
        );
        match self.layout {
            ShardLayout::Contiguous => vec![rank],
            ShardLayout::ZigZag => vec![rank, 2 * self.world - 1 - rank],
        }
    }

    /// The chunks rank `r` holds, ascending, with their rows in its shard.
    pub fn chunks(&self, rank: usize) -> Vec<Chunk> {
        let mut local = 0;
        self.chunk_indices(rank)
            .into_iter()
            .map(|index| {
                let global = self.chunk_rows(index);
                let len = global.len();
                local += len;
                Chunk {
                    index,
                    global,
                    local: local - len..local,
                }
            })
            .collect()
    }

    /// Rows of rank `r`'s shard.
    pub fn shard_len(&self, rank: usize) -> usize {
        self.chunks(rank).iter().map(Chunk::len).sum()
    }

    /// The longest shard (the capacity of the buffers a K/V shard travels in).
    pub fn max_shard_len(&self) -> usize {
        (0..self.world)
            .map(|r| self.shard_len(r))
            .max()
            .unwrap_or(0)
    }

    /// Rank `r`'s shard of a whole-sequence tensor (`[batch, heads, seq_len, d]`): its chunks'
    /// rows concatenated, contiguous HND.
    ///
    /// # Panics
    /// If the tensor's sequence length is not `seq_len`.
    pub fn shard_host(&self, t: &HostTensor, rank: usize) -> HostTensor {
        assert_eq!(
            t.seq(),
            self.seq_len,
            "the tensor has {} rows, the sharding {}",
            t.seq(),
            self.seq_len
        );
        let chunks = self.chunks(rank);
        let mut shape = t.shape;
        shape[2] = self.shard_len(rank);
        let mut out = HostTensor::contiguous(shape, false);
        for c in &chunks {
            for b in 0..shape[0] {
                for h in 0..shape[1] {
                    for (g, l) in c.global.clone().zip(c.local.clone()) {
                        for d in 0..shape[3] {
                            out.set(b, h, l, d, t.get(b, h, g, d));
                        }
                    }
                }
            }
        }
        out
    }

    /// The inverse of [`Sharding::shard_host`] for row data: `per_rank[r]` holds rank `r`'s rows
    /// `[batch][heads][shard_len(r)][width]` (width = head_dim for outputs, 1 for LSE); returns
    /// `[batch][heads][seq_len][width]`.
    ///
    /// # Panics
    /// If `per_rank` does not hold `world` buffers of the right sizes.
    pub fn unshard_rows<T: Copy + Default>(
        &self,
        per_rank: &[Vec<T>],
        batch: usize,
        heads: usize,
        width: usize,
    ) -> Vec<T> {
        assert_eq!(per_rank.len(), self.world, "one buffer per rank");
        let mut out = vec![T::default(); batch * heads * self.seq_len * width];
        for (rank, data) in per_rank.iter().enumerate() {
            let len = self.shard_len(rank);
            assert_eq!(
                data.len(),
                batch * heads * len * width,
                "rank {rank}: {} values for {batch}×{heads}×{len}×{width}",
                data.len()
            );
            for c in self.chunks(rank) {
                for bh in 0..batch * heads {
                    let src = (bh * len + c.local.start) * width;
                    let dst = (bh * self.seq_len + c.global.start) * width;
                    let n = c.len() * width;
                    out[dst..dst + n].copy_from_slice(&data[src..src + n]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_tile_the_sequence_once() {
        for layout in [ShardLayout::Contiguous, ShardLayout::ZigZag] {
            for world in 1..=6 {
                for seq_len in [2 * world, 97, 1000, 4096] {
                    let s = Sharding::new(seq_len, world, layout).unwrap();
                    let mut seen = vec![0u8; seq_len];
                    for r in 0..world {
                        let chunks = s.chunks(r);
                        assert!(chunks.windows(2).all(|w| w[0].index < w[1].index));
                        assert_eq!(chunks.last().unwrap().local.end, s.shard_len(r));
                        for c in chunks {
                            assert!(!c.is_empty());
                            c.global.clone().for_each(|g| seen[g] += 1);
                        }
                    }
                    assert!(seen.iter().all(|&n| n == 1), "{layout:?} {world} {seq_len}");
                }
            }
        }
        assert!(Sharding::new(3, 2, ShardLayout::ZigZag).is_err());
        assert!(Sharding::new(10, 0, ShardLayout::Contiguous).is_err());
    }

    #[test]
    fn zigzag_pairs_head_and_tail() {
        let s = Sharding::new(800, 4, ShardLayout::ZigZag).unwrap();
        assert_eq!(s.chunk_indices(0), [0, 7]);
        assert_eq!(s.chunk_indices(3), [3, 4]);
        assert_eq!(s.chunks(1)[1].global, 600..700);
        assert_eq!(s.chunks(1)[1].local, 100..200);
    }
}
