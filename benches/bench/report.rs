//! The bench's results as JSON (`--json`) and as the text table it prints.

use super::peers::{CaseKey, PeerValue, Peers};
use super::stats::Stats;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Version of the JSON layout below; bump it when a field changes meaning.
pub const JSON_VERSION: u32 = 1;

/// The GPU the numbers were taken on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceJson {
    /// Device ordinal.
    pub ordinal: usize,
    /// Device name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability, e.g. `9.0`.
    pub compute_capability: String,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Peak SM clock, MHz.
    pub clock_mhz: u32,
    /// Peak memory clock, MHz.
    pub memory_clock_mhz: u32,
    /// Memory bus width, bits.
    pub memory_bus_width: u32,
    /// Theoretical memory bandwidth, GB/s: `2 · memory clock · bus width / 8`.
    pub peak_bandwidth_gbs: f64,
    /// Device memory, bytes.
    pub total_memory_bytes: u64,
    /// L2 cache, bytes.
    pub l2_bytes: u64,
}

impl DeviceJson {
    /// One line: name, compute capability, SMs, clocks, memory and L2.
    pub fn describe(&self) -> String {
        format!(
            "device {}: {} | sm_{} | {} SMs | SM clock {} MHz | memory clock {} MHz x {}-bit \
             ({:.0} GB/s peak) | {:.1} GiB | L2 {:.1} MiB",
            self.ordinal,
            self.name,
            self.compute_capability.replace('.', ""),
            self.sm_count,
            self.clock_mhz,
            self.memory_clock_mhz,
            self.memory_bus_width,
            self.peak_bandwidth_gbs,
            self.total_memory_bytes as f64 / (1u64 << 30) as f64,
            self.l2_bytes as f64 / (1u64 << 20) as f64,
        )
    }
}

/// Theoretical bandwidth in GB/s of a (double data rate) memory clock and bus width.
pub fn peak_bandwidth_gbs(memory_clock_mhz: u32, bus_width_bits: u32) -> f64 {
    2.0 * f64::from(memory_clock_mhz) * 1e6 * f64::from(bus_width_bits) / 8.0 / 1e9
}

/// What was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigJson {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimensions swept.
    pub head_dims: Vec<usize>,
    /// Sequence lengths swept.
    pub seq_lens: Vec<usize>,
    /// Causal settings swept.
    pub causal: Vec<bool>,
    /// `f16` or `bf16`.
    pub dtype: String,
    /// `hnd` or `nhd`.
    pub layout: String,
    /// `f16` or `f32`.
    pub pv_accum: String,
    /// P·V precision, `f16` or `int8` (absent in JSON written before the flag existed: `f16`).
    #[serde(default = "default_pv_precision")]
    pub pv_precision: String,
    /// K smoothing on.
    pub smooth_k: bool,
    /// Warm-up per path and case, ms of wall time (at least one launch).
    pub warmup_ms: f64,
    /// Least number of timed launches (unless the per-case cap stops first; never fewer than 3).
    pub min_iters: usize,
    /// Least total GPU time of the timed launches, seconds.
    pub min_seconds: f64,
    /// Cap on the wall time of the timed launches of one path of one case, seconds.
    pub max_seconds_per_case: f64,
    /// Most input sets rotated over.
    pub max_sets: usize,
    /// Seed of the input data.
    pub seed: u64,
    /// `normal` (N(0,1)), `rotary` or `recency` (N(0,1) plus a positional part in Q and K);
    /// absent in JSON written before the flag existed: `normal`.
    #[serde(default = "default_inputs")]
    pub inputs: String,
}

fn default_inputs() -> String {
    "normal".into()
}

fn default_pv_precision() -> String {
    "f16".into()
}

/// Numbers of one path (kernel or full) of one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathJson {
    /// Launch-time statistics.
    #[serde(flatten)]
    pub stats: Stats,
    /// TOPS at the median time.
    pub tops: f64,
    /// TOPS at the fastest launch.
    pub tops_max: f64,
    /// Least host time to queue one call on an idle stream (warm-up), ms. Close to the median
    /// GPU time means the call is launch-bound (the GPU waits for the host).
    #[serde(default)]
    pub host_enqueue_ms: Option<f64>,
}

/// One case: a head_dim, a causal setting and a sequence length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseJson {
    /// Head dimension.
    pub head_dim: usize,
    /// Causal mask.
    pub causal: bool,
    /// Sequence length (queries and keys).
    pub seq_len: usize,
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// FLOPs of one call (see `attention_flops`).
    pub flops: f64,
    /// Input sets rotated over.
    pub sets: usize,
    /// `Prepared::attend_into` on pre-quantized inputs.
    pub kernel: Option<PathJson>,
    /// `sageattn_into`: K mean, quantization and attention.
    pub full: Option<PathJson>,
    /// `(full - kernel) / full · 100`, medians.
    pub quant_overhead_pct: Option<f64>,
    /// Why the case was not run, when it was not.
    pub skipped: Option<String>,
}

