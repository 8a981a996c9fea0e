//! `bench`: SageAttention speed on the GPU, in TOPS, for a sweep of head_dim × causal × sequence
//! length, two numbers per case:
//!
//! - **kernel**: [`Prepared::attend_into`] on inputs quantized beforehand (the attention kernel
//!   alone);
//! - **full**: [`sageattn_into`] (K mean, INT8 quantization of Q and K, attention), what a caller
//!   pays;
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
//! outputs (for `scripts/compare.py`). See `docs/bench.md`.

use clap::{Parser, ValueEnum};
use cudarc::driver::{sys, CudaEvent, CudaSlice, DevicePtr};
use half::{bf16, f16};
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use sageattention::device_config::SUPPORTED_HEAD_DIMS;
use sageattention::error::CudaResultExt;
use sageattention::{
    sageattn, sageattn_into, Backend, DType, Error as SageError, Layout, Options, Prepared,
    PvAccum, Runtime, Tensor, TensorView,
};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "../benchlib/mod.rs"]
mod benchlib;

use benchlib::peers::{parse_peers, Peers};
use benchlib::report::{
    peak_bandwidth_gbs, render_table, CaseJson, ConfigJson, DeviceJson, PathJson, Report,
    SelfCheckJson, JSON_VERSION,
};
use benchlib::stats::{attention_flops, overhead_pct, rotation_sets, summarize, tops, Shape};

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// Which causal settings to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CausalArg {
    /// Both off and on.
    Both,
    /// Causal only.
    On,
    /// Non-causal only.
    Off,
}

/// Input element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DTypeArg {
    F16,
    Bf16,
}

/// Input memory layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LayoutArg {
    /// (batch, heads, seq, dim).
    Hnd,
    /// (batch, seq, heads, dim).
    Nhd,
}

/// P·V accumulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PvArg {
    F16,
    F32,
}

/// Which paths to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PathsArg {
    Both,
    Kernel,
    Full,
}

/// SageAttention speed (TOPS) over head_dim × causal × sequence length; see docs/bench.md.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench", version, about, long_about = None)]
struct Args {
    /// Head dimensions (comma-separated; supported: 64, 96, 128).
    #[arg(long, value_delimiter = ',', default_value = "64,96,128")]
    head_dims: Vec<usize>,
    /// Sequence lengths of queries and keys (comma-separated; `4096`, `4k`, `1M` all work).
    #[arg(long, value_delimiter = ',', value_parser = parse_len,
          default_value = "1024,2048,4096,8192,16384,32768")]
    seq_lens: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Query heads.
    #[arg(long, default_value_t = 32)]
    heads: usize,
    /// Key/value heads (grouped-query attention when fewer than --heads; must divide it).
    /// Default: --heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Causal masking.
    #[arg(long, value_enum, default_value_t = CausalArg::Both)]
    causal: CausalArg,
    /// Input (and output) element type.
    #[arg(long, value_enum, default_value_t = DTypeArg::F16)]
    dtype: DTypeArg,
    /// Memory layout of q, k, v and the output.
    #[arg(long, value_enum, default_value_t = LayoutArg::Hnd)]
    layout: LayoutArg,
    /// P·V accumulation: f16 (SageAttention's default, fastest) or f32.
    #[arg(long, value_enum, default_value_t = PvArg::F16)]
    pv_accum: PvArg,
    /// Kernel: the fastest for the device (wgmma on Hopper for d = 64/128), or the portable one.
    #[arg(long)]
    portable: bool,
    /// Turn off K smoothing (subtracting K's mean over the sequence).
    #[arg(long)]
    no_smooth_k: bool,
    /// Which paths to time: kernel (pre-quantized inputs), full (sageattn_into) or both.
    #[arg(long, value_enum, default_value_t = PathsArg::Both)]
    paths: PathsArg,
    /// Warm-up of each path of each case, ms of wall time (at least one launch).
    #[arg(long, default_value_t = 200.0)]
    warmup_ms: f64,
    /// Least number of timed launches per path and case.
    #[arg(long, default_value_t = 10)]
    min_iters: usize,
    /// Least total GPU time of the timed launches per path and case, seconds.
    #[arg(long, default_value_t = 0.3)]
    min_seconds: f64,
    /// Cap on the wall time of the timed launches of one path of one case, seconds; when it
    /// stops the timing before --min-iters, at least 3 launches are still timed.
    #[arg(long, default_value_t = 10.0)]
    max_seconds_per_case: f64,
    /// Most input sets rotated over per case.
    #[arg(long, default_value_t = 64)]
    max_sets: usize,
    /// Input sets per case (default: enough for the inputs to exceed twice the L2 cache).
    #[arg(long)]
    sets: Option<usize>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 20_241_002)]
    seed: u64,
    /// Write every number (device, config, per case and path: median, min, p10, p90, TOPS) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the grouped bar chart (TOPS per seq len, per head_dim × causal) as SVG here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Peers' numbers (the JSON scripts/compare.py writes): added to the table and the chart.
    #[arg(long, value_name = "FILE.json")]
    peers: Option<PathBuf>,
    /// No GPU: print the table (and --plot) of a JSON an earlier run wrote with --json.
    #[arg(long, value_name = "FILE.json")]
    from_json: Option<PathBuf>,
    /// No timing: run sageattn on every `<name>.q/.k/.v` of this safetensors file and write
    /// `<name>.o` to --accuracy-out (see docs/bench.md).
    #[arg(long, value_name = "IN.safetensors")]
    accuracy_file: Option<PathBuf>,
    /// Output of --accuracy-file (default: the input's name with `.out.safetensors`).
    #[arg(long, value_name = "OUT.safetensors")]
    accuracy_out: Option<PathBuf>,
    /// Skip the startup check of the output against a float64 CPU reference.
    #[arg(long)]
    no_check: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

