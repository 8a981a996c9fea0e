//! Command-line arguments (clap derive) and their conversion to the library's options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sageattention::device_config::SUPPORTED_HEAD_DIMS_TEXT;
use sageattention::{Backend, Layout, Options, PvAccum, PvPrecision};

use super::input::{InputOptions, MaxSeqlens, TensorNames};

/// SageAttention (INT8 Q·Kᵀ, FP16 P·V) on an NVIDIA GPU, on tensors from a .safetensors file.
#[derive(Debug, Parser)]
#[command(name = "sageattn", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run attention on Q, K, V read from a .safetensors file and write the output `o` (and `lse`).
    #[command(long_about = run_long_about())]
    Run(Box<RunArgs>),
    /// Show the GPU, the kernel modules and attention variants that would be used, and the version.
    Info(InfoArgs),
}

/// The long help of `run` (names the supported head dims from the library's constant).
fn run_long_about() -> String {
    format!(
        "Run attention on Q, K, V read from a .safetensors file and write the output `o` (and \
         `lse`).

Inputs: three rank-4 tensors of one dtype, F16, BF16 or F32. F32 inputs are rounded to F16 for \
the GPU (which computes in F16) and the output is written back as F32. Shapes are [batch, heads, \
seq, head_dim] with --layout hnd (the default) or [batch, seq, heads, head_dim] with --layout nhd; \
head_dim must be {dims}; K and V have the same shape; Q's heads must be a multiple of K's \
(grouped-query attention); batch and head_dim agree.

Packed (variable-length) input: when the file also holds `cu_seqlens_q` and `cu_seqlens_k` \
(rank-1 I32 prefix sums, batch + 1 entries), q is [total_q, q_heads, head_dim] and k, v are \
[total_k, kv_heads, head_dim], sequence i being rows cu_seqlens[i]..cu_seqlens[i+1]; each \
sequence is attention on its own (causal within it). --layout does not apply.

Output: `o` in the inputs' dtype and layout, with Q's shape; with --lse also `lse`, F32 [batch, \
q_heads, qo_len] (natural log; packed: [q_heads, total_q]). The file is written atomically (temporary file in the same \
directory, fsync, rename): a failed run never leaves a partial file nor touches an existing one.

Exit status: 0 success, 1 GPU or runtime error, 2 bad usage or input, 3 --max-rel-l1 exceeded.",
        dims = SUPPORTED_HEAD_DIMS_TEXT
    )
}

