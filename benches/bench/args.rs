//! The command line: every flag, its defaults, and the checks clap cannot make.

use clap::{Parser, ValueEnum};
use sageattention::device_config::{is_supported_head_dim, SUPPORTED_HEAD_DIMS_TEXT};
use sageattention::{Backend, DType, Layout, Options, PvAccum, PvPrecision};
use std::path::PathBuf;

use super::inputs::Positional;
use super::report::ConfigJson;

/// Which causal settings to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CausalArg {
    /// Both off and on.
    Both,
    /// Causal only.
    On,
    /// Non-causal only.
    Off,
}

/// Input element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F16,
    Bf16,
}

/// Input memory layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// (batch, heads, seq, dim).
    Hnd,
    /// (batch, seq, heads, dim).
    Nhd,
}

/// P·V accumulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PvArg {
    F16,
    F32,
}

/// P·V precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PvPrecisionArg {
    /// f16 P and V on the f16 tensor cores (the default, the v1 accuracy contract).
    F16,
    /// 8-bit P·V: u8 P × s8 V on the INT8 tensor cores (the sm_90a kernel on Hopper, the
    /// portable mma.sync kernel elsewhere or with `--portable`).
    Int8,
    /// FP8 P·V: e4m3 P × e4m3 V, compute capability 8.9+ (the sm_90a wgmma kernel on Hopper; the
    /// sm_89 mma.sync kernel on Ada and with `--portable`, where `--pv-accum` picks the
    /// accumulator of each key tile's product).
    Fp8,
}

/// What the timed inputs hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputsArg {
    /// Independent N(0,1) samples.
    Normal,
    /// N(0,1) plus a rotary positional part in Q and K (RoPE's frequencies): each query scores
    /// its nearby keys higher, about 8 log2 units at its own position falling to 1 at 2K keys
    /// (d = 128), as rotary-embedded heads do on average.
    Rotary,
    /// N(0,1) plus a linear slope in channel 0 of Q and K: each query's scores rise by about 0.1
    /// log2 units per key towards later keys (d = 128), a stress input for the kernels that take
    /// tiles against a lagging max (ALiBi-like; not a typical head).
    Recency,
    /// N(0,1) Q and K, and V of one sign per channel with magnitudes from 30000 to 60000: every
    /// key tile's f16 `Σ p·v` of the portable kernel's `PvAccum::F16` overflows, so each of its
    /// CTAs runs the second pass (a stress input: what that pass costs).
    LargeV,
}

impl InputsArg {
    /// The positional part of the Q and K of these inputs (none for N(0,1)).
    pub fn positional(self) -> Option<Positional> {
        match self {
            InputsArg::Normal | InputsArg::LargeV => None,
            InputsArg::Rotary => Some(Positional::Rotary),
            InputsArg::Recency => Some(Positional::Recency),
        }
    }

    /// Whether the input sets are generated for each shape ([`fill_input_sets`]) rather than
    /// viewed in one N(0,1) pool.
    ///
    /// [`fill_input_sets`]: super::inputs::fill_input_sets
    pub fn per_shape(self) -> bool {
        self != InputsArg::Normal
    }
}

/// Which paths to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PathsArg {
    Both,
    Kernel,
    Full,
}

