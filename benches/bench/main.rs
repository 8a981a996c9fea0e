//! `bench`: SageAttention speed on the GPU, in TOPS, for a sweep of head_dim × causal × sequence
//! length, two numbers per case:
//!
//! - **kernel**: [`Prepared::attend_into`](sageattention::Prepared::attend_into) on inputs
//!   quantized beforehand (the attention kernel alone);
//! - **full**: [`sageattn_into`](sageattention::sageattn_into) (K mean, INT8 quantization of Q
//!   and K, attention), what a caller pays;
//!
//! and the quantization overhead `(full - kernel) / full`.
//!
//! Timing: CUDA events around every launch after a warm-up; the median of at least `--min-iters`
//! launches and `--min-seconds` of GPU time (capped by `--max-seconds-per-case`); inputs are N(0,1)
//! (never zeros), drawn once on the host in parallel, uploaded once into a pool, and each case
//! rotates over as many input sets as it takes for their bytes to exceed twice the L2 cache.
//!
//! Other modes: `--from-json FILE` re-renders the table and `--plot` of an earlier run without a
//! GPU; `--accuracy-file IN.safetensors` runs `sageattn` on the q/k/v of a file and writes the
//! outputs (for `scripts/compare.py`); `--varlen` times `sageattn_varlen` on packed batches (a
//! seeded mix of lengths, and equal lengths) against the batched call. See `docs/bench.md`.

//!
//! Modules: [`args`] (the command line), [`sweep`](mod@sweep) (self-check and sweep) on [`inputs`] (random
//! pool), [`plan`] (input sets, memory) and [`timing`]; [`accuracy`] (`--accuracy-file`);
//! [`varlen`](mod@varlen) (`--varlen`); the CPU-only parts: [`stats`], [`report`] (JSON and
//! table), [`peers`], [`svg`] (the chart), [`varlen_report`] (the `--varlen` cases, JSON and
//! table).

mod accuracy;
mod args;
mod error;
mod inputs;
mod peers;
mod plan;
mod report;
mod stats;
mod svg;
mod sweep;
mod timing;
mod varlen;
mod varlen_report;

use clap::Parser;
use cudarc::driver::sys;
use sageattention::error::CudaResultExt;
use sageattention::{Error as SageError, Runtime};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use accuracy::{accuracy_file, default_accuracy_out};
use args::Args;
use error::{one_line, BenchError};
use peers::{parse_peers, Peers};
use report::{render_table, ConfigJson, Report, JSON_VERSION};
use sweep::{device_json, sweep, Bench};
use timing::MAX_BATCH;
use varlen::varlen_run;
use varlen_report::{
    mix_lengths, render_varlen_table, varlen_cases, VarlenConfigJson, VarlenReport,
    VARLEN_JSON_VERSION,
};

fn load_peers(path: &Path) -> Result<Peers, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Io(format!("reading {}: {e}", path.display())))?;
    parse_peers(&text).map_err(|e| BenchError::Io(format!("{}: {e}", path.display())))
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text)
        .map_err(|e| BenchError::Io(format!("writing {}: {e}", path.display())))
}

/// Prints the table and writes --json and --plot.
fn emit(args: &Args, report: &Report, peers: Option<&Peers>) -> Result<(), BenchError> {
    println!();
    print!("{}", render_table(report, peers));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| BenchError::Io(format!("JSON: {e}")))?;
        write_file(path, &(text + "\n"))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        write_file(path, &svg::render_chart(report, peers))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

fn config_line(c: &ConfigJson) -> String {
    format!(
        "config: batch {}, heads {}, kv_heads {}, {} {}, PV accumulation {}, PV precision {}, K smoothing {} | timing: CUDA events per launch, \
         warm-up {} ms, median of >= {} launches and >= {} s GPU time (cap {} s), inputs N(0,1) rotated over > 2x L2",
        c.batch,
        c.heads,
        c.kv_heads,
        c.dtype,
        c.layout,
        c.pv_accum,
        c.pv_precision,
        if c.smooth_k { "on" } else { "off" },
        c.warmup_ms,
        c.min_iters,
        c.min_seconds,
        c.max_seconds_per_case
    )
}

