//! `--varlen`, the CPU-only parts: the seeded length mix, the cases, the FLOP count of a packed
//! batch, the JSON and the table.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use super::report::{DeviceJson, PathJson};
use super::stats::attention_flops;

/// Version of the `--varlen` JSON layout.
pub const VARLEN_JSON_VERSION: u32 = 1;

/// Mixed sequence lengths: `n` lengths drawn uniformly from `min..=max` by a xoshiro256++ stream
/// of `seed` (the same lengths for the same seed on every machine).
pub fn mix_lengths(seed: u64, n: usize, min: usize, max: usize) -> Vec<usize> {
    // A stream of its own, apart from the input data's streams of the same seed.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x7661_726c_656e);
    (0..n).map(|_| rng.gen_range(min..=max)).collect()
}

/// `batch + 1` prefix sums of `lens`, as the library takes them. `None` when the total does not
/// fit in an `i32`.
pub fn prefix_sums(lens: &[usize]) -> Option<Vec<i32>> {
    let mut cu = Vec::with_capacity(lens.len() + 1);
    let mut total = 0i32;
    cu.push(total);
    for &l in lens {
        total = total.checked_add(i32::try_from(l).ok()?)?;
        cu.push(total);
    }
    Some(cu)
}

/// Operations of a packed batch: the sum over its sequences of `4 · L_q · L_k · H · d` (each
/// sequence attends to its own keys only), halved for causal.
pub fn varlen_flops(lens: &[usize], heads: usize, head_dim: usize, causal: bool) -> f64 {
    lens.iter()
        .map(|&l| attention_flops(1, heads, l, l, head_dim, causal))
        .sum()
}

/// What a `--varlen` case packs, and the batched call it is measured against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseKind {
    /// Mixed lengths; the batched call pads every sequence to the longest.
    Mix,
    /// Equal lengths; the batched call is the same tokens, the same memory.
    Equal,
}

/// One case: its sequences (queries = keys per sequence) and what the batched call runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarlenCase {
    /// Mix or equal lengths.
    pub kind: CaseKind,
    /// Sequence lengths.
    pub lens: Vec<usize>,
    /// Head dimension.
    pub head_dim: usize,
    /// Causal mask (within each sequence).
    pub causal: bool,
}

impl VarlenCase {
    /// Tokens of the packed batch.
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }
    /// `(batch, seq)` of the batched call: every sequence padded to the longest (for equal
    /// lengths, that is no padding).
    pub fn batched(&self) -> (usize, usize) {
        (
            self.lens.len(),
            self.lens.iter().copied().max().unwrap_or(0),
        )
    }
    /// The label in the table.
    pub fn label(&self) -> String {
        let (b, n) = self.batched();
        match self.kind {
            CaseKind::Mix => format!("mix {b} x {}..{}", self.lens.iter().min().unwrap_or(&0), n),
            CaseKind::Equal => format!("equal {b} x {n}"),
        }
    }
}

/// The cases of a run: per head_dim and causal setting, the mix, then `batch` sequences of each
/// equal length.
pub fn varlen_cases(
    mix: &[usize],
    batch: usize,
    seq_lens: &[usize],
    head_dims: &[usize],
    causal: &[bool],
) -> Vec<VarlenCase> {
    let mut cases = Vec::new();
    for &head_dim in head_dims {
        for &c in causal {
            cases.push(VarlenCase {
                kind: CaseKind::Mix,
                lens: mix.to_vec(),
                head_dim,
                causal: c,
            });
            for &n in seq_lens {
                cases.push(VarlenCase {
                    kind: CaseKind::Equal,
                    lens: vec![n; batch],
                    head_dim,
                    causal: c,
                });
            }
        }
    }
    cases
}

/// What a `--varlen` run was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarlenConfigJson {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// `f16` or `bf16`.
    pub dtype: String,
    /// `f16` or `f32`.
    pub pv_accum: String,
    /// `f16` or `int8`.
    pub pv_precision: String,
    /// K smoothing on.
    pub smooth_k: bool,
    /// The mix's lengths.
    pub mix: Vec<usize>,
    /// Sequences of the equal-length cases.
    pub batch: usize,
    /// Their lengths.
    pub seq_lens: Vec<usize>,
    /// Seed of the lengths and the data.
    pub seed: u64,
}

