//! Explicit unrolling. LLVM's default unroller gives up on fragment loops once their bodies grow
//! (DEVICE-RUST.md §2), which sends the accumulator arrays to local memory; `unroll::<N>` expands
//! the body N times at compile time so every array index is a constant.

/// Calls `f(0), f(1), …, f(N-1)`, fully unrolled. `N` must be at most 32.
#[inline(always)]
pub fn unroll<const N: usize>(mut f: impl FnMut(usize)) {
    const { assert!(N <= 32, "unroll supports at most 32 iterations") };
    seq_macro::seq!(I in 0..32 {
        if I < N {
            f(I);
        }
    });
}