/// SageAttention speed (TOPS) over head_dim × causal × sequence length; see docs/bench.md.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench", version, about, long_about = None)]
pub struct Args {
    /// Head dimensions (comma-separated; supported: every multiple of 8 from 8 to 256).
    #[arg(long, value_delimiter = ',', default_value = "64,96,128")]
    pub head_dims: Vec<usize>,
    /// Sequence lengths of queries and keys (comma-separated; `4096`, `4k`, `1M` all work).
    #[arg(long, value_delimiter = ',', value_parser = parse_len,
          default_value = "1024,2048,4096,8192,16384,32768")]
    pub seq_lens: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Query heads.
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than --heads; must divide it).
    /// Default: --heads.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Causal masking.
    #[arg(long, value_enum, default_value_t = CausalArg::Both)]
    pub causal: CausalArg,
    /// Input (and output) element type.
    #[arg(long, value_enum, default_value_t = DTypeArg::F16)]
    pub dtype: DTypeArg,
    /// Memory layout of q, k, v and the output.
    #[arg(long, value_enum, default_value_t = LayoutArg::Hnd)]
    pub layout: LayoutArg,
    /// P·V accumulation: f16 (SageAttention's default, fastest) or f32.
    #[arg(long, value_enum, default_value_t = PvArg::F16)]
    pub pv_accum: PvArg,
    /// P·V precision: f16 (default), int8 (8-bit P·V: the sm_90a kernel on Hopper, the portable
    /// mma.sync kernel elsewhere) or fp8 (e4m3 P·V: the sm_90a kernel on Hopper, the sm_89
    /// mma.sync kernel on Ada and with `--portable`).
    #[arg(long, value_enum, default_value_t = PvPrecisionArg::F16)]
    pub pv_precision: PvPrecisionArg,
    /// Kernel: the fastest for the device (wgmma on Hopper for d = 64/128), or the portable one.
    #[arg(long)]
    pub portable: bool,
    /// A measuring proxy: plan the portable f16 kernels (variant and CTAs per SM) as on a GPU
    /// whose SMs have this many KiB of shared memory (100: the RTX 3090 / 4090), padding their
    /// launches' shared memory to that occupancy (`Runtime::emulate_smem_per_sm`).
    #[arg(long, value_name = "KIB")]
    pub emulate_smem_per_sm: Option<u32>,
    /// A measuring aid: keep the portable kernels' 64-key variants where a compact one would run
    /// (`Runtime::allow_compact`), the baseline for `--emulate-smem-per-sm`.
    #[arg(long)]
    pub no_compact: bool,
    /// Turn off K smoothing (subtracting K's mean over the sequence).
    #[arg(long)]
    pub no_smooth_k: bool,
    /// Which paths to time: kernel (pre-quantized inputs), full (sageattn_into) or both.
    #[arg(long, value_enum, default_value_t = PathsArg::Both)]
    pub paths: PathsArg,
    /// Warm-up of each path of each case, ms of wall time (at least one launch).
    #[arg(long, default_value_t = 200.0)]
    pub warmup_ms: f64,
    /// Least number of timed launches per path and case.
    #[arg(long, default_value_t = 10)]
    pub min_iters: usize,
    /// Least total GPU time of the timed launches per path and case, seconds.
    #[arg(long, default_value_t = 0.3)]
    pub min_seconds: f64,
    /// Cap on the wall time of the timed launches of one path of one case, seconds; when it
    /// stops the timing before --min-iters, at least 3 launches are still timed.
    #[arg(long, default_value_t = 10.0)]
    pub max_seconds_per_case: f64,
    /// Most input sets rotated over per case.
    #[arg(long, default_value_t = 64)]
    pub max_sets: usize,
    /// Input sets per case (default: enough for the inputs to exceed twice the L2 cache).
    #[arg(long)]
    pub sets: Option<usize>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 20_241_002)]
    pub seed: u64,
    /// Write every number (device, config, per case and path: median, min, p10, p90, TOPS) here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the grouped bar chart (TOPS per seq len, per head_dim × causal) as SVG here.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Peers' numbers (the JSON scripts/compare.py writes): added to the table and the chart.
    #[arg(long, value_name = "FILE.json")]
    pub peers: Option<PathBuf>,
    /// No GPU: print the table (and --plot) of a JSON an earlier run wrote with --json.
    #[arg(long, value_name = "FILE.json")]
    pub from_json: Option<PathBuf>,
    /// No timing: run sageattn on every `<name>.q/.k/.v` of this safetensors file and write
    /// `<name>.o` to --accuracy-out (see docs/bench.md).
    #[arg(long, value_name = "IN.safetensors")]
    pub accuracy_file: Option<PathBuf>,
    /// Output of --accuracy-file (default: the input's name with `.out.safetensors`).
    #[arg(long, value_name = "OUT.safetensors")]
    pub accuracy_out: Option<PathBuf>,
    /// Variable-length mode: `sageattn_varlen` on packed batches (a seeded mix of
    /// --varlen-seqs lengths, and --batch sequences of each --seq-lens length) against
    /// `sageattn_into` on the batched tensors of the same sequences (see docs/bench.md).
    #[arg(long)]
    pub varlen: bool,
    /// --varlen: sequences of the mix.
    #[arg(long, default_value_t = 16)]
    pub varlen_seqs: usize,
    /// --varlen: shortest length of the mix (lengths are drawn uniformly, seeded by --seed).
    #[arg(long, value_parser = parse_len, default_value = "128")]
    pub varlen_min_len: usize,
    /// --varlen: longest length of the mix.
    #[arg(long, value_parser = parse_len, default_value = "8192")]
    pub varlen_max_len: usize,
    /// Skip the startup check of the output against a float64 CPU reference.
    #[arg(long)]
    pub no_check: bool,
    /// What the timed inputs hold: N(0,1), or N(0,1) with a positional part in Q and K, rotary
    /// (scores that decay with the distance) or recency (scores that rise steadily towards later
    /// keys), or large-v (V near f16's limit: the portable f16 accumulator's second pass); all
    /// but N(0,1) are generated for each shape, so slower to start.
    #[arg(long, value_enum, default_value_t = InputsArg::Normal)]
    pub inputs: InputsArg,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses `4096`, `4k`, `4K`, `1m`, `1M` (k = 1024, M = 1024²).