/// Arguments of `sageattn run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The .safetensors file holding Q, K and V (F16, BF16, or F32, which is rounded to f16 for the
    /// GPU).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,

    /// Where to write the output .safetensors file (tensor `o`, and `lse` with --lse). Required
    /// unless --check or --max-rel-l1 is given.
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present_any = ["check", "max_rel_l1"]
    )]
    pub out: Option<PathBuf>,

    /// Name of the query tensor in INPUT.
    #[arg(long, value_name = "NAME", default_value = "q")]
    pub q_name: String,
    /// Name of the key tensor in INPUT.
    #[arg(long, value_name = "NAME", default_value = "k")]
    pub k_name: String,
    /// Name of the value tensor in INPUT.
    #[arg(long, value_name = "NAME", default_value = "v")]
    pub v_name: String,
    /// Name of Q's prefix sums in INPUT; the input is packed (variable-length) when the file
    /// holds this tensor and --cu-seqlens-k-name's.
    #[arg(long, value_name = "NAME", default_value = "cu_seqlens_q")]
    pub cu_seqlens_q_name: String,
    /// Name of K's prefix sums in INPUT.
    #[arg(long, value_name = "NAME", default_value = "cu_seqlens_k")]
    pub cu_seqlens_k_name: String,
    /// Packed input: the longest query sequence allowed (default: the longest in cu_seqlens_q).
    #[arg(long, value_name = "N")]
    pub max_seqlen_q: Option<usize>,
    /// Packed input: the longest key sequence allowed (default: the longest in cu_seqlens_k).
    #[arg(long, value_name = "N")]
    pub max_seqlen_k: Option<usize>,

    /// Memory layout of the inputs (and of `o`): hnd = [batch, heads, seq, head_dim] (the
    /// default), nhd = [batch, seq, heads, head_dim]. Not for packed inputs.
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,

    /// Causal mask, bottom-right aligned: query i sees key j iff j <= i + kv_len - qo_len.
    #[arg(long)]
    pub causal: bool,

    /// Do not subtract K's mean over the sequence before quantizing K (less accurate).
    #[arg(long)]
    pub no_smooth_k: bool,

    /// Softmax scale (finite, non-zero); default 1/sqrt(head_dim).
    #[arg(long, value_name = "X", value_parser = parse_sm_scale, allow_negative_numbers = true)]
    pub sm_scale: Option<f32>,

    /// P·V accumulator: f16 (fastest, SageAttention's default) or f32.
    #[arg(long, value_enum, default_value_t = PvAccumArg::F16)]
    pub pv_accum: PvAccumArg,

    /// P·V precision: f16 (default, the v1 accuracy), int8 (u8 P × s8 V on the INT8 tensor
    /// cores, any sm_80+ GPU; about twice SageAttention2's FP8 accuracy, see the README) or fp8
    /// (e4m3 P × e4m3 V, compute capability 8.9+; --pv-accum picks its accumulator; rel L1 ≈ 0.036
    /// on N(0,1)).
    #[arg(long, value_enum, default_value_t = PvPrecisionArg::F16)]
    pub pv_precision: PvPrecisionArg,

    /// Kernel: auto (the wgmma kernel on Hopper for head_dim 64/128, which accumulates P·V in f32)
    /// or portable (the mma.sync kernel, honouring --pv-accum on every GPU).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,

    /// Also write the log-sum-exp of each query row as `lse` (F32 [batch, q_heads, qo_len]).
    #[arg(long)]
    pub lse: bool,

    /// Also compute float64 attention on the CPU and print the error of the output against it,
    /// next to the error of plain fp16 attention.
    #[arg(long)]
    pub check: bool,

    /// Exit with status 3 when the relative L1 error against the float64 reference exceeds X
    /// (implies --check).
    #[arg(long, value_name = "X", value_parser = parse_max_rel_l1, allow_negative_numbers = true)]
    pub max_rel_l1: Option<f64>,

    /// CUDA device ordinal.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub device: usize,
}

impl RunArgs {
    /// Whether the float64 check runs.
    pub fn check_enabled(&self) -> bool {
        self.check || self.max_rel_l1.is_some()
    }

    /// The names of the input tensors.
    pub fn names(&self) -> TensorNames {
        TensorNames {
            q: self.q_name.clone(),
            k: self.k_name.clone(),
            v: self.v_name.clone(),
            cu_seqlens_q: self.cu_seqlens_q_name.clone(),
            cu_seqlens_k: self.cu_seqlens_k_name.clone(),
        }
    }

    /// How the inputs are given (`--layout` if passed, `--max-seqlen-q/-k`).
    pub fn input_options(&self) -> InputOptions {
        InputOptions {
            layout: self.layout.map(Layout::from),
            max_seqlens: MaxSeqlens {
                q: self.max_seqlen_q,
                k: self.max_seqlen_k,
            },
        }
    }

    /// The library options these arguments ask for.
    pub fn options(&self) -> Options {
        Options {
            causal: self.causal,
            smooth_k: !self.no_smooth_k,
            sm_scale: self.sm_scale,
            layout: self.layout.map_or(Layout::Hnd, Layout::from),
            pv_accum: self.pv_accum.into(),
            pv_precision: self.pv_precision.into(),
            return_lse: self.lse,
            backend: self.backend.into(),
        }
    }
}

/// Arguments of `sageattn info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// CUDA device ordinal.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub device: usize,
}

/// `--layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// [batch, heads, seq, head_dim]
    Hnd,
    /// [batch, seq, heads, head_dim]
    Nhd,
}

impl From<LayoutArg> for Layout {
    fn from(l: LayoutArg) -> Layout {
        match l {
            LayoutArg::Hnd => Layout::Hnd,
            LayoutArg::Nhd => Layout::Nhd,
        }
    }
}

/// `--pv-accum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PvAccumArg {
    /// f16 accumulator per 64-key tile, summed in f32
    F16,
    /// f32 accumulator throughout
    F32,
}

impl From<PvAccumArg> for PvAccum {
    fn from(p: PvAccumArg) -> PvAccum {
        match p {
            PvAccumArg::F16 => PvAccum::F16,
            PvAccumArg::F32 => PvAccum::F32,
        }
    }
}

