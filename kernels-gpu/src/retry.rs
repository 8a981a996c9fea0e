//! When the f16 kernels try an unmasked tile against the lagging max (the running max as it
//! stands, without the tile's own): a backoff after tiles that had to be taken again.
//!
//! Scores that rise steadily along the keys (an ALiBi-like slope, `bench --inputs recency`)
//! would make every such tile retry, each retry costing the tile's Q·Kᵀ and exponentials a second
//! time. After a retry the next unmasked tiles go straight to the exact softmax, 1, 3, 7, then 15
//! of them after retries in a row, and a tile kept on the fast path starts the count over. The CPU
//! model (`scripts/retry-model.py --cooldown 15`, the same rule) cuts the retries on such a slope
//! to 10–21% of the tiles and leaves the shapes that rarely retry as they were (N(0,1), rotary,
//! decays). The state must be uniform over the threads that decide together (a warp, a
//! warpgroup): it moves only on their common vote.

/// The backoff state of one deciding group of threads.
#[derive(Clone, Copy)]
pub(crate) struct RetryBackoff {
    /// Unmasked tiles still to take exactly.
    wait: u32,
    /// Tiles the last retry made wait (0 after a tile kept on the fast path).
    last: u32,
}

impl RetryBackoff {
    const MAX_WAIT: u32 = 15;

    /// No retry yet.
    #[inline(always)]
    pub fn new() -> Self {
        RetryBackoff { wait: 0, last: 0 }
    }

    /// Whether the next unmasked tile may try the fast path.
    #[inline(always)]
    pub fn may_try(&self) -> bool {
        self.wait == 0
    }

    /// An unmasked tile kept on the fast path.
    #[inline(always)]
    pub fn kept(&mut self) {
        self.last = 0;
    }

    /// An unmasked tile that had to be taken again.
    #[inline(always)]
    pub fn retried(&mut self) {
        self.last = (2 * self.last + 1).min(Self::MAX_WAIT);
        self.wait = self.last;
    }

    /// An unmasked tile taken exactly without trying.
    #[inline(always)]
    pub fn waited(&mut self) {
        self.wait -= 1;
    }
}