/// Parses `4096`, `4k`, `4K`, `1m`, `1M` (k = 1024, M = 1024²).
fn parse_len(s: &str) -> Result<usize, String> {
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
    fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }
    fn causal_list(&self) -> Vec<bool> {
        match self.causal {
            CausalArg::Both => vec![false, true],
            CausalArg::On => vec![true],
            CausalArg::Off => vec![false],
        }
    }
    fn dtype(&self) -> DType {
        match self.dtype {
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
    fn layout(&self) -> Layout {
        match self.layout {
            LayoutArg::Hnd => Layout::Hnd,
            LayoutArg::Nhd => Layout::Nhd,
        }
    }
    fn pv_accum(&self) -> PvAccum {
        match self.pv_accum {
            PvArg::F16 => PvAccum::F16,
            PvArg::F32 => PvAccum::F32,
        }
    }
    fn options(&self, causal: bool) -> Options {
        Options {
            causal,
            smooth_k: !self.no_smooth_k,
            layout: self.layout(),
            pv_accum: self.pv_accum(),
            backend: if self.portable {
                Backend::Portable
            } else {
                Backend::Auto
            },
            ..Options::default()
        }
    }
    fn run_kernel(&self) -> bool {
        self.paths != PathsArg::Full
    }
    fn run_full(&self) -> bool {
        self.paths != PathsArg::Kernel
    }

    /// Checks what clap cannot.
    fn check(&self) -> Result<(), String> {
        if self.head_dims.is_empty() || self.seq_lens.is_empty() {
            return Err("--head-dims and --seq-lens need at least one value".into());
        }
        if let Some(d) = self
            .head_dims
            .iter()
            .find(|d| !SUPPORTED_HEAD_DIMS.contains(d))
        {
            return Err(format!(
                "--head-dims: {d} is not supported (supported: {SUPPORTED_HEAD_DIMS:?})"
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
        Ok(())
    }

    fn config_json(&self) -> ConfigJson {
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
            smooth_k: !self.no_smooth_k,
            warmup_ms: self.warmup_ms,
            min_iters: self.min_iters,
            min_seconds: self.min_seconds,
            max_seconds_per_case: self.max_seconds_per_case,
            max_sets: self.max_sets,
            seed: self.seed,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What ends the program with a non-zero status.
#[derive(Debug)]
enum BenchError {
    /// A library error (typed; printed as its message).
    Lib(SageError),
    /// Bad command line (exit status 2).
    Usage(String),
    /// Files and formats.
    Io(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Lib(e) => f.write_str(&one_line(&e.to_string())),
            BenchError::Usage(s) | BenchError::Io(s) => f.write_str(&one_line(s)),
        }
    }
}

impl From<SageError> for BenchError {
    fn from(e: SageError) -> Self {
        BenchError::Lib(e)
    }
}

/// Folds a multi-line message (a JIT log, say) into one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// True for errors after which the GPU context cannot be trusted (or nothing can run): the run
/// stops. Validation errors and running out of memory only skip the case.
fn is_fatal(e: &SageError) -> bool {
    match e {
        SageError::Cuda { source, .. } => source.0 != sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY,
        SageError::DriverUnavailable { .. }
        | SageError::UnsupportedDevice { .. }
        | SageError::ModuleUnavailable { .. } => true,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Random inputs
// ---------------------------------------------------------------------------------------------

/// xoshiro256++ (Blackman & Vigna), seeded through SplitMix64: fast, and independent streams per
/// chunk so that the data does not depend on the thread count.
struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Xoshiro256pp {
            s: [next(), next(), next(), next()],
        }
    }
}

impl RngCore for Xoshiro256pp {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Elements per independently seeded chunk of random data.
const RNG_CHUNK: usize = 1 << 16;

/// Fills `out` with the 16-bit patterns of N(0,1) samples in `dtype` (f16 or bf16), element `i`
/// being sample `first + i` of the stream of `seed` (chunked by [`RNG_CHUNK`], in parallel).
fn fill_normal_bits(out: &mut [u16], dtype: DType, seed: u64, first: usize) {
    assert!(first.is_multiple_of(RNG_CHUNK), "chunk-aligned start");
    out.par_chunks_mut(RNG_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let id = (first / RNG_CHUNK + i) as u64;
            let mut rng = Xoshiro256pp::new(seed ^ id.wrapping_mul(0xD134_2543_DE82_EF95));
            for x in chunk {
                let v: f32 = StandardNormal.sample(&mut rng);
                *x = match dtype {
                    DType::BF16 => bf16::from_f32(v).to_bits(),
                    _ => f16::from_f32(v).to_bits(),
                };
            }
        });
}

/// N(0,1) f32 samples rounded to `dtype` (for the self-check, whose reference needs the values).
fn normal_values(n: usize, dtype: DType, seed: u64) -> Vec<f32> {
    let mut bits = vec![0u16; n];
    fill_normal_bits(&mut bits, dtype, seed, 0);
    bits.iter().map(|&b| bits_to_f32(b, dtype)).collect()
}

fn bits_to_f32(b: u16, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_bits(b).to_f32(),
        _ => f16::from_bits(b).to_f32(),
    }
}

/// A device pool of `elems` N(0,1) 16-bit values, generated on the host in chunks (in parallel)
/// and each chunk uploaded once.
fn make_pool(
    rt: &Runtime,
    elems: usize,
    dtype: DType,
    seed: u64,
) -> Result<CudaSlice<u16>, SageError> {
    const UPLOAD_CHUNK: usize = 1 << 26; // 64 Mi elements, 128 MiB of host memory
    let mut pool = rt.alloc_zeros::<u16>(elems)?;
    let mut host = vec![0u16; UPLOAD_CHUNK.min(elems)];
    let mut start = 0;
    while start < elems {
        let len = UPLOAD_CHUNK.min(elems - start);
        let buf = &mut host[..len];
        fill_normal_bits(buf, dtype, seed, start);
        let mut dst = pool.slice_mut(start..start + len);
        rt.stream()
            .memcpy_htod(&*buf, &mut dst)
            .with_op(|| format!("uploading {len} random elements"))?;
        start += len;
    }
    rt.synchronize()?;
    Ok(pool)
}

// ---------------------------------------------------------------------------------------------
// Planning: input sets and memory
// ---------------------------------------------------------------------------------------------

/// One shape's input sets and memory needs.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plan {
    shape: Shape,
    /// Input sets rotated over.
    sets: usize,
    /// Elements of the random pool the sets take.
    pool_elems: usize,
    /// Device bytes needed besides the pool: one output per set, the quantized inputs of every
    /// set (kernel path), the scratch of one full call, and slack.
    other_bytes: u64,
}

/// Slack for the allocator and the driver, bytes.
const MEMORY_SLACK: u64 = 256 << 20;

fn plan(
    shape: Shape,
    l2_bytes: u64,
    sets_override: Option<usize>,
    max_sets: usize,
    bf16: bool,
) -> Plan {
    let sets = sets_override
        .unwrap_or_else(|| rotation_sets(shape.kernel_input_bytes(), l2_bytes, max_sets));
    let prepared = shape.prepared_bytes(bf16);
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
fn pool_size(plans: &[Plan], budget: u64) -> usize {
    plans
        .iter()
        .filter(|p| 2 * p.pool_elems as u64 + p.other_bytes <= budget)
        .map(|p| p.pool_elems)
        .max()
        .unwrap_or(0)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------

/// Fewest timed launches, even when the cap stops the timing early.
const MIN_SAMPLES: usize = 3;
/// Most launches queued between two synchronizations (and event pairs kept).
const MAX_BATCH: usize = 256;
/// GPU time aimed at per batch.
const BATCH_SECONDS: f64 = 0.1;

#[derive(Clone, Copy, Debug)]
struct Timing {
    warmup: Duration,
    min_iters: usize,
    min_gpu_seconds: f64,
    max_wall: Duration,
}

/// How many launches to queue next: about [`BATCH_SECONDS`] of work, no more than the stopping
/// rules still need, no more than fit before the cap, at least 1, at most [`MAX_BATCH`].
fn next_batch(t: &Timing, est_s: f64, done: usize, gpu_s: f64, wall: Duration) -> usize {
    let est = est_s.max(1e-6);
    let target = (BATCH_SECONDS / est).ceil() as usize;
    let need_iters = t.min_iters.saturating_sub(done);
    let need_time = ((t.min_gpu_seconds - gpu_s) / est).ceil().max(0.0) as usize;
    let need = need_iters
        .max(need_time)
        .max(MIN_SAMPLES.saturating_sub(done))
        .max(1);
    let left = t.max_wall.saturating_sub(wall).as_secs_f64();
    let fit = (left / est).ceil() as usize;
    target
        .min(need)
        .min(fit.max(MIN_SAMPLES.saturating_sub(done)))
        .clamp(1, MAX_BATCH)
}

/// Whether to stop timing after `done` launches of `gpu_s` seconds in `wall` time.
fn should_stop(t: &Timing, done: usize, gpu_s: f64, wall: Duration) -> bool {
    (done >= t.min_iters && gpu_s >= t.min_gpu_seconds)
        || (wall >= t.max_wall && done >= MIN_SAMPLES)
}

/// Launch times of one path.
struct Timed {
    /// GPU time of every timed launch (event pair), ms.
    samples: Vec<f64>,
    /// Least host time to queue one call on an idle stream during the warm-up, ms: when it
    /// approaches the GPU time, the GPU waits for the host (launch-bound).
    host_ms: f64,
}

/// Warms up, then times launches with an event pair around each.
/// `launch(i)` queues launch number `i` (the caller rotates input sets with it).
fn time_launches(
    rt: &Runtime,
    events: &[(CudaEvent, CudaEvent)],
    t: &Timing,
    mut launch: impl FnMut(usize) -> Result<(), SageError>,
) -> Result<Timed, SageError> {
    let stream = rt.stream();
    let warm_start = Instant::now();
    let mut i = 0;
    let mut last;
    let mut host = 0.0;
    loop {
        let t0 = Instant::now();
        launch(i)?;
        let queued = t0.elapsed();
        rt.synchronize()?;
        last = t0.elapsed();
        // The first call may include one-time work (module load): later calls replace it.
        let queued_ms = queued.as_secs_f64() * 1e3;
        host = if i <= 1 {
            queued_ms
        } else {
            host.min(queued_ms)
        };
        i += 1;
        if warm_start.elapsed() >= t.warmup {
            break;
        }
    }
    let est = last.as_secs_f64();
    let mut samples = Vec::new();
    let mut gpu_s = 0.0;
    let start = Instant::now();
    loop {
        let batch = next_batch(t, est, samples.len(), gpu_s, start.elapsed()).min(events.len());
        for (ev_start, ev_end) in &events[..batch] {
            ev_start.record(stream).op("recording a CUDA event")?;
            launch(i)?;
            ev_end.record(stream).op("recording a CUDA event")?;
            i += 1;
        }
        rt.synchronize()?;
        for (ev_start, ev_end) in &events[..batch] {
            let ms = f64::from(
                ev_start
                    .elapsed_ms(ev_end)
                    .op("reading a CUDA event time")?,
            );
            samples.push(ms);
            gpu_s += ms * 1e-3;
        }
        if should_stop(t, samples.len(), gpu_s, start.elapsed()) {
            return Ok(Timed {
                samples,
                host_ms: host,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Float64 reference (startup self-check)
// ---------------------------------------------------------------------------------------------

/// Attention in float64 on logical-order `[b][h][s][d]` data; query head `h` reads kv head
/// `h / (heads / kv_heads)`; causal masking bottom-right aligned (query `i` sees key `j` iff
/// `j <= i + seq_kv - seq_q`); a row that sees no key is 0.
#[allow(clippy::too_many_arguments)]
fn reference_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [batch, heads, seq_q, d]: [usize; 4],
    kv_heads: usize,
    seq_kv: usize,
    causal: bool,
    sm_scale: f64,
) -> Vec<f64> {
    let group = heads / kv_heads;
    let mut out = vec![0.0f64; batch * heads * seq_q * d];
    out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
        let i = row % seq_q;
        let bh = row / seq_q;
        let (b, h) = (bh / heads, bh % heads);
        let kv_base = (b * kv_heads + h / group) * seq_kv * d;
        let visible = if causal {
            (i as i64 + seq_kv as i64 - seq_q as i64 + 1).clamp(0, seq_kv as i64) as usize
        } else {
            seq_kv
        };
        if visible == 0 {
            return;
        }
        let qr = &q[row * d..(row + 1) * d];
        let scores: Vec<f64> = (0..visible)
            .map(|j| {
                let kr = &k[kv_base + j * d..kv_base + (j + 1) * d];
                qr.iter()
                    .zip(kr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
                    * sm_scale
            })
            .collect();
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let l: f64 = p.iter().sum();
        for (j, pj) in p.iter().enumerate() {
            let vr = &v[kv_base + j * d..kv_base + (j + 1) * d];
            for (oc, &vc) in o.iter_mut().zip(vr) {
                *oc += pj / l * f64::from(vc);
            }
        }
    });
    out
}

/// `Σ|o - r| / Σ|r|` and the cosine similarity of `o` and `r` (NaN when `o` has a NaN).
fn rel_l1_cos(o: &[f32], r: &[f64]) -> (f64, f64) {
    let (mut diff, mut norm1, mut dot, mut oo, mut rr) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (&a, &b) in o.iter().zip(r) {
        let a = f64::from(a);
        diff += (a - b).abs();
        norm1 += b.abs();
        dot += a * b;
        oo += a * a;
        rr += b * b;
    }
    (diff / norm1, dot / (oo.sqrt() * rr.sqrt()))
}

// ---------------------------------------------------------------------------------------------
// The GPU run
// ---------------------------------------------------------------------------------------------

struct Bench<'a> {
    rt: Runtime,
    args: &'a Args,
    device: DeviceJson,
    started: Instant,
    events: Vec<(CudaEvent, CudaEvent)>,
    progress_total: usize,
    progress_done: usize,
}

fn device_json(rt: &Runtime) -> Result<DeviceJson, SageError> {
    let i = rt.device_info()?;
    Ok(DeviceJson {
        ordinal: rt.ordinal(),
        name: i.name,
        compute_capability: format!("{}.{}", i.major, i.minor),
        sm_count: i.sm_count,
        clock_mhz: i.clock_mhz,
        memory_clock_mhz: i.memory_clock_mhz,
        memory_bus_width: i.memory_bus_width,
        peak_bandwidth_gbs: peak_bandwidth_gbs(i.memory_clock_mhz, i.memory_bus_width),
        total_memory_bytes: i.total_memory_bytes,
        l2_bytes: i.l2_bytes,
    })
}

fn causal_name(c: bool) -> &'static str {
    if c {
        "on"
    } else {
        "off"
    }
}

impl Bench<'_> {
    fn progress(&self, msg: &str) {
        if !self.args.quiet {
            let t = self.started.elapsed().as_secs();
            eprintln!(
                "[{:>3}/{} {:>2}m{:02}s] {msg}",
                self.progress_done,
                self.progress_total,
                t / 60,
                t % 60
            );
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            warmup: Duration::from_secs_f64(self.args.warmup_ms / 1e3),
            min_iters: self.args.min_iters,
            min_gpu_seconds: self.args.min_seconds,
            max_wall: Duration::from_secs_f64(self.args.max_seconds_per_case),
        }
    }

    fn free_memory(&self) -> Result<u64, SageError> {
        self.rt.bind()?;
        let (free, _) = self
            .rt
            .context()
            .mem_get_info()
            .op("querying free device memory")?;
        Ok(free as u64)
    }

    /// sageattn on a small shape whose length is no multiple of the tiles, against float64.
    fn self_check(&self, head_dim: usize, causal: bool) -> Result<SelfCheckJson, SageError> {
        let args = self.args;
        let group = args.heads / args.kv_heads();
        let (heads, kv_heads) = if group == 1 { (2, 2) } else { (group, 1) };
        let seq = 300;
        let dtype = args.dtype();
        let shape = [1, heads, seq, head_dim];
        let kv_shape = [1, kv_heads, seq, head_dim];
        let n_q = heads * seq * head_dim;
        let n_kv = kv_heads * seq * head_dim;
        let seed = args.seed ^ 0xC0FFEE ^ ((head_dim as u64) << 8) ^ u64::from(causal);
        let q = normal_values(n_q, dtype, seed);
        let k = normal_values(n_kv, dtype, seed ^ 1);
        let v = normal_values(n_kv, dtype, seed ^ 2);
        let layout = args.layout();
        let qt = Tensor::from_host_f32(&self.rt, &q, dtype, shape, layout)?;
        let kt = Tensor::from_host_f32(&self.rt, &k, dtype, kv_shape, layout)?;
        let vt = Tensor::from_host_f32(&self.rt, &v, dtype, kv_shape, layout)?;
        let out = sageattn(
            &self.rt,
            &qt.view(),
            &kt.view(),
            &vt.view(),
            &args.options(causal),
        )?;
        let o = out.o.to_host_f32(&self.rt)?;
        let r = reference_attention(
            &q,
            &k,
            &v,
            shape,
            kv_heads,
            seq,
            causal,
            1.0 / (head_dim as f64).sqrt(),
        );
        let (rel_l1, cos_sim) = rel_l1_cos(&o, &r);
        let ok = rel_l1.is_finite() && cos_sim.is_finite() && rel_l1 <= 0.05 && cos_sim >= 0.995;
        Ok(SelfCheckJson {
            head_dim,
            causal,
            shape,
            kv_heads,
            rel_l1,
            cos_sim,
            ok,
        })
    }

    /// Times the kernel and full paths of one shape and causal setting.
    #[allow(clippy::type_complexity)]
    fn run_case(
        &mut self,
        plan: &Plan,
        views: &[(TensorView<'_>, TensorView<'_>, TensorView<'_>)],
        outs: &mut [Tensor],
        causal: bool,
    ) -> Result<CaseJson, SageError> {
        let s = plan.shape;
        let opts = self.args.options(causal);
        let flops = attention_flops(s.batch, s.heads, s.seq, s.seq, s.head_dim, causal);
        let timing = self.timing();
        let sets = plan.sets;
        let label = format!(
            "d={} causal={} N={}",
            s.head_dim,
            causal_name(causal),
            s.seq
        );
        let to_path = |timed: &Timed| {
            summarize(&timed.samples).map(|stats| PathJson {
                host_enqueue_ms: Some(timed.host_ms),
                tops: tops(flops, stats.median_ms),
                tops_max: tops(flops, stats.min_ms),
                stats,
            })
        };
        let mut kernel = None;
        if self.args.run_kernel() {
            let prepared = views
                .iter()
                .map(|(q, k, v)| Prepared::new(&self.rt, q, k, v, &opts))
                .collect::<Result<Vec<_>, _>>()?;
            let rt = &self.rt;
            let samples = time_launches(rt, &self.events, &timing, |i| {
                let j = i % sets;
                prepared[j].attend_into(rt, &views[j].2, &mut outs[j].view_mut(), None)
            })?;
            drop(prepared);
            self.rt.synchronize()?;
            kernel = to_path(&samples);
            self.progress_done += 1;
            if let Some(p) = &kernel {
                self.progress(&format!(
                    "{label} kernel: {:.4} ms, {:.1} TOPS ({} launches, {} sets)",
                    p.stats.median_ms, p.tops, p.stats.iters, sets
                ));
            }
        }
        let mut full = None;
        if self.args.run_full() {
            let rt = &self.rt;
            let samples = time_launches(rt, &self.events, &timing, |i| {
                let j = i % sets;
                let (q, k, v) = &views[j];
                sageattn_into(rt, q, k, v, &mut outs[j].view_mut(), None, &opts)
            })?;
            full = to_path(&samples);
            self.progress_done += 1;
            if let Some(p) = &full {
                self.progress(&format!(
                    "{label} full:   {:.4} ms, {:.1} TOPS ({} launches, {} sets)",
                    p.stats.median_ms, p.tops, p.stats.iters, sets
                ));
            }
        }
        let quant_overhead_pct = match (&kernel, &full) {
            (Some(k), Some(f)) => overhead_pct(k.stats.median_ms, f.stats.median_ms),
            _ => None,
        };
        Ok(CaseJson {
            head_dim: s.head_dim,
            causal,
            seq_len: s.seq,
            batch: s.batch,
            heads: s.heads,
            kv_heads: s.kv_heads,
            flops,
            sets,
            kernel,
            full,
            quant_overhead_pct,
            skipped: None,
        })
    }

    /// Runs one shape (all causal settings) on inputs from the pool; pushes its cases.
    fn run_shape(
        &mut self,
        plan: &Plan,
        pool_base: u64,
        report: &mut Report,
    ) -> Result<(), SageError> {
        let s = plan.shape;
        let dtype = self.args.dtype();
        let layout = self.args.layout();
        let q_shape = [s.batch, s.heads, s.seq, s.head_dim];
        let kv_shape = [s.batch, s.kv_heads, s.seq, s.head_dim];
        let (q_strides, kv_strides) = (
            layout.contiguous_strides(q_shape),
            layout.contiguous_strides(kv_shape),
        );
        let ordinal = self.rt.ordinal();
        let views: Vec<_> = (0..plan.sets)
            .map(|i| {
                let base = pool_base + 2 * (i * s.set_elems()) as u64;
                let k_at = base + 2 * s.q_elems() as u64;
                let v_at = k_at + 2 * s.kv_elems() as u64;
                // SAFETY: the pool holds `plan.pool_elems` >= sets · set_elems initialized 16-bit
                // elements and outlives every view (it is dropped after the sweep); all work is
                // issued on the runtime's one stream, and nothing writes the pool after its upload.
                unsafe {
                    (
                        TensorView::from_raw(base, dtype, q_shape, q_strides, ordinal),
                        TensorView::from_raw(k_at, dtype, kv_shape, kv_strides, ordinal),
                        TensorView::from_raw(v_at, dtype, kv_shape, kv_strides, ordinal),
                    )
                }
            })
            .collect();
        let mut outs = (0..plan.sets)
            .map(|_| Tensor::alloc(&self.rt, dtype, q_shape, layout))
            .collect::<Result<Vec<_>, _>>()?;
        for causal in self.args.causal_list() {
            match self.run_case(plan, &views, &mut outs, causal) {
                Ok(c) => report.cases.push(c),
                Err(e) if !is_fatal(&e) => {
                    self.rt.synchronize()?;
                    let reason = one_line(&e.to_string());
                    self.progress(&format!(
                        "d={} causal={} N={}: skipped: {reason}",
                        s.head_dim,
                        causal_name(causal),
                        s.seq
                    ));
                    report.cases.push(skipped_case(plan, causal, reason));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn skipped_case(plan: &Plan, causal: bool, reason: String) -> CaseJson {
    let s = plan.shape;
    CaseJson {
        head_dim: s.head_dim,
        causal,
        seq_len: s.seq,
        batch: s.batch,
        heads: s.heads,
        kv_heads: s.kv_heads,
        flops: attention_flops(s.batch, s.heads, s.seq, s.seq, s.head_dim, causal),
        sets: plan.sets,
        kernel: None,
        full: None,
        quant_overhead_pct: None,
        skipped: Some(reason),
    }
}

/// The sweep; fills `report` as it goes (so that a fatal error still leaves what was measured).
fn sweep(bench: &mut Bench, report: &mut Report) -> Result<(), SageError> {
    let args = bench.args;
    let dtype = args.dtype();
    let bf16 = dtype == DType::BF16;
    let causal = args.causal_list();

    if !args.no_check {
        for &d in &args.head_dims {
            for &c in &causal {
                match bench.self_check(d, c) {
                    Ok(r) => {
                        println!(
                            "self-check d={d} causal={} {:?} kv_heads {}: rel L1 {:.2e}, cos {:.6} vs float64: {}",
                            causal_name(c),
                            r.shape,
                            r.kv_heads,
                            r.rel_l1,
                            r.cos_sim,
                            if r.ok { "ok" } else { "WRONG (timings below are of a kernel that fails the check)" }
                        );
                        report.self_check.push(r);
                    }
                    Err(e) if !is_fatal(&e) => {
                        println!(
                            "self-check d={d} causal={}: error: {}",
                            causal_name(c),
                            one_line(&e.to_string())
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    let l2 = bench.device.l2_bytes;
    let plans: Vec<Plan> = args
        .head_dims
        .iter()
        .flat_map(|&d| {
            args.seq_lens.iter().map(move |&n| Shape {
                batch: args.batch,
                heads: args.heads,
                kv_heads: args.kv_heads(),
                seq: n,
                head_dim: d,
            })
        })
        .map(|s| plan(s, l2, args.sets, args.max_sets, bf16))
        .collect();
    let free = bench.free_memory()?;
    let budget = free / 100 * 92;
    let pool_elems = pool_size(&plans, budget);
    bench.progress_total = plans.len()
        * causal.len()
        * (usize::from(args.run_kernel()) + usize::from(args.run_full()));
    let pool = if pool_elems > 0 {
        let t0 = Instant::now();
        let pool = make_pool(&bench.rt, pool_elems, dtype, args.seed)?;
        bench.progress(&format!(
            "inputs: {:.2} GiB of N(0,1) {} generated and uploaded in {:.1} s",
            gib(2 * pool_elems as u64),
            dtype,
            t0.elapsed().as_secs_f64()
        ));
        Some(pool)
    } else {
        None
    };
    let pool_base = pool.as_ref().map_or(0, |p| {
        let (ptr, guard) = p.device_ptr(bench.rt.stream());
        drop(guard);
        ptr
    });

    for p in &plans {
        let need = 2 * p.pool_elems as u64 + p.other_bytes;
        let free_now = bench.free_memory()?;
        let fits = p.pool_elems <= pool_elems && p.other_bytes <= free_now / 100 * 95;
        if !fits {
            let reason = format!(
                "does not fit in GPU memory (needs about {:.1} GiB with {} input set(s); {:.1} GiB free of {:.1})",
                gib(need),
                p.sets,
                gib(free),
                gib(bench.device.total_memory_bytes)
            );
            for &c in &causal {
                bench.progress_done +=
                    usize::from(args.run_kernel()) + usize::from(args.run_full());
                bench.progress(&format!(
                    "d={} causal={} N={}: skipped: {reason}",
                    p.shape.head_dim,
                    causal_name(c),
                    p.shape.seq
                ));
                report.cases.push(skipped_case(p, c, reason.clone()));
            }
            continue;
        }
        let before = report.cases.len();
        if let Err(e) = bench.run_shape(p, pool_base, report) {
            if is_fatal(&e) {
                return Err(e);
            }
            bench.rt.synchronize()?;
            let reason = one_line(&e.to_string());
            let done: Vec<bool> = report.cases[before..].iter().map(|c| c.causal).collect();
            for &c in causal.iter().filter(|c| !done.contains(c)) {
                report.cases.push(skipped_case(p, c, reason.clone()));
            }
        }
    }
    drop(pool);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// --accuracy-file
// ---------------------------------------------------------------------------------------------

/// Decodes a safetensors tensor (F16, BF16 or F32, little endian) to f32 and its dtype.
fn decode_tensor(
    t: &safetensors::tensor::TensorView<'_>,
) -> Result<(Vec<f32>, Option<DType>), String> {
    use safetensors::Dtype as S;
    let b = t.data();
    Ok(match t.dtype() {
        S::F16 => (
            b.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Some(DType::F16),
        ),
        S::BF16 => (
            b.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Some(DType::BF16),
        ),
        S::F32 => (
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None,
        ),
        other => return Err(format!("dtype {other:?} is not supported (F16, BF16, F32)")),
    })
}

/// f32 values to the little-endian bytes of `dtype` (f16 or bf16).
fn encode_values(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for &x in values {
        let bits = match dtype {
            DType::BF16 => bf16::from_f32(x).to_bits(),
            _ => f16::from_f32(x).to_bits(),
        };
        out.extend_from_slice(&bits.to_le_bytes());
    }
    out
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean")),
    }
}

/// Case names of an accuracy file: every `<name>` with a `<name>.q` tensor, sorted.
fn accuracy_cases<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = names
        .into_iter()
        .filter_map(|n| n.strip_suffix(".q").map(String::from))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn accuracy_file(rt: &Runtime, args: &Args, input: &Path, output: &Path) -> Result<(), BenchError> {
    let io = |what: &str, e: &dyn fmt::Display| {
        BenchError::Io(format!("{what} {}: {e}", input.display()))
    };
    let bytes = std::fs::read(input).map_err(|e| io("reading", &e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io("parsing", &e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io("parsing", &e))?;
    let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let names: Vec<String> = st.names().into_iter().cloned().collect();
    let cases = accuracy_cases(names.iter().map(String::as_str));
    if cases.is_empty() {
        return Err(BenchError::Io(format!(
            "{}: no `<name>.q` tensor",
            input.display()
        )));
    }
    let mut results: Vec<(String, Vec<usize>, DType, Vec<u8>)> = Vec::new();
    for name in &cases {
        let bad = |m: String| BenchError::Io(format!("{}: case `{name}`: {m}", input.display()));
        let mut tensors = Vec::new();
        for part in ["q", "k", "v"] {
            let t = st
                .tensor(&format!("{name}.{part}"))
                .map_err(|e| bad(format!("{part}: {e}")))?;
            let shape: [usize; 4] = t
                .shape()
                .try_into()
                .map_err(|_| bad(format!("{part} has shape {:?}, needs 4 dims", t.shape())))?;
            let (data, dt) = decode_tensor(&t).map_err(|m| bad(format!("{part}: {m}")))?;
            tensors.push((shape, data, dt.unwrap_or(args.dtype())));
        }
        let dtype = tensors[0].2;
        let get = |key: &str| meta.get(&format!("{name}.{key}"));
        let causal = get("causal")
            .map(|s| parse_bool(s))
            .transpose()
            .map_err(bad)?
            .unwrap_or(false);
        let smooth_k = get("smooth_k")
            .map(|s| parse_bool(s))
            .transpose()
            .map_err(bad)?
            .unwrap_or(!args.no_smooth_k);
        let sm_scale = get("sm_scale")
            .map(|s| {
                s.trim()
                    .parse::<f32>()
                    .map_err(|e| format!("sm_scale `{s}`: {e}"))
            })
            .transpose()
            .map_err(bad)?;
        let layout = args.layout();
        let up = |(shape, data, _): &([usize; 4], Vec<f32>, DType)| {
            Tensor::from_host_f32(rt, data, dtype, *shape, layout)
        };
        let (q, k, v) = (up(&tensors[0])?, up(&tensors[1])?, up(&tensors[2])?);
        let opts = Options {
            smooth_k,
            sm_scale,
            ..args.options(causal)
        };
        let out = sageattn(rt, &q.view(), &k.view(), &v.view(), &opts)?;
        let o = out.o.to_host_f32(rt)?;
        if !args.quiet {
            eprintln!(
                "accuracy: {name}: q {:?} k {:?} {dtype} causal={causal} smooth_k={smooth_k}",
                tensors[0].0, tensors[1].0
            );
        }
        results.push((
            format!("{name}.o"),
            tensors[0].0.to_vec(),
            dtype,
            encode_values(&o, dtype),
        ));
    }
    let views = results
        .iter()
        .map(|(n, shape, dt, data)| {
            let sdt = if *dt == DType::BF16 {
                safetensors::Dtype::BF16
            } else {
                safetensors::Dtype::F16
            };
            safetensors::tensor::TensorView::new(sdt, shape.clone(), data).map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Io(format!("building the output: {e}")))?;
    let info = Some(HashMap::from([(
        "tool".to_string(),
        "sageattention-bench".to_string(),
    )]));
    safetensors::serialize_to_file(views, &info, output)
        .map_err(|e| BenchError::Io(format!("writing {}: {e}", output.display())))?;
    println!(
        "accuracy: wrote {} output(s) to {}",
        results.len(),
        output.display()
    );
    Ok(())
}

fn default_accuracy_out(input: &Path) -> PathBuf {
    let s = input.to_string_lossy();
    let stem = s.strip_suffix(".safetensors").unwrap_or(&s);
    PathBuf::from(format!("{stem}.out.safetensors"))
}

// ---------------------------------------------------------------------------------------------
// Outputs and main
// ---------------------------------------------------------------------------------------------

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
        write_file(path, &benchlib::svg::render_chart(report, peers))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

fn config_line(c: &ConfigJson) -> String {
    format!(
        "config: batch {}, heads {}, kv_heads {}, {} {}, PV accumulation {}, K smoothing {} | timing: CUDA events per launch, \
         warm-up {} ms, median of >= {} launches and >= {} s GPU time (cap {} s), inputs N(0,1) rotated over > 2x L2",
        c.batch,
        c.heads,
        c.kv_heads,
        c.dtype,
        c.layout,
        c.pv_accum,
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

    let config = args.config_json();
    println!("{}", config_line(&config));
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
    let started = Instant::now();
    let mut bench = Bench {
        rt,
        args,
        device,
        started,
        events,
        progress_total: 0,
        progress_done: 0,
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

    fn parse(extra: &[&str]) -> Args {
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
        assert!(a.run_kernel() && a.run_full());
        assert!(a.check().is_ok());
        let o = a.options(true);
        assert!(o.causal && o.smooth_k && o.sm_scale.is_none());
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
        assert!(a.check().is_ok());
        let c = a.config_json();
        assert_eq!(
            (c.dtype.as_str(), c.layout.as_str(), c.pv_accum.as_str()),
            ("bf16", "nhd", "f32")
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--kv-heads", "5"][..],
            &["--head-dims", "80"],
            &["--min-iters", "0"],
            &["--warmup-ms=-1"],
            &["--max-seconds-per-case=nan"],
            &["--accuracy-out", "x"],
            &["--from-json", "a", "--accuracy-file", "b"],
            &["--batch", "0"],
        ] {
            let a = parse(bad);
            assert!(a.check().is_err(), "{bad:?}");
        }
        for bad in [
            &["--causal", "maybe"][..],
            &["--seq-lens", "0"],
            &["--seq-lens", "12x"],
            &["--dtype", "f32"],
        ] {
            let mut v = vec!["bench"];
            v.extend_from_slice(bad);
            assert!(Args::try_parse_from(v).is_err(), "{bad:?}");
        }
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

    #[test]
    fn one_line_errors() {
        assert_eq!(one_line("a\n  b\n\nc "), "a | b | c");
        let e = SageError::HeadsNotDivisible {
            q_heads: 32,
            kv_heads: 5,
        };
        assert!(!is_fatal(&e));
        let oom = SageError::Cuda {
            op: "x".into(),
            source: cudarc::driver::DriverError(sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY),
        };
        assert!(!is_fatal(&oom));
        let ill = SageError::Cuda {
            op: "x".into(),
            source: cudarc::driver::DriverError(sys::cudaError_enum::CUDA_ERROR_ILLEGAL_ADDRESS),
        };
        assert!(is_fatal(&ill));
        assert!(!BenchError::Lib(ill).to_string().contains('\n'));
    }

    #[test]
    fn batches_and_stopping() {
        let t = Timing {
            warmup: Duration::ZERO,
            min_iters: 10,
            min_gpu_seconds: 0.3,
            max_wall: Duration::from_secs(10),
        };
        // 100 µs launches: 0.3 s needs 3000, a batch is ~0.1 s = 1000 -> capped at MAX_BATCH
        assert_eq!(next_batch(&t, 1e-4, 0, 0.0, Duration::ZERO), MAX_BATCH);
        // 1 s launches: one at a time
        assert_eq!(next_batch(&t, 1.0, 0, 0.0, Duration::ZERO), 1);
        // 20 ms launches, 9 done with 0.29 s: 1 more is enough for both rules
        assert_eq!(next_batch(&t, 0.02, 9, 0.29, Duration::from_secs(1)), 1);
        assert!(!should_stop(&t, 9, 5.0, Duration::from_secs(1)));
        assert!(!should_stop(&t, 100, 0.2, Duration::from_secs(1)));
        assert!(should_stop(&t, 10, 0.3, Duration::from_secs(1)));
        // the cap wins over min_iters, but never before MIN_SAMPLES
        assert!(!should_stop(&t, 2, 20.0, Duration::from_secs(11)));
        assert!(should_stop(&t, 3, 30.0, Duration::from_secs(11)));
        // near the cap, long launches: still enough for MIN_SAMPLES
        assert_eq!(next_batch(&t, 5.0, 0, 0.0, Duration::from_secs(9)), 1);
    }

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
        let p = plan(small, l2, None, 64, false);
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
        let pb = plan(big, l2, None, 64, false);
        assert_eq!(pb.sets, 1);
        assert_eq!(plan(big, l2, Some(3), 64, false).sets, 3);
        let budget = 2 * pb.pool_elems as u64 + pb.other_bytes;
        assert_eq!(pool_size(&[p, pb], budget), pb.pool_elems.max(p.pool_elems));
        assert_eq!(pool_size(&[p, pb], budget - 1), p.pool_elems);
        assert_eq!(pool_size(&[pb], 0), 0);
    }

    #[test]
    fn rng_is_normal_and_deterministic() {
        let a = normal_values(1 << 18, DType::F16, 7);
        let b = normal_values(1 << 18, DType::F16, 7);
        assert_eq!(a, b);
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        assert!(a.iter().all(|x| x.is_finite()) && a.iter().filter(|&&x| x == 0.0).count() < 100);
        // chunked generation equals one pass
        let mut whole = vec![0u16; 3 * RNG_CHUNK];
        fill_normal_bits(&mut whole, DType::BF16, 9, 0);
        let mut tail = vec![0u16; RNG_CHUNK];
        fill_normal_bits(&mut tail, DType::BF16, 9, 2 * RNG_CHUNK);
        assert_eq!(&whole[2 * RNG_CHUNK..], &tail[..]);
        assert_ne!(
            normal_values(16, DType::F16, 1),
            normal_values(16, DType::F16, 2)
        );
    }

    #[test]
    fn reference_attention_basics() {
        // One key: every query's output is that key's value.
        let d = 8;
        let q: Vec<f32> = (0..3 * d).map(|i| i as f32 * 0.1).collect();
        let k: Vec<f32> = (0..d).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..d).map(|i| 1.0 + i as f32).collect();
        let o = reference_attention(&q, &k, &v, [1, 1, 3, d], 1, 1, false, 0.5);
        for row in o.chunks(d) {
            for (a, b) in row.iter().zip(&v) {
                assert!((a - f64::from(*b)).abs() < 1e-12);
            }
        }
        // Bottom-right causal with 3 queries and 1 key: only the last query sees it.
        let o = reference_attention(&q, &k, &v, [1, 1, 3, d], 1, 1, true, 0.5);
        assert!(o[..2 * d].iter().all(|&x| x == 0.0));
        assert!((o[2 * d] - 1.0).abs() < 1e-12);
        // q = 0: uniform weights -> mean of the visible values; GQA: heads 0,1 read kv head 0.
        let n = 4;
        let q = vec![0.0f32; 2 * n * d];
        let k: Vec<f32> = (0..n * d).map(|i| (i % 7) as f32).collect();
        let v: Vec<f32> = (0..n * d).map(|i| (i / d) as f32).collect(); // row j holds j
        let o = reference_attention(&q, &k, &v, [1, 2, n, d], 1, n, true, 1.0);
        for h in 0..2 {
            for i in 0..n {
                let want = (0..=i).map(|j| j as f64).sum::<f64>() / (i + 1) as f64;
                assert!((o[(h * n + i) * d] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn metrics() {
        let r = [1.0f64, -2.0, 3.0];
        let (l1, cos) = rel_l1_cos(&[1.0, -2.0, 3.0], &r);
        assert_eq!(l1, 0.0);
        assert!((cos - 1.0).abs() < 1e-12);
        let (l1, cos) = rel_l1_cos(&[1.5, -2.0, 3.0], &r);
        assert!((l1 - 0.5 / 6.0).abs() < 1e-12 && cos < 1.0);
        let (l1, cos) = rel_l1_cos(&[f32::NAN, -2.0, 3.0], &r);
        assert!(l1.is_nan() && cos.is_nan());
    }

    #[test]
    fn accuracy_file_helpers() {
        assert_eq!(
            accuracy_cases(["b.q", "b.k", "a.q", "a.v", "c.o", "a.q"]),
            ["a", "b"]
        );
        let vals = [0.0f32, 1.5, -2.25, 65504.0];
        let bytes = encode_values(&vals, DType::F16);
        let t =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![1, 1, 1, 4], &bytes)
                .unwrap();
        let (back, dt) = decode_tensor(&t).unwrap();
        assert_eq!(back, vals);
        assert_eq!(dt, Some(DType::F16));
        let bytes = encode_values(&vals[..3], DType::BF16);
        let t = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![3], &bytes)
            .unwrap();
        assert_eq!(
            decode_tensor(&t).unwrap(),
            (vals[..3].to_vec(), Some(DType::BF16))
        );
        assert_eq!(parse_bool("True"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("2").is_err());
        assert_eq!(
            default_accuracy_out(Path::new("/t/acc.safetensors")),
            PathBuf::from("/t/acc.out.safetensors")
        );
    }

    #[test]
    fn from_json_roundtrip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let report = benchlib::report::tests::fake_report();
        let json = dir.path().join("r.json");
        std::fs::write(&json, serde_json::to_string(&report).unwrap()).unwrap();
        let peers = dir.path().join("p.json");
        std::fs::write(&peers, benchlib::peers::tests::FAKE_PEERS).unwrap();
        let svg = dir.path().join("c.svg");
        let out_json = dir.path().join("again.json");
        let a = parse(&[
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
        benchlib::report::tests::assert_reports_close(&again, &report);
    }
}