fn run(args: &Args) -> Result<(), BenchError> {
    args.check().map_err(BenchError::Usage)?;
    let peers = args.peers.as_deref().map(load_peers).transpose()?;

    if let Some(path) = &args.from_json {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Io(format!("reading {}: {e}", path.display())))?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| BenchError::Io(format!("{}: {e}", path.display())))?;
        if let Some(d) = &report.device {
            println!("{}", d.describe());
        }
        println!("{}", config_line(&report.config));
        return emit(args, &report, peers.as_ref());
    }

    let rt = Runtime::new(args.device)?;
    rt.allow_compact(!args.no_compact);
    if let Some(kib) = args.emulate_smem_per_sm {
        rt.emulate_smem_per_sm(Some(kib.saturating_mul(1024)));
        println!(
            "proxy: portable f16 kernels planned for {} KiB of shared memory per SM",
            rt.smem_per_sm() / 1024
        );
    }
    rt.require_sm80()?;
    let device = device_json(&rt)?;
    println!("{}", device.describe());

    if let Some(input) = &args.accuracy_file {
        let output = args
            .accuracy_out
            .clone()
            .unwrap_or_else(|| default_accuracy_out(input));
        return accuracy_file(&rt, args, input, &output);
    }

    let ctx = rt.context().clone();
    let events = (0..MAX_BATCH)
        .map(|_| {
            let ev = |ctx: &std::sync::Arc<cudarc::driver::CudaContext>| {
                ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .op("creating a CUDA event")
            };
            Ok((ev(&ctx)?, ev(&ctx)?))
        })
        .collect::<Result<Vec<_>, SageError>>()?;
    let started = Instant::now();
    let mut bench = Bench {
        rt,
        args,
        device: device.clone(),
        started,
        events,
        progress_total: 0,
        progress_done: 0,
    };
    if args.varlen {
        return run_varlen(&mut bench);
    }
    let config = args.config_json();
    println!("{}", config_line(&config));
    let mut report = Report {
        tool: "sageattention-bench".into(),
        version: JSON_VERSION,
        device: Some(device.clone()),
        config,
        self_check: Vec::new(),
        cases: Vec::new(),
        wall_seconds: 0.0,
        error: None,
    };
    let result = sweep(&mut bench, &mut report);
    report.wall_seconds = started.elapsed().as_secs_f64();
    report.sort_cases();
    if let Err(e) = &result {
        report.error = Some(one_line(&e.to_string()));
    }
    // What was measured is printed and written even when a fatal error stopped the sweep.
    emit(args, &report, peers.as_ref())?;
    result.map_err(BenchError::Lib)
}

/// `--varlen`: the cases, the run, then the table and `--json` (written even when a fatal error
/// stopped the run).
fn run_varlen(bench: &mut Bench) -> Result<(), BenchError> {
    let args = bench.args;
    let mix = mix_lengths(
        args.seed,
        args.varlen_seqs,
        args.varlen_min_len,
        args.varlen_max_len,
    );
    let cases = varlen_cases(
        &mix,
        args.batch,
        &args.seq_lens,
        &args.head_dims,
        &args.causal_list(),
    );
    let c = args.config_json();
    println!(
        "config (varlen): heads {}, kv_heads {}, {} packed [total, heads, d] (batched: NHD on the \
         same memory), PV accumulation {}, PV precision {}, K smoothing {} | mix of {} lengths \
         {:?} ({} tokens) | equal lengths: {} x {:?} | timing as the sweep",
        c.heads,
        c.kv_heads,
        c.dtype,
        c.pv_accum,
        c.pv_precision,
        if c.smooth_k { "on" } else { "off" },
        mix.len(),
        mix,
        mix.iter().sum::<usize>(),
        args.batch,
        args.seq_lens
    );
    let mut report = VarlenReport {
        tool: "sageattention-bench-varlen".into(),
        version: VARLEN_JSON_VERSION,
        device: Some(bench.device.clone()),
        config: VarlenConfigJson {
            heads: c.heads,
            kv_heads: c.kv_heads,
            dtype: c.dtype,
            pv_accum: c.pv_accum,
            pv_precision: c.pv_precision,
            smooth_k: c.smooth_k,
            mix,
            batch: args.batch,
            seq_lens: args.seq_lens.clone(),
            seed: args.seed,
        },
        self_check: Vec::new(),
        cases: Vec::new(),
        wall_seconds: 0.0,
        error: None,
    };
    let result = varlen_run(bench, &cases, &mut report);
    report.wall_seconds = bench.started.elapsed().as_secs_f64();
    if let Err(e) = &result {
        report.error = Some(one_line(&e.to_string()));
    }
    println!();
    print!("{}", render_varlen_table(&report));
    println!(
        "TOPS = sum over the sequences of 4·L²·H·d / median time (halved when causal), for both \
         paths; batched/varlen = batched time / varlen time (> 1: the packed call is faster)"
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Io(format!("JSON: {e}")))?;
        write_file(path, &(text + "\n"))?;
        eprintln!("bench: wrote {}", path.display());
    }
    result.map_err(BenchError::Lib)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::from(if matches!(e, BenchError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json_roundtrip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let report = report::tests::fake_report();
        let json = dir.path().join("r.json");
        std::fs::write(&json, serde_json::to_string(&report).unwrap()).unwrap();
        let peers = dir.path().join("p.json");
        std::fs::write(&peers, peers::tests::FAKE_PEERS).unwrap();
        let svg = dir.path().join("c.svg");
        let out_json = dir.path().join("again.json");
        let a = args::tests::parse(&[
            "--from-json",
            json.to_str().unwrap(),
            "--peers",
            peers.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
            "--json",
            out_json.to_str().unwrap(),
        ]);
        run(&a).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("sdpa-flash") && text.contains("</svg>"));
        let again: Report =
            serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
        report::tests::assert_reports_close(&again, &report);
    }
}
