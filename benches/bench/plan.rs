//! Planning: how many input sets each shape rotates over, and the memory it needs.

use super::stats::{rotation_sets, Shape};

/// One shape's input sets and memory needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub shape: Shape,
    /// Input sets rotated over.
    pub sets: usize,
    /// Elements of the random pool the sets take.
    pub pool_elems: usize,
    /// Device bytes needed besides the pool: one output per set, the quantized inputs of every
    /// set (kernel path), the scratch of one full call, and slack.
    pub other_bytes: u64,
}

/// Slack for the allocator and the driver, bytes.
pub const MEMORY_SLACK: u64 = 256 << 20;

pub fn plan(
    shape: Shape,
    l2_bytes: u64,
    sets_override: Option<usize>,
    max_sets: usize,
    bf16: bool,
    pv8: bool,
) -> Plan {
    // With the 8-bit P·V the kernel reads an INT8 V, not the 16-bit one counted here: more sets
    // than needed, never fewer.
    let sets = sets_override
        .unwrap_or_else(|| rotation_sets(shape.kernel_input_bytes(), l2_bytes, max_sets));
    let prepared = shape.prepared_bytes(bf16) + if pv8 { shape.pv8_bytes() } else { 0 };
    let out = 2 * shape.q_elems() as u64;
    Plan {
        shape,
        sets,
        pool_elems: sets * shape.set_elems(),
        other_bytes: sets as u64 * (out + prepared) + prepared + MEMORY_SLACK,
    }
}

/// Elements of the pool: the largest that a plan needs among the plans that fit in `budget`
/// bytes together with their other needs (0 when none fits).
pub fn pool_size(plans: &[Plan], budget: u64) -> usize {
    plans
        .iter()
        .filter(|p| 2 * p.pool_elems as u64 + p.other_bytes <= budget)
        .map(|p| p.pool_elems)
        .max()
        .unwrap_or(0)
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_pool() {
        let l2 = 50 << 20;
        let small = Shape {
            batch: 1,
            heads: 8,
            kv_heads: 8,
            seq: 1024,
            head_dim: 64,
        };
        let p = plan(small, l2, None, 64, false, false);
        // kernel input bytes: q,k i8 (0.5 + 0.5 MiB) + v f16 (1 MiB) = 2 MiB -> 50 sets
        assert_eq!(small.kernel_input_bytes(), 2 << 20);
        assert_eq!(p.sets, 50);
        assert!(p.sets as u64 * small.kernel_input_bytes() >= 2 * l2);
        assert_eq!(p.pool_elems, 50 * small.set_elems());
        let big = Shape {
            batch: 4,
            heads: 32,
            kv_heads: 8,
            seq: 32768,
            head_dim: 128,
        };
        let pb = plan(big, l2, None, 64, false, false);
        assert_eq!(pb.sets, 1);
        assert_eq!(plan(big, l2, Some(3), 64, false, false).sets, 3);
        let budget = 2 * pb.pool_elems as u64 + pb.other_bytes;
        assert_eq!(pool_size(&[p, pb], budget), pb.pool_elems.max(p.pool_elems));
        assert_eq!(pool_size(&[p, pb], budget - 1), p.pool_elems);
        assert_eq!(pool_size(&[pb], 0), 0);
        let p8 = plan(big, l2, None, 64, false, true);
        assert_eq!(p8.sets, pb.sets);
        assert_eq!(
            p8.other_bytes - pb.other_bytes,
            (pb.sets as u64 + 1) * big.pv8_bytes()
        );
    }
}
