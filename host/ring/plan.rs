//! Which attention calls one ring step makes: the causal relation between a query chunk and a key
//! chunk ([`visibility`]) and the blocks (row ranges of the Q shard × row ranges of the K/V shard)
//! that cover exactly the visible (query, key) pairs ([`plan_blocks`]).
//!
//! With the zig-zag layout every step is one call: the own shard is one causal call (its chunks
//! are ascending, so the local lower triangle is the global mask), a shard from a lower rank is
//! the whole Q shard against that shard's first chunk, and a shard from a higher rank is the Q
//! shard's second chunk against the whole shard — each `2C²` pairs for chunks of `C` rows.

use std::ops::Range;

use super::layout::{Chunk, Sharding};

/// How a query chunk sees a key chunk under the mask (chunks in sequence order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Every query sees every key (no mask, or the key chunk lies before the query chunk).
    Full,
    /// The same chunk: query `i` sees key `j` iff `j <= i` (a causal call with equal lengths).
    Diagonal,
    /// No query sees any key (the key chunk lies after the query chunk): no call at all.
    Hidden,
}

/// The relation of query chunk `q_chunk` to key chunk `k_chunk`.
pub fn visibility(q_chunk: usize, k_chunk: usize, causal: bool) -> Visibility {
    use std::cmp::Ordering::*;
    match (causal, k_chunk.cmp(&q_chunk)) {
        (false, _) | (true, Less) => Visibility::Full,
        (true, Equal) => Visibility::Diagonal,
        (true, Greater) => Visibility::Hidden,
    }
}

/// One attention call of a ring step: rows `q` of the rank's Q shard against rows `k` of the K/V
/// shard it holds, causal (bottom-right, here always with `q.len() == k.len()`) or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Rows of the Q shard.
    pub q: Range<usize>,
    /// Rows of the K/V shard.
    pub k: Range<usize>,
    /// Whether the call is causal.
    pub causal: bool,
}

impl Block {
    /// Number of (query, key) pairs the call computes (the causal triangle counts its diagonal).
    pub fn pairs(&self) -> u64 {
        let (q, k) = (self.q.len() as u64, self.k.len() as u64);
        if self.causal {
            // Bottom-right: query i sees min(k, i + 1 + k - q) keys when that is positive.
            (0..q).map(|i| (i + 1 + k).saturating_sub(q).min(k)).sum()
        } else {
            q * k
        }
    }
}

/// The calls rank `q_rank` makes against the K/V shard of rank `kv_rank`: together they cover
/// every visible (query, key) pair exactly once, and nothing hidden. Empty when nothing is visible.
pub fn plan_blocks(sharding: &Sharding, q_rank: usize, kv_rank: usize, causal: bool) -> Vec<Block> {
    let (q_chunks, k_chunks) = (sharding.chunks(q_rank), sharding.chunks(kv_rank));
    let whole = |chunks: &[Chunk]| 0..chunks.last().map_or(0, |c| c.local.end);
    if !causal {
        return vec![Block {
            q: whole(&q_chunks),
            k: whole(&k_chunks),
            causal: false,
        }];
    }
    if q_rank == kv_rank {
        // The shard's chunks are ascending, so in local rows the global mask is the plain lower
        // triangle: key chunks before a query chunk are fully visible, its own chunk is diagonal,
        // later ones hidden.
        return vec![Block {
            q: whole(&q_chunks),
            k: whole(&k_chunks),
            causal: true,
        }];
    }
    // Different ranks hold different chunks: every pair of chunks is Full or Hidden. Per query
    // chunk, the visible key chunks as maximal runs of adjacent local rows; consecutive query
    // chunks with the same runs share their calls.
    let runs_of = |q: &Chunk| -> Vec<Range<usize>> {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for k in &k_chunks {
            match visibility(q.index, k.index, true) {
                Visibility::Full => match runs.last_mut() {
                    Some(run) if run.end == k.local.start => run.end = k.local.end,
                    _ => runs.push(k.local.clone()),
                },
                Visibility::Hidden => {}
                Visibility::Diagonal => unreachable!("two ranks never hold the same chunk"),
            }
        }
        runs
    };
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < q_chunks.len() {
        let runs = runs_of(&q_chunks[i]);
        let mut j = i + 1;
        while j < q_chunks.len() && runs_of(&q_chunks[j]) == runs {
            j += 1;
        }
        let q = q_chunks[i].local.start..q_chunks[j - 1].local.end;
        blocks.extend(runs.into_iter().map(|k| Block {
            q: q.clone(),
            k,
            causal: false,
        }));
        i = j;
    }
    blocks
}