/// One case's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarlenCaseJson {
    /// Mix or equal lengths.
    pub kind: CaseKind,
    /// Head dimension.
    pub head_dim: usize,
    /// Causal within each sequence.
    pub causal: bool,
    /// Sequence lengths (queries = keys).
    pub lens: Vec<usize>,
    /// Tokens of the packed batch.
    pub tokens: usize,
    /// Useful operations (see [`varlen_flops`]); both paths' TOPS divide these.
    pub flops: f64,
    /// `[batch, heads, seq, head_dim]` of the batched call.
    pub batched_shape: [usize; 4],
    /// Input sets rotated over.
    pub sets: usize,
    /// `sageattn_varlen_into` on the packed batch.
    pub varlen: Option<PathJson>,
    /// `sageattn_into` on the batched tensors.
    pub batched: Option<PathJson>,
    /// Batched median time / varlen median time: > 1 when the packed call is faster.
    pub speedup: Option<f64>,
    /// Why the case did not run.
    pub skipped: Option<String>,
}

/// The startup check of `sageattn_varlen` against the float64 varlen reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarlenCheckJson {
    /// Head dimension.
    pub head_dim: usize,
    /// Causal.
    pub causal: bool,
    /// The (query, key) lengths checked.
    pub lens: Vec<(usize, usize)>,
    /// Relative L1 error.
    pub rel_l1: f64,
    /// Cosine similarity.
    pub cos_sim: f64,
    /// Within the bounds.
    pub ok: bool,
}

/// The `--json` of a `--varlen` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarlenReport {
    /// `sageattention-bench-varlen`.
    pub tool: String,
    /// [`VARLEN_JSON_VERSION`].
    pub version: u32,
    /// The GPU.
    pub device: Option<DeviceJson>,
    /// What was asked for.
    pub config: VarlenConfigJson,
    /// The startup checks.
    pub self_check: Vec<VarlenCheckJson>,
    /// Every case, in run order.
    pub cases: Vec<VarlenCaseJson>,
    /// Wall time of the run.
    pub wall_seconds: f64,
    /// What stopped the run early.
    pub error: Option<String>,
}

/// `batched ms / varlen ms`, when both ran.
pub fn speedup(varlen: Option<&PathJson>, batched: Option<&PathJson>) -> Option<f64> {
    let (v, b) = (varlen?.stats.median_ms, batched?.stats.median_ms);
    (v > 0.0 && b.is_finite()).then(|| b / v)
}