/// `--pv-precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PvPrecisionArg {
    /// f16 P and V
    F16,
    /// u8 P × s8 V (the wgmma kernel on Hopper, the portable mma.sync kernel elsewhere)
    Int8,
    /// e4m3 P × e4m3 V (the sm_89 mma.sync kernel; Ada and Hopper; --pv-accum picks its
    /// accumulator; less accurate than int8)
    Fp8,
}

impl From<PvPrecisionArg> for PvPrecision {
    fn from(p: PvPrecisionArg) -> PvPrecision {
        match p {
            PvPrecisionArg::F16 => PvPrecision::F16,
            PvPrecisionArg::Int8 => PvPrecision::Int8,
            PvPrecisionArg::Fp8 => PvPrecision::Fp8,
        }
    }
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// the fastest kernel for the device
    Auto,
    /// the portable mma.sync kernel
    Portable,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Portable => Backend::Portable,
        }
    }
}

/// A finite, non-zero f32 (what the library accepts as `sm_scale`).
pub fn parse_sm_scale(s: &str) -> Result<f32, String> {
    let x: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !x.is_finite() || x == 0.0 {
        return Err(format!(
            "the softmax scale must be finite and non-zero, got {s}"
        ));
    }
    Ok(x)
}

/// A finite, non-negative f64.
pub fn parse_max_rel_l1(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !x.is_finite() || x < 0.0 {
        return Err(format!("the threshold must be finite and >= 0, got {s}"));
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sm_scale_parser() {
        assert_eq!(parse_sm_scale("0.125"), Ok(0.125));
        assert_eq!(parse_sm_scale("-2"), Ok(-2.0));
        assert!(parse_sm_scale("0").is_err());
        assert!(parse_sm_scale("nan").is_err());
        assert!(parse_sm_scale("inf").is_err());
        assert!(parse_sm_scale("x").is_err());
    }

    #[test]
    fn max_rel_l1_parser() {
        assert_eq!(parse_max_rel_l1("0.0135"), Ok(0.0135));
        assert_eq!(parse_max_rel_l1("0"), Ok(0.0));
        assert!(parse_max_rel_l1("-1").is_err());
        assert!(parse_max_rel_l1("nan").is_err());
    }

    #[test]
    fn run_defaults_and_options() {
        let cli = Cli::try_parse_from([
            "sageattn",
            "run",
            "in.safetensors",
            "--out",
            "o.safetensors",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        let opts = run.options();
        assert!(!opts.causal && opts.smooth_k && !opts.return_lse);
        assert_eq!(opts.sm_scale, None);
        assert_eq!(opts.layout, Layout::Hnd);
        assert_eq!(opts.pv_accum, PvAccum::F16);
        assert_eq!(
            (
                run.q_name.as_str(),
                run.k_name.as_str(),
                run.v_name.as_str()
            ),
            ("q", "k", "v")
        );
        assert!(!run.check_enabled());

        let cli = Cli::try_parse_from([
            "sageattn",
            "run",
            "in.safetensors",
            "--causal",
            "--no-smooth-k",
            "--sm-scale",
            "0.5",
            "--pv-accum",
            "f32",
            "--lse",
            "--layout",
            "nhd",
            "--max-rel-l1",
            "0.02",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        let opts = run.options();
        assert!(opts.causal && !opts.smooth_k && opts.return_lse);
        assert_eq!(opts.sm_scale, Some(0.5));
        assert_eq!(opts.layout, Layout::Nhd);
        assert_eq!(opts.pv_accum, PvAccum::F32);
        assert!(run.check_enabled());
        assert_eq!(run.out, None);
        assert_eq!(run.input_options().layout, Some(Layout::Nhd));

        let cli = Cli::try_parse_from([
            "sageattn",
            "run",
            "packed.safetensors",
            "--check",
            "--max-seqlen-q",
            "512",
            "--cu-seqlens-k-name",
            "cuk",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        let how = run.input_options();
        assert_eq!(how.layout, None);
        assert_eq!(
            how.max_seqlens,
            MaxSeqlens {
                q: Some(512),
                k: None
            }
        );
        let names = run.names();
        assert_eq!(
            (names.cu_seqlens_q.as_str(), names.cu_seqlens_k.as_str()),
            ("cu_seqlens_q", "cuk")
        );
    }

    #[test]
    fn out_is_required_without_check() {
        assert!(Cli::try_parse_from(["sageattn", "run", "in.safetensors"]).is_err());
        assert!(Cli::try_parse_from(["sageattn", "run", "in.safetensors", "--check"]).is_ok());
    }
}