impl CaseJson {
    /// The key of this case in a peers file.
    pub fn key(&self) -> CaseKey {
        (
            self.head_dim,
            self.causal,
            self.seq_len,
            self.batch,
            self.heads,
            self.kv_heads,
        )
    }
}

/// The startup check of the output against a float64 reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfCheckJson {
    /// Head dimension.
    pub head_dim: usize,
    /// Causal mask.
    pub causal: bool,
    /// Shape checked, `[batch, heads, seq, head_dim]`.
    pub shape: [usize; 4],
    /// Key/value heads.
    pub kv_heads: usize,
    /// `Σ|o - ref| / Σ|ref|`.
    pub rel_l1: f64,
    /// Cosine similarity of `o` and `ref`, flattened.
    pub cos_sim: f64,
    /// Within the thresholds (rel L1 <= 0.05, cos >= 0.995, all finite).
    pub ok: bool,
}

/// Everything the bench measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `sageattention-bench`.
    pub tool: String,
    /// [`JSON_VERSION`].
    pub version: u32,
    /// The GPU.
    pub device: Option<DeviceJson>,
    /// The sweep.
    pub config: ConfigJson,
    /// Startup correctness checks.
    #[serde(default)]
    pub self_check: Vec<SelfCheckJson>,
    /// Results, sorted by head_dim, causal, seq_len.
    pub cases: Vec<CaseJson>,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// The error that stopped the run early, if one did.
    pub error: Option<String>,
}

impl Report {
    /// Sorts cases by head_dim, causal (off first), seq_len.
    pub fn sort_cases(&mut self) {
        self.cases.sort_by_key(|c| {
            (
                c.head_dim, c.causal, c.seq_len, c.batch, c.heads, c.kv_heads,
            )
        });
    }
}

/// `1024` -> `1K`, `1536` -> `1536`, `32768` -> `32K`, `1048576` -> `1M`.
pub fn seq_label(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

/// A time in ms with about four significant digits.
pub fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "-".into()
    } else if ms < 1.0 {
        format!("{ms:.4}")
    } else if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// TOPS with one decimal.
pub fn fmt_tops(t: f64) -> String {
    if t.is_finite() {
        format!("{t:.1}")
    } else {
        "-".into()
    }
}

/// See [`align_table`].
pub const TAIL: &str = "\u{0}tail";