/// The table: one row per case.
pub fn render_varlen_table(r: &VarlenReport) -> String {
    let header = [
        "d",
        "causal",
        "case",
        "tokens",
        "varlen ms",
        "TOPS",
        "batched [B, N]",
        "batched ms",
        "TOPS",
        "batched/varlen",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for c in &r.cases {
        let case = VarlenCase {
            kind: c.kind.clone(),
            lens: c.lens.clone(),
            head_dim: c.head_dim,
            causal: c.causal,
        };
        let ms = |p: &Option<PathJson>| {
            p.as_ref()
                .map_or("-".into(), |p| format!("{:.4}", p.stats.median_ms))
        };
        let tops =
            |p: &Option<PathJson>| p.as_ref().map_or("-".into(), |p| format!("{:.1}", p.tops));
        let [b, _, n, _] = c.batched_shape;
        let mut row = vec![
            c.head_dim.to_string(),
            if c.causal { "on" } else { "off" }.into(),
            case.label(),
            c.tokens.to_string(),
        ];
        if let Some(why) = &c.skipped {
            row.push(format!("skipped: {why}"));
        } else {
            row.extend([
                ms(&c.varlen),
                tops(&c.varlen),
                format!("[{b}, {n}]"),
                ms(&c.batched),
                tops(&c.batched),
                c.speedup.map_or(String::new(), |s| format!("{s:.2}x")),
            ]);
        }
        rows.push(row);
    }
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows.iter().filter(|r| r.len() == header.len()) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            if i > 0 {
                s.push_str("  ");
            }
            if i < 3 || i >= width.len() {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "{c:>w$}");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    out += &line(&width.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>());
    for r in &rows {
        out += &line(r);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn the_mix_is_seeded_and_in_range() {
        let a = mix_lengths(20_241_002, 16, 128, 8192);
        // The default mix (docs/bench.md quotes it): the stream must not change unnoticed.
        assert_eq!(
            a,
            [
                8023, 7606, 6828, 3882, 2777, 1277, 328, 6000, 7764, 380, 503, 2870, 275, 3288,
                6616, 8175
            ]
        );
        assert_eq!(a.len(), 16);
        assert!(a.iter().all(|&l| (128..=8192).contains(&l)), "{a:?}");
        assert_eq!(a, mix_lengths(20_241_002, 16, 128, 8192));
        assert_ne!(a, mix_lengths(1, 16, 128, 8192));
        // Not all equal, not all on a tile boundary.
        assert!(a.iter().any(|&l| l != a[0]) && a.iter().any(|l| l % 64 != 0));
        assert_eq!(mix_lengths(3, 4, 77, 77), [77; 4]);
    }

    #[test]
    fn prefix_sums_and_flops() {
        assert_eq!(prefix_sums(&[3, 0, 7]), Some(vec![0, 3, 3, 10]));
        assert_eq!(prefix_sums(&[]), Some(vec![0]));
        assert_eq!(prefix_sums(&[1 << 30, 1 << 30]), None);
        // 4·L²·H·d per sequence: 4·(100² + 200²)·2·64, halved for causal.
        let f = varlen_flops(&[100, 200], 2, 64, false);
        assert_eq!(f, 4.0 * (10_000.0 + 40_000.0) * 2.0 * 64.0);
        assert_eq!(varlen_flops(&[100, 200], 2, 64, true), f / 2.0);
        // Equal lengths: the batched call's count.
        assert_eq!(
            varlen_flops(&[4096; 4], 32, 128, false),
            attention_flops(4, 32, 4096, 4096, 128, false)
        );
    }

    #[test]
    fn cases_and_labels() {
        let cases = varlen_cases(
            &[300, 5000, 128],
            4,
            &[1024, 4096],
            &[64, 128],
            &[false, true],
        );
        assert_eq!(cases.len(), 2 * 2 * 3);
        assert_eq!(cases[0].kind, CaseKind::Mix);
        assert_eq!(cases[0].label(), "mix 3 x 128..5000");
        assert_eq!(cases[0].batched(), (3, 5000));
        assert_eq!(cases[0].tokens(), 5428);
        assert_eq!(cases[2].label(), "equal 4 x 4096");
        assert_eq!(cases[2].batched(), (4, 4096));
        assert!(cases[3].causal && cases[3].kind == CaseKind::Mix);
        assert_eq!(cases[6].head_dim, 128);
    }

    fn path(ms: f64, flops: f64) -> PathJson {
        PathJson {
            stats: Stats {
                iters: 10,
                median_ms: ms,
                min_ms: ms,
                max_ms: ms,
                mean_ms: ms,
                p10_ms: ms,
                p90_ms: ms,
            },
            tops: flops / (ms * 1e-3) / 1e12,
            tops_max: flops / (ms * 1e-3) / 1e12,
            host_enqueue_ms: Some(0.1),
        }
    }

    pub(crate) fn fake_report() -> VarlenReport {
        let lens = vec![300, 5000, 128];
        let flops = varlen_flops(&lens, 32, 128, false);
        let (v, b) = (path(2.0, flops), path(3.0, flops));
        VarlenReport {
            tool: "sageattention-bench-varlen".into(),
            version: VARLEN_JSON_VERSION,
            device: None,
            config: VarlenConfigJson {
                heads: 32,
                kv_heads: 32,
                dtype: "f16".into(),
                pv_accum: "f16".into(),
                pv_precision: "f16".into(),
                smooth_k: true,
                mix: lens.clone(),
                batch: 4,
                seq_lens: vec![4096],
                seed: 1,
            },
            self_check: Vec::new(),
            cases: vec![
                VarlenCaseJson {
                    kind: CaseKind::Mix,
                    head_dim: 128,
                    causal: false,
                    tokens: 5428,
                    flops,
                    batched_shape: [3, 32, 5000, 128],
                    sets: 1,
                    speedup: speedup(Some(&v), Some(&b)),
                    varlen: Some(v),
                    batched: Some(b),
                    skipped: None,
                    lens,
                },
                VarlenCaseJson {
                    kind: CaseKind::Equal,
                    head_dim: 128,
                    causal: true,
                    lens: vec![4096; 4],
                    tokens: 4 * 4096,
                    flops: 0.0,
                    batched_shape: [4, 32, 4096, 128],
                    sets: 0,
                    varlen: None,
                    batched: None,
                    speedup: None,
                    skipped: Some("does not fit in GPU memory".into()),
                },
            ],
            wall_seconds: 1.0,
            error: None,
        }
    }

    #[test]
    fn table_and_json() {
        let r = fake_report();
        assert_eq!(r.cases[0].speedup, Some(1.5));
        let text = render_varlen_table(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("d") && lines[0].ends_with("batched/varlen"),
            "{text}"
        );
        assert_eq!(lines[0].len(), lines[1].len(), "{text}");
        assert!(
            lines[2].contains("mix 3 x 128..5000") && lines[2].contains("1.50x"),
            "{text}"
        );
        assert!(
            lines[2].contains("[3, 5000]") && lines[2].contains("2.0000"),
            "{text}"
        );
        assert!(lines[3].contains("skipped: does not fit"), "{text}");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"kind\":\"mix\""), "{json}");
        let back: VarlenReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
