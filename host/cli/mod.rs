//! The `sageattn` command-line tool: argument types ([`args`]), reading and checking inputs
//! ([`input`]), atomic output ([`output`]), the float64 check ([`check`]) and the GPU side
//! ([`gpu`]). [`main`] only wires them together.

pub mod args;
pub mod check;
pub mod error;
pub mod gpu;
pub mod input;
pub mod output;

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use sageattention::reference::RefOptions;
use sageattention::PvAccum;

use args::{Cli, Command, RunArgs};
use error::{CliError, EXIT_USAGE};
use input::{layout_name, FileDType, LoadedInputs};
use output::{AtomicFile, OutputTensors};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match &cli.command {
        Command::Run(args) => run(args),
        Command::Info(args) => gpu::info(args.device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

/// Parses the arguments. Help and version go to stdout (exit 0); a usage error is printed as one
/// `error: ` line on stderr (exit 2).
pub fn parse_args<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = e.print();
                Err(ExitCode::SUCCESS)
            }
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                Err(ExitCode::from(EXIT_USAGE))
            }
            _ => {
                eprintln!("{}", clap_error_line(&e.render().to_string()));
                Err(ExitCode::from(EXIT_USAGE))
            }
        },
    }
}

/// clap's error text reduced to one line: its first paragraph (the error and, for missing
/// arguments, their list), then a pointer to `--help`.
pub fn clap_error_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .trim_start()
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let mut line = first.join(" ");
    if !line.starts_with("error:") {
        line = format!("error: {line}");
    }
    line.push_str(" (see `sageattn --help`)");
    line
}

/// `sageattn run`: everything that can be checked on the CPU is checked before the GPU is touched,
/// and the output file is only replaced once the whole run has succeeded.
pub fn run(args: &RunArgs) -> Result<(), CliError> {
    let opts = args.options();
    let path = args.input.display().to_string();
    let bytes = input::read_file(&args.input)?;
    let inputs = input::load_inputs(&bytes, &path, &args.names(), args.input_options())?;
    drop(bytes);
    let p = inputs.problem;
    // Creating the temporary output file now reports a bad --out before any GPU work.
    let out_file = args.out.as_deref().map(AtomicFile::create).transpose()?;

    let sm_scale = opts
        .sm_scale
        .unwrap_or_else(|| 1.0 / (p.head_dim as f32).sqrt());
    let pv = match opts.pv_accum {
        PvAccum::F16 => "f16",
        PvAccum::F32 => "f32",
    };
    println!("{}", describe_input(&inputs));
    println!(
        "options: causal={} smooth_k={} sm_scale={sm_scale} pv_accum={pv} lse={}",
        opts.causal, opts.smooth_k, opts.return_lse
    );
    if inputs.dtype == FileDType::F32 {
        println!("note: F32 inputs are rounded to f16 for the GPU; o is written back as F32");
    }

    let gpu_out = gpu::run_on_gpu(&inputs, &opts, args.device)?;
    println!("ran {} on {}", gpu_out.kernel, gpu_out.device);

    if let (Some(file), Some(out_path)) = (out_file, &args.out) {
        let mut metadata = HashMap::from([
            (
                "producer".to_string(),
                format!("sageattn {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "layout".to_string(),
                if inputs.varlen.is_some() {
                    "packed"
                } else {
                    layout_name(inputs.layout)
                }
                .to_string(),
            ),
            ("causal".to_string(), opts.causal.to_string()),
            ("smooth_k".to_string(), opts.smooth_k.to_string()),
            ("sm_scale".to_string(), sm_scale.to_string()),
            ("pv_accum".to_string(), pv.to_string()),
        ]);
        if let Some(s) = &inputs.varlen {
            metadata.insert("varlen".to_string(), "true".to_string());
            metadata.insert("sequences".to_string(), s.batch.batch().to_string());
        }
        let bytes = output::serialize_output(&OutputTensors {
            o: &gpu_out.o,
            o_shape: p.o_shape(),
            dtype: inputs.dtype,
            layout: inputs.layout,
            packed: inputs.varlen.is_some(),
            lse: gpu_out.lse.as_deref(),
            metadata,
        })?;
        file.commit(&bytes)?;
        let (o_shape, o_layout, lse_shape) = match inputs.varlen {
            None => (
                input::file_shape(p.o_shape(), inputs.layout).to_vec(),
                layout_name(inputs.layout),
                p.lse_shape().to_vec(),
            ),
            Some(_) => (
                vec![p.qo_len, p.q_heads, p.head_dim],
                "packed",
                vec![p.q_heads, p.qo_len],
            ),
        };
        println!(
            "wrote {} (o {} {o_shape:?} {o_layout}{})",
            out_path.display(),
            inputs.dtype.name(),
            if opts.return_lse {
                format!(", lse F32 {lse_shape:?}")
            } else {
                String::new()
            }
        );
    }

    if args.check_enabled() {
        let ref_opts = RefOptions {
            causal: opts.causal,
            sm_scale: opts.sm_scale,
        };
        println!(
            "checking: two float64 attentions on the CPU (exact and fp16 baseline), about {:.1} \
             GFLOP on {} threads",
            check::reference_gflop(&inputs, opts.causal),
            rayon::current_num_threads()
        );
        let report = check::run_check(&inputs, &ref_opts, &gpu_out.o, gpu_out.lse.as_deref());
        println!("{}", check::format_report(&report, pv));
        if let Some(max) = args.max_rel_l1 {
            check::enforce_max_rel_l1(&report, max)?;
            println!(
                "rel L1 {:.4e} <= --max-rel-l1 {max}: ok",
                report.ours.rel_l1
            );
        }
    }
    Ok(())
}

/// The `input:` line: shapes, dtype and layout; for a packed input the packed shapes and the
/// sequences.
fn describe_input(inputs: &LoadedInputs) -> String {
    let (dtype, p) = (inputs.dtype.name(), &inputs.problem);
    match &inputs.varlen {
        None => format!(
            "input: q {:?}, k {:?}, v {:?} [batch, heads, seq, head_dim], {dtype} {}",
            inputs.q.shape,
            inputs.k.shape,
            inputs.v.shape,
            layout_name(inputs.layout)
        ),
        Some(s) => {
            let q = [p.qo_len, p.q_heads, p.head_dim];
            let kv = [p.kv_len, p.kv_heads, p.head_dim];
            format!(
                "input: packed q {q:?}, k {kv:?}, v {kv:?} {}, {dtype}; {} sequences, \
                 max_seqlen_q {}, max_seqlen_k {}",
                input::PACKED_DIMS,
                s.batch.batch(),
                s.max_seqlen_q,
                s.max_seqlen_k
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let text = "error: the following required arguments were not provided:\n  --out <FILE>\n\n\
                    Usage: sageattn run --out <FILE> <INPUT>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_error_line(text),
            "error: the following required arguments were not provided: --out <FILE> \
             (see `sageattn --help`)"
        );
    }
}