/// Renders rows of cells as an aligned text table (first `left` columns left-aligned, the rest
/// right-aligned), with a dashed rule under the header.
/// A cell equal to [`TAIL`] ends the aligned part of its row: the cell after it is appended
/// unaligned (used for notes such as a skipped case's reason, which would widen a column).
pub fn align_table(header: &[String], rows: &[Vec<String>], left: usize) -> String {
    let cols = header.len();
    let mut width = header.iter().map(|h| h.chars().count()).collect::<Vec<_>>();
    for r in rows {
        for (i, c) in r
            .iter()
            .take_while(|c| c.as_str() != TAIL)
            .enumerate()
            .take(cols)
        {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut s = String::new();
        let tail = cells.iter().position(|c| c == TAIL);
        let aligned = &cells[..tail.unwrap_or(cells.len())];
        for (i, w) in width.iter().enumerate() {
            if tail.is_some() && i >= aligned.len() {
                break;
            }
            let c = aligned.get(i).map(String::as_str).unwrap_or("");
            let pad = w.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if i < left {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', pad));
            } else {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(c);
            }
        }
        if let Some(t) = tail.and_then(|t| cells.get(t + 1)) {
            s.push_str("  ");
            s.push_str(t);
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header, &mut out);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(&rule, &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// The results table: two rows per case (kernel, full), the quantization overhead on the full
/// row, and the TOPS of each peer (when given) on the full row.
pub fn render_table(report: &Report, peers: Option<&Peers>) -> String {
    let peer_names: Vec<String> = peers.map(|p| p.names.clone()).unwrap_or_default();
    let mut header: Vec<String> = [
        "d",
        "causal",
        "seq",
        "path",
        "median ms",
        "min ms",
        "p10 ms",
        "p90 ms",
        "iters",
        "host ms",
        "TOPS",
        "quant ovh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in &peer_names {
        header.push(format!("{n} TOPS"));
    }
    let mut rows = Vec::new();
    let mut last_group = None;
    for c in &report.cases {
        let group = (c.head_dim, c.causal);
        if last_group.is_some() && last_group != Some(group) {
            rows.push(vec![]);
        }
        last_group = Some(group);
        let lead = vec![
            c.head_dim.to_string(),
            if c.causal { "on" } else { "off" }.to_string(),
            c.seq_len.to_string(),
        ];
        if let Some(reason) = &c.skipped {
            let mut r = lead;
            r.push(TAIL.into());
            r.push(format!("skipped: {reason}"));
            rows.push(r);
            continue;
        }
        let path_row = |name: &str, p: &Option<PathJson>, lead: Vec<String>| -> Vec<String> {
            let mut r = lead;
            r.push(name.to_string());
            match p {
                Some(p) => {
                    let s = &p.stats;
                    let few = if s.iters < report.config.min_iters {
                        "*"
                    } else {
                        ""
                    };
                    r.extend([
                        fmt_ms(s.median_ms),
                        fmt_ms(s.min_ms),
                        fmt_ms(s.p10_ms),
                        fmt_ms(s.p90_ms),
                        format!("{}{few}", s.iters),
                        p.host_enqueue_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
                        fmt_tops(p.tops),
                    ]);
                }
                None => r.extend(["-", "-", "-", "-", "-", "-", "-"].map(String::from)),
            }
            r
        };
        let blank = vec![String::new(), String::new(), String::new()];
        let kernel_lead = lead;
        rows.push(path_row("kernel", &c.kernel, kernel_lead));
        let mut full = path_row("full", &c.full, blank);
        full.push(
            c.quant_overhead_pct
                .map(|o| format!("{o:.1}%"))
                .unwrap_or_default(),
        );
        if let Some(peers) = peers {
            for n in &peer_names {
                full.push(match peers.get(c.key(), n) {
                    Some(PeerValue::Tops(t)) => fmt_tops(*t),
                    Some(PeerValue::Failed(_)) => "failed".into(),
                    None => "-".into(),
                });
            }
        }
        rows.push(full);
    }
    let mut out = align_table(&header, &rows, 4);
    let few = report.cases.iter().any(|c| {
        [&c.kernel, &c.full].iter().any(|p| {
            p.as_ref()
                .is_some_and(|p| p.stats.iters < report.config.min_iters)
        })
    });
    if few {
        let _ = writeln!(
            out,
            "* fewer than --min-iters {} launches: the --max-seconds-per-case {} s cap stopped first",
            report.config.min_iters, report.config.max_seconds_per_case
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn path(median: f64, iters: usize, flops: f64) -> PathJson {
        PathJson {
            stats: Stats {
                iters,
                median_ms: median,
                min_ms: median * 0.98,
                max_ms: median * 1.1,
                mean_ms: median * 1.01,
                p10_ms: median * 0.99,
                p90_ms: median * 1.02,
            },
            tops: super::super::stats::tops(flops, median),
            tops_max: super::super::stats::tops(flops, median * 0.98),
            host_enqueue_ms: Some(median * 0.3),
        }
    }

    pub fn fake_report() -> Report {
        let mut cases = Vec::new();
        for &d in &[64usize, 128] {
            for &causal in &[false, true] {
                for &n in &[1024usize, 2048, 4096] {
                    let flops = super::super::stats::attention_flops(4, 32, n, n, d, causal);
                    let k = 0.1 * (n as f64 / 1024.0).powi(2) * d as f64 / 64.0;
                    let f = k * 1.15;
                    cases.push(CaseJson {
                        head_dim: d,
                        causal,
                        seq_len: n,
                        batch: 4,
                        heads: 32,
                        kv_heads: 32,
                        flops,
                        sets: 2,
                        kernel: Some(path(k, if n == 4096 { 5 } else { 40 }, flops)),
                        full: Some(path(f, 40, flops)),
                        quant_overhead_pct: super::super::stats::overhead_pct(k, f),
                        skipped: None,
                    });
                }
            }
        }
        cases.push(CaseJson {
            head_dim: 128,
            causal: true,
            seq_len: 1 << 20,
            batch: 4,
            heads: 32,
            kv_heads: 32,
            flops: 0.0,
            sets: 1,
            kernel: None,
            full: None,
            quant_overhead_pct: None,
            skipped: Some("does not fit in GPU memory".into()),
        });
        let mut r = Report {
            tool: "sageattention-bench".into(),
            version: JSON_VERSION,
            device: Some(DeviceJson {
                ordinal: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                compute_capability: "9.0".into(),
                sm_count: 132,
                clock_mhz: 1980,
                memory_clock_mhz: 2619,
                memory_bus_width: 5120,
                peak_bandwidth_gbs: peak_bandwidth_gbs(2619, 5120),
                total_memory_bytes: 85_000_000_000,
                l2_bytes: 50 << 20,
            }),
            config: ConfigJson {
                batch: 4,
                heads: 32,
                kv_heads: 32,
                head_dims: vec![64, 128],
                seq_lens: vec![1024, 2048, 4096],
                causal: vec![false, true],
                dtype: "f16".into(),
                layout: "hnd".into(),
                pv_accum: "f16".into(),
                pv_precision: "f16".into(),
                smooth_k: true,
                warmup_ms: 200.0,
                min_iters: 10,
                min_seconds: 0.3,
                max_seconds_per_case: 10.0,
                max_sets: 64,
                seed: 1,
                inputs: "normal".into(),
            },
            self_check: vec![],
            cases,
            wall_seconds: 12.5,
            error: None,
        };
        r.sort_cases();
        r
    }

    /// Equal up to float parsing (serde_json's default float parser may be 1 ulp off).
    pub fn assert_reports_close(a: &Report, b: &Report) {
        fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
            use serde_json::Value as V;
            match (a, b) {
                (V::Number(x), V::Number(y)) => {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
                }
                (V::Array(x), V::Array(y)) => {
                    x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
                }
                (V::Object(x), V::Object(y)) => {
                    x.len() == y.len()
                        && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
                }
                _ => a == b,
            }
        }
        let (va, vb) = (
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap(),
        );
        assert!(close(&va, &vb), "{va}\n!=\n{vb}");
    }

    #[test]
    fn labels_and_formats() {
        assert_eq!(seq_label(1024), "1K");
        assert_eq!(seq_label(32768), "32K");
        assert_eq!(seq_label(1000), "1000");
        assert_eq!(seq_label(1536), "1536");
        assert_eq!(seq_label(1 << 20), "1M");
        assert_eq!(fmt_ms(0.123456), "0.1235");
        assert_eq!(fmt_ms(1.23456), "1.235");
        assert_eq!(fmt_ms(12.3456), "12.35");
        assert_eq!(fmt_ms(1234.56), "1234.6");
        assert_eq!(fmt_ms(f64::NAN), "-");
        assert_eq!(fmt_tops(321.04), "321.0");
        assert!((peak_bandwidth_gbs(2619, 5120) - 3352.32).abs() < 1e-6);
    }

    #[test]
    fn device_line() {
        let r = fake_report();
        let line = r.device.unwrap().describe();
        assert!(line.contains("NVIDIA H100 80GB HBM3"), "{line}");
        assert!(line.contains("sm_90") && line.contains("132 SMs"), "{line}");
        assert!(
            line.contains("3352 GB/s") && line.contains("L2 50.0 MiB"),
            "{line}"
        );
    }

    #[test]
    fn table_has_two_rows_per_case_and_overhead() {
        let r = fake_report();
        let t = render_table(&r, None);
        let kernel_rows = t.lines().filter(|l| l.contains(" kernel ")).count();
        let full_rows = t.lines().filter(|l| l.contains(" full ")).count();
        assert_eq!(kernel_rows, 12, "{t}");
        assert_eq!(full_rows, 12, "{t}");
        assert!(t.contains("13.0%"), "{t}"); // (1.15 - 1) / 1.15
        assert!(t.contains("skipped: does not fit"), "{t}");
        // 4096 kernel rows have 5 iterations < min_iters: marked and explained
        assert!(t.contains("5*"), "{t}");
        assert!(t.contains("--max-seconds-per-case"), "{t}");
        // header and rule line up
        let mut lines = t.lines();
        let (h, rule) = (lines.next().unwrap(), lines.next().unwrap());
        assert_eq!(h.len(), rule.len(), "{t}");
    }

    #[test]
    fn json_roundtrip() {
        let r = fake_report();
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert!(text.contains("\"median_ms\""), "flattened stats");
        assert!(text.contains("\"quant_overhead_pct\""));
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_reports_close(&back, &r);
        // JSON written before --pv-precision existed reads as f16.
        assert!(text.contains("\"pv_precision\": \"f16\""));
        let old = text.replace("\"pv_precision\": \"f16\",", "");
        assert!(!old.contains("pv_precision"));
        let back: Report = serde_json::from_str(&old).unwrap();
        assert_eq!(back.config.pv_precision, "f16");
    }

    #[test]
    fn align_table_pads() {
        let t = align_table(
            &["a".into(), "bb".into()],
            &[
                vec!["xxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
            1,
        );
        assert_eq!(t, "a    bb\n---  --\nxxx   1\ny    22\n");
        let t = align_table(
            &["a".into(), "bb".into()],
            &[
                vec!["x".into(), TAIL.into(), "a long note".into()],
                vec!["y".into(), "22".into()],
            ],
            1,
        );
        assert_eq!(t, "a  bb\n-  --\nx  a long note\ny  22\n");
    }
}
