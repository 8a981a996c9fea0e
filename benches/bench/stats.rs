//! Pure arithmetic of the bench: FLOP counts, TOPS, percentiles, rotation sets, sizes.

use serde::{Deserialize, Serialize};

/// Summary of the per-launch times of one path of one case, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of timed launches.
    pub iters: usize,
    /// Median time.
    pub median_ms: f64,
    /// Fastest launch.
    pub min_ms: f64,
    /// Slowest launch.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// 10th percentile (linear interpolation, as numpy's default).
    pub p10_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
}

/// The `p`-th percentile (0..=100) of sorted samples, interpolating linearly between the two
/// nearest ranks (numpy's default, `method="linear"`). `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Summarizes launch times (ms). Non-finite samples are dropped; `None` if none is left.
pub fn summarize(samples_ms: &[f64]) -> Option<Stats> {
    let mut s: Vec<f64> = samples_ms
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    Some(Stats {
        iters: s.len(),
        median_ms: percentile(&s, 50.0)?,
        min_ms: s[0],
        max_ms: s[s.len() - 1],
        mean_ms: s.iter().sum::<f64>() / s.len() as f64,
        p10_ms: percentile(&s, 10.0)?,
        p90_ms: percentile(&s, 90.0)?,
    })
}

/// Floating-point operations of one attention call, the convention of the FlashAttention and
/// SageAttention papers: `4 · batch · heads · seq_q · seq_kv · head_dim` (two matrix products of
/// 2 flops per multiply-add), halved for causal masking. `heads` are the query heads (with GQA
/// every query head still does its own products).
pub fn attention_flops(
    batch: usize,
    heads: usize,
    seq_q: usize,
    seq_kv: usize,
    head_dim: usize,
    causal: bool,
) -> f64 {
    let full = 4.0 * batch as f64 * heads as f64 * seq_q as f64 * seq_kv as f64 * head_dim as f64;
    if causal {
        full / 2.0
    } else {
        full
    }
}

/// Tera-operations per second of `flops` done in `ms` milliseconds (0 for a non-positive time).
pub fn tops(flops: f64, ms: f64) -> f64 {
    if ms > 0.0 && ms.is_finite() {
        flops / (ms * 1e-3) / 1e12
    } else {
        0.0
    }
}

/// Share of the full call spent outside the attention kernel, in percent:
/// `(full - kernel) / full · 100`.
pub fn overhead_pct(kernel_ms: f64, full_ms: f64) -> Option<f64> {
    (full_ms > 0.0 && full_ms.is_finite() && kernel_ms.is_finite())
        .then(|| (full_ms - kernel_ms) / full_ms * 100.0)
}

/// Number of input sets to rotate over so that their bytes together exceed `2 · l2_bytes`
/// (at least 1, at most `max_sets`).
pub fn rotation_sets(set_bytes: u64, l2_bytes: u64, max_sets: usize) -> usize {
    let max_sets = max_sets.max(1);
    if set_bytes == 0 {
        return max_sets;
    }
    let need = (2 * l2_bytes).div_ceil(set_bytes);
    (need as usize).clamp(1, max_sets)
}

/// Round `len` up to a multiple of `block`.
pub fn padded(len: usize, block: usize) -> usize {
    len.div_ceil(block) * block
}