pub fn parse_len(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1024),
        Some((i, 'm' | 'M')) => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a length (examples: 4096, 4k, 1M)"))?;
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{s}` must be a positive length"))
}

impl Args {
    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }
    pub fn causal_list(&self) -> Vec<bool> {
        match self.causal {
            CausalArg::Both => vec![false, true],
            CausalArg::On => vec![true],
            CausalArg::Off => vec![false],
        }
    }
    pub fn dtype(&self) -> DType {
        match self.dtype {
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
    pub fn layout(&self) -> Layout {
        match self.layout {
            LayoutArg::Hnd => Layout::Hnd,
            LayoutArg::Nhd => Layout::Nhd,
        }
    }
    pub fn pv_accum(&self) -> PvAccum {
        match self.pv_accum {
            PvArg::F16 => PvAccum::F16,
            PvArg::F32 => PvAccum::F32,
        }
    }
    pub fn pv_precision(&self) -> PvPrecision {
        match self.pv_precision {
            PvPrecisionArg::F16 => PvPrecision::F16,
            PvPrecisionArg::Int8 => PvPrecision::Int8,
            PvPrecisionArg::Fp8 => PvPrecision::Fp8,
        }
    }
    /// `f16`, `int8` or `fp8`, as the flag spells it.
    pub fn pv_precision_name(&self) -> &'static str {
        match self.pv_precision {
            PvPrecisionArg::F16 => "f16",
            PvPrecisionArg::Int8 => "int8",
            PvPrecisionArg::Fp8 => "fp8",
        }
    }
    pub fn options(&self, causal: bool) -> Options {
        Options {
            causal,
            smooth_k: !self.no_smooth_k,
            layout: self.layout(),
            pv_accum: self.pv_accum(),
            pv_precision: self.pv_precision(),
            backend: if self.portable {
                Backend::Portable
            } else {
                Backend::Auto
            },
            ..Options::default()
        }
    }
    pub fn run_kernel(&self) -> bool {
        self.paths != PathsArg::Full
    }
    pub fn run_full(&self) -> bool {
        self.paths != PathsArg::Kernel
    }

    /// Checks what clap cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.head_dims.is_empty() || self.seq_lens.is_empty() {
            return Err("--head-dims and --seq-lens need at least one value".into());
        }
        if let Some(d) = self.head_dims.iter().find(|&&d| !is_supported_head_dim(d)) {
            return Err(format!(
                "--head-dims: {d} is not supported (supported: {SUPPORTED_HEAD_DIMS_TEXT})"
            ));
        }
        if self.batch == 0 || self.heads == 0 || self.kv_heads() == 0 {
            return Err("--batch, --heads and --kv-heads must be at least 1".into());
        }
        if !self.heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "--kv-heads {} must divide --heads {} (grouped-query attention)",
                self.kv_heads(),
                self.heads
            ));
        }
        if self.min_iters == 0 || self.max_sets == 0 || self.sets == Some(0) {
            return Err("--min-iters, --max-sets and --sets must be at least 1".into());
        }
        for (name, v) in [
            ("--warmup-ms", self.warmup_ms),
            ("--min-seconds", self.min_seconds),
            ("--max-seconds-per-case", self.max_seconds_per_case),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a non-negative number, got {v}"));
            }
        }
        let modes = [self.from_json.is_some(), self.accuracy_file.is_some()];
        if modes.iter().filter(|&&m| m).count() > 1 {
            return Err("--from-json and --accuracy-file exclude each other".into());
        }
        if self.accuracy_out.is_some() && self.accuracy_file.is_none() {
            return Err("--accuracy-out needs --accuracy-file".into());
        }
        if self.varlen {
            let others = [
                (self.from_json.is_some(), "--from-json"),
                (self.accuracy_file.is_some(), "--accuracy-file"),
                (self.plot.is_some(), "--plot"),
                (self.peers.is_some(), "--peers"),
                (self.paths != PathsArg::Both, "--paths"),
            ];
            if let Some((_, flag)) = others.iter().find(|(given, _)| *given) {
                return Err(format!("--varlen does not go with {flag}"));
            }
            if self.varlen_seqs == 0 || self.varlen_min_len > self.varlen_max_len {
                return Err(format!(
                    "--varlen needs --varlen-seqs >= 1 and --varlen-min-len <= --varlen-max-len \
                     (got {}, {}, {})",
                    self.varlen_seqs, self.varlen_min_len, self.varlen_max_len
                ));
            }
        }
        Ok(())
    }

    pub fn config_json(&self) -> ConfigJson {
        ConfigJson {
            batch: self.batch,
            heads: self.heads,
            kv_heads: self.kv_heads(),
            head_dims: self.head_dims.clone(),
            seq_lens: self.seq_lens.clone(),
            causal: self.causal_list(),
            dtype: self.dtype().name().into(),
            layout: match self.layout {
                LayoutArg::Hnd => "hnd".into(),
                LayoutArg::Nhd => "nhd".into(),
            },
            pv_accum: match self.pv_accum {
                PvArg::F16 => "f16".into(),
                PvArg::F32 => "f32".into(),
            },
            pv_precision: self.pv_precision_name().into(),
            smooth_k: !self.no_smooth_k,
            warmup_ms: self.warmup_ms,
            min_iters: self.min_iters,
            min_seconds: self.min_seconds,
            max_seconds_per_case: self.max_seconds_per_case,
            max_sets: self.max_sets,
            seed: self.seed,
            inputs: match self.inputs {
                InputsArg::Normal => "normal".into(),
                InputsArg::Rotary => "rotary".into(),
                InputsArg::Recency => "recency".into(),
                InputsArg::LargeV => "large-v".into(),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `bench` with `extra` arguments, parsed.
    pub(crate) fn parse(extra: &[&str]) -> Args {
        let mut v = vec!["bench"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_match_the_issue() {
        let a = parse(&[]);
        assert_eq!(a.head_dims, [64, 96, 128]);
        assert_eq!(a.seq_lens, [1024, 2048, 4096, 8192, 16384, 32768]);
        assert_eq!((a.batch, a.heads, a.kv_heads()), (4, 32, 32));
        assert_eq!(a.causal_list(), [false, true]);
        assert_eq!(a.dtype(), DType::F16);
        assert_eq!(a.layout(), Layout::Hnd);
        assert_eq!(a.pv_accum(), PvAccum::F16);
        assert_eq!(a.pv_precision(), PvPrecision::F16);
        assert!(a.run_kernel() && a.run_full());
        assert!(a.check().is_ok());
        let o = a.options(true);
        assert!(o.causal && o.smooth_k && o.sm_scale.is_none());
        assert_eq!(o.pv_precision, PvPrecision::F16);
        assert_eq!(a.config_json().pv_precision, "f16");
    }
    #[test]
    fn all_flags_parse() {
        let a = parse(&[
            "--head-dims",
            "64,128",
            "--seq-lens",
            "1k,8K,1000",
            "--batch",
            "2",
            "--heads",
            "16",
            "--kv-heads",
            "4",
            "--causal",
            "on",
            "--dtype",
            "bf16",
            "--layout",
            "nhd",
            "--pv-accum",
            "f32",
            "--pv-precision",
            "int8",
            "--warmup-ms",
            "50",
            "--min-iters",
            "20",
            "--min-seconds",
            "0.5",
            "--max-seconds-per-case",
            "3",
            "--json",
            "x.json",
            "--plot",
            "x.svg",
            "--peers",
            "p.json",
            "--paths",
            "kernel",
            "--sets",
            "3",
            "--no-smooth-k",
            "-q",
        ]);
        assert_eq!(a.head_dims, [64, 128]);
        assert_eq!(a.seq_lens, [1024, 8192, 1000]);
        assert_eq!((a.batch, a.heads, a.kv_heads()), (2, 16, 4));
        assert_eq!(a.causal_list(), [true]);
        assert_eq!(a.dtype(), DType::BF16);
        assert_eq!(a.layout(), Layout::Nhd);
        assert_eq!(a.pv_accum(), PvAccum::F32);
        assert_eq!(
            (
                a.warmup_ms,
                a.min_iters,
                a.min_seconds,
                a.max_seconds_per_case
            ),
            (50.0, 20, 0.5, 3.0)
        );
        assert!(a.run_kernel() && !a.run_full());
        assert_eq!(a.sets, Some(3));
        assert!(!a.options(false).smooth_k && a.quiet);
        assert_eq!(a.options(false).pv_precision, PvPrecision::Int8);
        assert!(a.check().is_ok());
        let c = a.config_json();
        assert_eq!(
            (
                c.dtype.as_str(),
                c.layout.as_str(),
                c.pv_accum.as_str(),
                c.pv_precision.as_str()
            ),
            ("bf16", "nhd", "f32", "int8")
        );
    }
    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--kv-heads", "5"][..],
            &["--head-dims", "36"],
            &["--head-dims", "264"],
            &["--min-iters", "0"],
            &["--warmup-ms=-1"],
            &["--max-seconds-per-case=nan"],
            &["--accuracy-out", "x"],
            &["--from-json", "a", "--accuracy-file", "b"],
            &["--batch", "0"],
            &["--varlen", "--plot", "x.svg"],
            &["--varlen", "--from-json", "x.json"],
            &["--varlen", "--paths", "kernel"],
            &["--varlen", "--varlen-seqs", "0"],
            &["--varlen", "--varlen-min-len", "9k"],
        ] {
            let a = parse(bad);
            assert!(a.check().is_err(), "{bad:?}");
        }
        for bad in [
            &["--causal", "maybe"][..],
            &["--seq-lens", "0"],
            &["--seq-lens", "12x"],
            &["--dtype", "f32"],
            &["--pv-precision", "fp4"],
        ] {
            let mut v = vec!["bench"];
            v.extend_from_slice(bad);
            assert!(Args::try_parse_from(v).is_err(), "{bad:?}");
        }
    }
    #[test]
    fn fp8_precision_flag() {
        let a = parse(&["--pv-precision", "fp8", "--pv-accum", "f32"]);
        assert!(a.check().is_ok());
        let o = a.options(true);
        assert_eq!(
            (o.pv_precision, o.pv_accum),
            (PvPrecision::Fp8, PvAccum::F32)
        );
        assert_eq!(a.config_json().pv_precision, "fp8");
    }

    #[test]
    fn varlen_flags() {
        let a = parse(&["--varlen"]);
        assert!(a.varlen && a.check().is_ok());
        assert_eq!(
            (a.varlen_seqs, a.varlen_min_len, a.varlen_max_len),
            (16, 128, 8192)
        );
        let a = parse(&[
            "--varlen",
            "--varlen-seqs",
            "8",
            "--varlen-min-len",
            "1k",
            "--varlen-max-len",
            "4k",
            "--json",
            "v.json",
        ]);
        assert!(a.check().is_ok());
        assert_eq!(
            (a.varlen_seqs, a.varlen_min_len, a.varlen_max_len),
            (8, 1024, 4096)
        );
    }

    #[test]
    fn lengths() {
        assert_eq!(parse_len("4096"), Ok(4096));
        assert_eq!(parse_len("4k"), Ok(4096));
        assert_eq!(parse_len(" 32K "), Ok(32768));
        assert_eq!(parse_len("1M"), Ok(1 << 20));
        assert!(parse_len("k").is_err());
        assert!(parse_len("0").is_err());
        assert!(parse_len("-1").is_err());
    }
}