/// The (query, key) pairs rank `rank` computes over the whole ring: its share of the work.
pub fn rank_work(sharding: &Sharding, rank: usize, causal: bool) -> u64 {
    (0..sharding.world())
        .flat_map(|source| plan_blocks(sharding, rank, source, causal))
        .map(|b| b.pairs())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::layout::ShardLayout;
    use super::*;

    /// Global row of local row `l` of a rank's shard.
    fn global(chunks: &[Chunk], l: usize) -> usize {
        let c = chunks.iter().find(|c| c.local.contains(&l)).unwrap();
        c.global.start + (l - c.local.start)
    }

    #[test]
    fn blocks_cover_exactly_the_visible_pairs() {
        for layout in [ShardLayout::Contiguous, ShardLayout::ZigZag] {
            for world in 1..=5 {
                for seq_len in [2 * world, 2 * world + 1, 37, 64] {
                    let s = Sharding::new(seq_len, world, layout).unwrap();
                    for causal in [false, true] {
                        let mut count = vec![0u8; seq_len * seq_len];
                        for qr in 0..world {
                            for kr in 0..world {
                                let (qc, kc) = (s.chunks(qr), s.chunks(kr));
                                for b in plan_blocks(&s, qr, kr, causal) {
                                    assert!(!b.causal || b.q.len() == b.k.len());
                                    for qi in b.q.clone() {
                                        for kj in b.k.clone() {
                                            // Bottom-right with equal lengths: kj - k0 <= qi - q0.
                                            if b.causal && kj - b.k.start > qi - b.q.start {
                                                continue;
                                            }
                                            count[global(&qc, qi) * seq_len + global(&kc, kj)] += 1;
                                        }
                                    }
                                }
                            }
                        }
                        for i in 0..seq_len {
                            for j in 0..seq_len {
                                let want = u8::from(!causal || j <= i);
                                assert_eq!(
                                    count[i * seq_len + j],
                                    want,
                                    "{layout:?} P={world} N={seq_len} causal={causal} ({i},{j})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn zigzag_is_one_call_per_step_and_balanced() {
        let (world, chunk) = (4, 100);
        let s = Sharding::new(2 * world * chunk, world, ShardLayout::ZigZag).unwrap();
        let c = chunk as u64;
        for r in 0..world {
            for source in 0..world {
                let blocks = plan_blocks(&s, r, source, true);
                assert_eq!(blocks.len(), 1, "rank {r} source {source}: {blocks:?}");
                let pairs = blocks[0].pairs();
                if source == r {
                    assert_eq!(pairs, 2 * c * c + c, "the causal triangle of 2C rows");
                } else {
                    assert_eq!(pairs, 2 * c * c);
                }
            }
        }
        let work: Vec<u64> = (0..world).map(|r| rank_work(&s, r, true)).collect();
        assert!(work.iter().all(|&w| w == work[0]), "{work:?}");

        let contiguous = Sharding::new(2 * world * chunk, world, ShardLayout::Contiguous).unwrap();
        let work: Vec<u64> = (0..world)
            .map(|r| rank_work(&contiguous, r, true))
            .collect();
        assert!(work[world - 1] > 6 * work[0], "{work:?}");
    }
}