/// The shape of one bench case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Sequence length (queries and keys).
    pub seq: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl Shape {
    /// Elements of Q (and of the output).
    pub fn q_elems(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_dim
    }
    /// Elements of K (and of V).
    pub fn kv_elems(&self) -> usize {
        self.batch * self.kv_heads * self.seq * self.head_dim
    }
    /// Q's `[batch, heads, seq, head_dim]`.
    pub fn q_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.seq, self.head_dim]
    }
    /// K's (and V's) `[batch, kv_heads, seq, head_dim]`.
    pub fn kv_shape(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.seq, self.head_dim]
    }
    /// 16-bit elements of one input set in the pool: Q, K and V.
    pub fn set_elems(&self) -> usize {
        self.q_elems() + 2 * self.kv_elems()
    }
    /// Bytes the attention kernel reads per call: INT8 Q and K, 16-bit V.
    pub fn kernel_input_bytes(&self) -> u64 {
        (self.q_elems() + self.kv_elems() + 2 * self.kv_elems()) as u64
    }
    /// Device bytes of the quantized Q/K and their scales and K's mean (what `Prepared` holds),
    /// plus a converted V when the input is bf16. Padded as the library pads (Q to 128 rows, K to
    /// 64).
    pub fn prepared_bytes(&self, bf16: bool) -> u64 {
        let (b, h, hk, d) = (self.batch, self.heads, self.kv_heads, self.head_dim);
        let q = b * h * padded(self.seq, 128) * d + 4 * b * h * self.seq.div_ceil(128);
        let k = b * hk * padded(self.seq, 64) * d + 4 * b * hk * self.seq.div_ceil(64);
        let mean = 4 * b * hk * d;
        let v = if bf16 { 2 * self.kv_elems() } else { 0 };
        (q + k + mean + v) as u64
    }
    /// Device bytes the 8-bit P·V adds to what [`Shape::prepared_bytes`] counts: the INT8 Vᵀ
    /// (padded to 128 keys, head_dim rounded up to the kernel's 64/128), its per-channel mean and
    /// scales, and the per-256-row segment statistics. A slight over-estimate.
    pub fn pv8_bytes(&self) -> u64 {
        let (bh, d) = (self.batch * self.kv_heads, self.head_dim);
        let dk = d.next_multiple_of(64);
        let vt = bh * dk * padded(self.seq, 128);
        let stats = bh * (3 * 4 * dk + 3 * 4 * d * (self.seq.div_ceil(256) + 1));
        (vt + stats) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        let s = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [0,10,50,90,100]) = [1, 1.3, 2.5, 3.7, 4]
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(percentile(&s, 0.0).unwrap(), 1.0));
        assert!(close(percentile(&s, 10.0).unwrap(), 1.3));
        assert!(close(percentile(&s, 50.0).unwrap(), 2.5));
        assert!(close(percentile(&s, 90.0).unwrap(), 3.7));
        assert!(close(percentile(&s, 100.0).unwrap(), 4.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summarize_sorts_and_drops_nan() {
        let st = summarize(&[5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(st.iters, 5);
        assert_eq!(st.median_ms, 3.0);
        assert_eq!(st.min_ms, 1.0);
        assert_eq!(st.max_ms, 5.0);
        assert_eq!(st.mean_ms, 3.0);
        assert!((st.p10_ms - 1.4).abs() < 1e-12);
        assert!((st.p90_ms - 4.6).abs() < 1e-12);
        assert!(summarize(&[f64::NAN]).is_none());
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn flops_and_tops() {
        // B=4, H=32, N=4096, d=128: 4·4·32·4096²·128 = 1.099511627776e12
        let f = attention_flops(4, 32, 4096, 4096, 128, false);
        assert_eq!(f, 1_099_511_627_776.0);
        assert_eq!(attention_flops(4, 32, 4096, 4096, 128, true), f / 2.0);
        // 1.0995e12 flops in 2 ms = 549.76 TOPS
        assert!((tops(f, 2.0) - 549.755_813_888).abs() < 1e-6);
        assert_eq!(tops(f, 0.0), 0.0);
        assert_eq!(tops(f, f64::NAN), 0.0);
    }

    #[test]
    fn overhead() {
        assert!((overhead_pct(0.8, 1.0).unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(overhead_pct(1.0, 0.0), None);
        assert!(overhead_pct(1.2, 1.0).unwrap() < 0.0);
    }

    #[test]
    fn rotation() {
        let l2 = 50 << 20;
        assert_eq!(rotation_sets(1 << 30, l2, 64), 1);
        assert_eq!(rotation_sets(30 << 20, l2, 64), 4); // 100 MiB / 30 MiB -> 4
        assert_eq!(rotation_sets(25 << 20, l2, 64), 4); // exactly 2·L2 -> 4 sets
        assert_eq!(rotation_sets(1 << 10, l2, 64), 64);
        assert_eq!(rotation_sets(0, l2, 8), 8);
        assert_eq!(rotation_sets(1, 0, 8), 1);
    }

    #[test]
    fn shape_sizes_gqa_and_padding() {
        let s = Shape {
            batch: 2,
            heads: 8,
            kv_heads: 2,
            seq: 1000,
            head_dim: 64,
        };
        assert_eq!(s.q_elems(), 2 * 8 * 1000 * 64);
        assert_eq!(s.kv_elems(), 2 * 2 * 1000 * 64);
        assert_eq!(s.set_elems(), s.q_elems() + 2 * s.kv_elems());
        assert_eq!(
            s.kernel_input_bytes(),
            (s.q_elems() + 3 * s.kv_elems()) as u64
        );
        let q = 2 * 8 * 1024 * 64 + 4 * 2 * 8 * 8;
        let k = 2 * 2 * 1024 * 64 + 4 * 2 * 2 * 16;
        assert_eq!(s.prepared_bytes(false), (q + k + 4 * 2 * 2 * 64) as u64);
        assert_eq!(
            s.prepared_bytes(true),
            s.prepared_bytes(false) + 2 * s.kv_elems() as u64
        );
        // INT8 Vᵀ: 4 heads × 64 channels × 1024 padded keys, plus statistics.
        assert!(s.pv8_bytes() >= 4 * 64 * 1024 && s.pv8_bytes() < 4 * 64 * 1024 * 11 / 10);
    }
}
