//! Tests of the `sageattn` binary: they write .safetensors files with the `safetensors` crate into
//! a temporary directory and run the built executable on them.
//!
//! The CPU tests (run everywhere) cover every bad input: each must fail with a one-line `error: `
//! message on stderr, the documented exit status, and nothing written to `--out`. The GPU tests
//! (`#[ignore = "needs a CUDA GPU"]`, run with `cargo test --test cli -- --ignored --nocapture`)
//! run real attention and check the output file and its accuracy.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use safetensors::tensor::{serialize_to_file, Dtype, SafeTensors, TensorView};
use sageattention::reference::{
    attention_f64, attention_varlen_f64, compare, HostTensor, RefOptions,
};

/// The binary under test: cargo's build of it, or `$SAGEATTN_BIN` (for running a prebuilt test
/// executable on another machine, where cargo's path does not exist).
fn bin() -> PathBuf {
    std::env::var_os("SAGEATTN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sageattn")))
}

/// Exit status, stdout and stderr of one run of the tool.
struct RunResult {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl RunResult {
    /// Asserts a failure with `code` whose stderr is exactly one line starting with `error: ` and
    /// containing every one of `needles`; returns that line.
    fn expect_error(&self, code: i32, needles: &[&str]) -> String {
        assert_eq!(
            self.code,
            Some(code),
            "exit status; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "exactly one stderr line, got:\n{}",
            self.stderr
        );
        let line = lines[0];
        assert!(line.starts_with("error: "), "prefix: {line}");
        for n in needles {
            assert!(line.contains(n), "`{n}` missing from: {line}");
        }
        line.to_string()
    }
}

fn sageattn(args: &[&str]) -> RunResult {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("the binary runs");
    let r = RunResult {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!("$ sageattn {}\n{}{}", args.join(" "), r.stdout, r.stderr);
    r
}

/// One tensor to put in a test file: name, dtype, shape and f32 values (converted to `dtype`).
struct Spec {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn spec(name: &'static str, dtype: Dtype, shape: &[usize]) -> Spec {
    let n = shape.iter().product();
    Spec {
        name,
        dtype,
        shape: shape.to_vec(),
        values: (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect(),
    }
}

fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::F32 => values.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        Dtype::F64 => values
            .iter()
            .flat_map(|&x| f64::from(x).to_le_bytes())
            .collect(),
        Dtype::I32 => values
            .iter()
            .flat_map(|&x| (x as i32).to_le_bytes())
            .collect(),
        Dtype::I64 => values
            .iter()
            .flat_map(|&x| (x as i64).to_le_bytes())
            .collect(),
        other => panic!("test helper does not encode {other:?}"),
    }
}

fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => panic!("unexpected output dtype {other:?}"),
    }
}

fn write_file(path: &Path, specs: &[Spec]) {
    let bytes: Vec<Vec<u8>> = specs.iter().map(|s| encode(s.dtype, &s.values)).collect();
    let views: Vec<(&str, TensorView<'_>)> = specs
        .iter()
        .zip(&bytes)
        .map(|(s, b)| {
            (
                s.name,
                TensorView::new(s.dtype, s.shape.clone(), b).expect("view"),
            )
        })
        .collect();
    serialize_to_file(views, &None, path).expect("write test file");
}

/// A temp dir holding `in.safetensors` with the given tensors; returns (dir, input, output path).
fn setup(specs: &[Spec]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.safetensors");
    write_file(&input, specs);
    let out = dir.path().join("o.safetensors");
    (dir, input, out)
}

fn qkv(dtype: Dtype, q: &[usize], k: &[usize], v: &[usize]) -> Vec<Spec> {
    vec![
        spec("q", dtype, q),
        spec("k", dtype, k),
        spec("v", dtype, v),
    ]
}

/// The directory's entries other than the input file.
fn others(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "in.safetensors")
        .collect();
    v.sort();
    v
}

/// Runs `run INPUT --out OUT extra...`.
fn run_on(input: &Path, out: &Path, extra: &[&str]) -> RunResult {
    let mut args = vec![
        "run",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sageattn(&args)
}

/// Runs `run IN --out OUT extra...` on `specs` and expects an input error (exit 2) with the
/// needles, and no output or temporary file left behind.
fn expect_input_error(specs: &[Spec], extra: &[&str], needles: &[&str]) -> String {
    let (dir, input, out) = setup(specs);
    let line = run_on(&input, &out, extra).expect_error(2, needles);
    assert_eq!(others(dir.path()), Vec::<String>::new(), "nothing written");
    line
}

fn gpu_present() -> bool {
    sageattention::Runtime::new(0).is_ok()
}

// ------------------------------------------------------------------------------------------------
// CPU tests
// ------------------------------------------------------------------------------------------------

#[test]
fn help_works() {
    let r = sageattn(&["--help"]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.contains("run") && r.stdout.contains("info"),
        "{}",
        r.stdout
    );
    let r = sageattn(&["run", "--help"]);
    assert_eq!(r.code, Some(0));
    for flag in [
        "--out",
        "--q-name",
        "--k-name",
        "--v-name",
        "--layout",
        "--causal",
        "--no-smooth-k",
        "--sm-scale",
        "--pv-accum",
        "--lse",
        "--check",
        "--max-rel-l1",
        "--device",
        "--cu-seqlens-q-name",
        "--cu-seqlens-k-name",
        "--max-seqlen-q",
        "--max-seqlen-k",
    ] {
        assert!(r.stdout.contains(flag), "{flag} missing from run --help");
    }
    assert!(
        r.stdout.contains("F32 inputs are rounded to F16"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Packed (variable-length) input"),
        "{}",
        r.stdout
    );
    let r = sageattn(&["info", "--help"]);
    assert_eq!(r.code, Some(0));
    let r = sageattn(&["--version"]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_are_one_line() {
    sageattn(&["run", "x.safetensors"]).expect_error(2, &["--out"]);
    sageattn(&["run", "x.safetensors", "--out", "o", "--bogus"]).expect_error(2, &["--bogus"]);
    sageattn(&["run", "x.safetensors", "--check", "--pv-accum", "f8"])
        .expect_error(2, &["f8", "f16, f32"]);
    sageattn(&["run", "x.safetensors", "--check", "--layout", "bhsd"])
        .expect_error(2, &["hnd, nhd"]);
    sageattn(&["run", "x.safetensors", "--check", "--sm-scale", "0"])
        .expect_error(2, &["--sm-scale"]);
    sageattn(&["run", "x.safetensors", "--check", "--sm-scale", "inf"])
        .expect_error(2, &["--sm-scale"]);
    sageattn(&["run", "x.safetensors", "--max-rel-l1", "-1"]).expect_error(2, &["--max-rel-l1"]);
    // A negative scale is a valid softmax scale, not a flag.
    let r = sageattn(&[
        "run",
        "missing.safetensors",
        "--check",
        "--sm-scale",
        "-0.5",
    ]);
    r.expect_error(2, &["cannot read", "missing.safetensors"]);
    sageattn(&["frobnicate"]).expect_error(2, &["frobnicate"]);
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("nope.safetensors");
    let out = dir.path().join("o.safetensors");
    run_on(&input, &out, &[]).expect_error(2, &["cannot read", "nope.safetensors", "no such file"]);
    assert!(!out.exists());
    // A directory is not a file either.
    sageattn(&["run", dir.path().to_str().unwrap(), "--check"]).expect_error(2, &["directory"]);
}

#[test]
fn not_a_safetensors_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("o.safetensors");
    for (name, content) in [
        (
            "text.safetensors",
            b"this is not a safetensors file at all".as_slice(),
        ),
        ("empty.safetensors", b"".as_slice()),
        ("short.safetensors", b"\x05\x00".as_slice()),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, content).expect("write");
        run_on(&input, &out, &[]).expect_error(2, &[name, "is not a valid .safetensors file"]);
    }
    // A valid header followed by truncated data.
    let input = dir.path().join("truncated.safetensors");
    write_file(
        &input,
        &qkv(Dtype::F16, &[1, 1, 8, 64], &[1, 1, 8, 64], &[1, 1, 8, 64]),
    );
    let bytes = std::fs::read(&input).expect("read");
    std::fs::write(&input, &bytes[..bytes.len() - 10]).expect("truncate");
    run_on(&input, &out, &[]).expect_error(2, &["is not a valid .safetensors file", "truncated"]);
    assert!(!out.exists());
}

#[test]
fn missing_tensor_is_named_and_present_ones_listed() {
    let s = [1, 1, 8, 64];
    let specs = vec![
        spec("q", Dtype::F16, &s),
        spec("k", Dtype::F16, &s),
        spec("values", Dtype::F16, &s),
    ];
    expect_input_error(
        &specs,
        &[],
        &[
            "tensor `v` (v) not found",
            "tensors present: `k`, `q`, `values`",
            "--v-name",
        ],
    );
    // A renamed tensor is looked up under the name given.
    let specs = vec![
        spec("query", Dtype::F16, &s),
        spec("k", Dtype::F16, &s),
        spec("v", Dtype::F16, &s),
    ];
    expect_input_error(
        &specs,
        &["--q-name", "Q"],
        &["tensor `Q` (q) not found", "`k`, `query`, `v`", "--q-name"],
    );
    // A file without tensors.
    expect_input_error(
        &[],
        &[],
        &["tensor `q` (q) not found", "it holds no tensors"],
    );
}

#[test]
fn custom_names_appear_in_messages() {
    let specs = vec![
        spec("query", Dtype::F16, &[1, 1, 8, 64]),
        spec("key", Dtype::F16, &[1, 1, 8]),
        spec("value", Dtype::F16, &[1, 1, 8, 64]),
    ];
    expect_input_error(
        &specs,
        &["--q-name", "query", "--k-name", "key", "--v-name", "value"],
        &["k (`key`) has rank 3", "expected rank 4"],
    );
}

#[test]
fn wrong_rank() {
    let line = expect_input_error(
        &qkv(Dtype::F16, &[8, 64], &[1, 1, 8, 64], &[1, 1, 8, 64]),
        &[],
        &[
            "`q` has rank 2",
            "[8, 64]",
            "expected rank 4",
            "[batch, heads, seq, head_dim]",
        ],
    );
    assert!(line.contains("--layout hnd"), "{line}");
    expect_input_error(
        &qkv(
            Dtype::F16,
            &[1, 1, 8, 64],
            &[1, 1, 8, 64],
            &[1, 1, 1, 8, 64],
        ),
        &["--layout", "nhd"],
        &[
            "`v` has rank 5",
            "[batch, seq, heads, head_dim]",
            "--layout nhd",
        ],
    );
}

#[test]
fn dtype_mismatch() {
    let s = [1, 1, 8, 64];
    let specs = vec![
        spec("q", Dtype::F16, &s),
        spec("k", Dtype::BF16, &s),
        spec("v", Dtype::F16, &s),
    ];
    expect_input_error(
        &specs,
        &[],
        &["same dtype", "`q` is F16", "`k` is BF16", "`v` is F16"],
    );
    let specs = vec![
        spec("q", Dtype::F32, &s),
        spec("k", Dtype::F32, &s),
        spec("v", Dtype::BF16, &s),
    ];
    expect_input_error(&specs, &[], &["same dtype", "`v` is BF16"]);
}

#[test]
fn unsupported_dtype() {
    let s = [1, 1, 8, 64];
    let specs = vec![
        spec("q", Dtype::F64, &s),
        spec("k", Dtype::F64, &s),
        spec("v", Dtype::F64, &s),
    ];
    expect_input_error(
        &specs,
        &[],
        &["`q` has unsupported dtype F64", "supported: F16, BF16, F32"],
    );
    let specs = vec![
        spec("q", Dtype::F16, &s),
        spec("k", Dtype::I32, &s),
        spec("v", Dtype::F16, &s),
    ];
    expect_input_error(&specs, &[], &["`k` has unsupported dtype I32"]);
}

#[test]
fn unsupported_head_dim_lists_the_supported_ones() {
    let s = [1, 2, 8, 36];
    expect_input_error(
        &qkv(Dtype::F16, &s, &s, &s),
        &[],
        &[
            "unsupported head_dim 36",
            "supported head_dims: every multiple of 8 from 8 to 256",
        ],
    );
    let s = [1, 2, 8, 264];
    expect_input_error(
        &qkv(Dtype::BF16, &s, &s, &s),
        &[],
        &["unsupported head_dim 264"],
    );
}

#[test]
fn heads_not_divisible() {
    expect_input_error(
        &qkv(Dtype::F16, &[1, 3, 8, 64], &[1, 2, 8, 64], &[1, 2, 8, 64]),
        &[],
        &[
            "`q` has 3 heads",
            "not a multiple of the 2 heads",
            "q_heads % kv_heads == 0",
        ],
    );
    // With --layout nhd the heads are the third dimension of the file shape.
    expect_input_error(
        &qkv(Dtype::F16, &[1, 8, 5, 64], &[1, 8, 2, 64], &[1, 8, 2, 64]),
        &["--layout", "nhd"],
        &["`q` has 5 heads", "2 heads"],
    );
}

#[test]
fn batch_and_head_dim_mismatch() {
    expect_input_error(
        &qkv(Dtype::F16, &[2, 1, 8, 64], &[1, 1, 8, 64], &[1, 1, 8, 64]),
        &[],
        &["batch mismatch", "`q` has batch 2", "`k` has batch 1"],
    );
    expect_input_error(
        &qkv(Dtype::F16, &[1, 1, 8, 64], &[1, 1, 8, 128], &[1, 1, 8, 128]),
        &[],
        &[
            "head_dim mismatch",
            "`q` has head_dim 64",
            "`k` has head_dim 128",
        ],
    );
    expect_input_error(
        &qkv(Dtype::F16, &[1, 1, 8, 64], &[1, 1, 8, 64], &[1, 1, 9, 64]),
        &[],
        &[
            "`v` must have the shape of `k`",
            "[1, 1, 8, 64]",
            "[1, 1, 9, 64]",
        ],
    );
    expect_input_error(
        &qkv(Dtype::F16, &[1, 1, 8, 64], &[1, 1, 8, 64], &[1, 1, 8, 96]),
        &[],
        &["`v` must have the shape of `k`"],
    );
}

#[test]
fn empty_tensors() {
    expect_input_error(
        &qkv(Dtype::F16, &[1, 1, 8, 64], &[1, 1, 0, 64], &[1, 1, 0, 64]),
        &[],
        &["`k` is empty", "[1, 1, 0, 64]"],
    );
    expect_input_error(
        &qkv(Dtype::F16, &[0, 1, 8, 64], &[0, 1, 8, 64], &[0, 1, 8, 64]),
        &[],
        &["`q` is empty"],
    );
}

#[test]
fn bad_output_path() {
    let s = [1, 1, 8, 64];
    let (dir, input, _) = setup(&qkv(Dtype::F16, &s, &s, &s));
    let missing = dir.path().join("no-such-dir").join("o.safetensors");
    run_on(&input, &missing, &[]).expect_error(2, &["--out", "does not exist"]);
    run_on(&input, dir.path(), &[]).expect_error(2, &["--out", "is a directory"]);
    assert_eq!(others(dir.path()), Vec::<String>::new());
}

#[test]
fn failed_run_keeps_an_existing_output() {
    let (dir, input, out) = setup(&qkv(
        Dtype::F16,
        &[1, 1, 8, 36],
        &[1, 1, 8, 36],
        &[1, 1, 8, 36],
    ));
    std::fs::write(&out, b"previous output").expect("write");
    run_on(&input, &out, &[]).expect_error(2, &["head_dim 36"]);
    assert_eq!(std::fs::read(&out).expect("read"), b"previous output");
    assert_eq!(others(dir.path()), vec!["o.safetensors".to_string()]);
}

/// Valid input on a machine without a GPU: the CPU checks pass, the GPU step fails with exit 1,
/// and neither a partial output nor a temporary file is left (an existing output is kept).
#[test]
fn valid_input_without_gpu_is_a_runtime_error() {
    if gpu_present() {
        eprintln!("skipped: a GPU is present");
        return;
    }
    let s = [1, 2, 64, 64];
    let (dir, input, out) = setup(&qkv(Dtype::F16, &s, &s, &s));
    std::fs::write(&out, b"previous output").expect("write");
    let r = run_on(&input, &out, &["--check"]);
    r.expect_error(1, &["CUDA"]);
    assert!(r.stdout.contains("input: q [1, 2, 64, 64]"), "{}", r.stdout);
    assert_eq!(std::fs::read(&out).expect("read"), b"previous output");
    assert_eq!(others(dir.path()), vec!["o.safetensors".to_string()]);
}

#[test]
fn info_without_gpu_prints_version_and_variants_then_fails() {
    if gpu_present() {
        eprintln!("skipped: a GPU is present");
        return;
    }
    let r = sageattn(&["info"]);
    r.expect_error(1, &["CUDA"]);
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", r.stdout);
    for name in sageattention::attention::attention_kernel_names() {
        assert!(r.stdout.contains(name), "{name} missing:\n{}", r.stdout);
    }
}

// ------------------------------------------------------------------------------------------------
// Packed (variable-length) inputs, CPU side
// ------------------------------------------------------------------------------------------------

/// Prefix sums as a tensor to put in a test file.
fn cu(name: &'static str, dtype: Dtype, values: &[i32]) -> Spec {
    Spec {
        name,
        dtype,
        shape: vec![values.len()],
        values: values.iter().map(|&x| x as f32).collect(),
    }
}

/// A packed file: q [10, 4, 64], k and v [12, 2, 64] (f16), with the given prefix sums.
fn packed(cu_q: &[i32], cu_k: &[i32]) -> Vec<Spec> {
    let mut specs = qkv(Dtype::F16, &[10, 4, 64], &[12, 2, 64], &[12, 2, 64]);
    specs.push(cu("cu_seqlens_q", Dtype::I32, cu_q));
    specs.push(cu("cu_seqlens_k", Dtype::I32, cu_k));
    specs
}

#[test]
fn packed_input_errors_are_input_errors() {
    let (ok_q, ok_k): (&[i32], &[i32]) = (&[0, 3, 3, 10], &[0, 0, 5, 12]);
    // The library's cu_seqlens rules, checked before the GPU is touched.
    expect_input_error(
        &packed(&[0, 3, 2, 10], ok_k),
        &[],
        &["`cu_seqlens_q` is not monotone", "entry 2 is 2 after 3"],
    );
    expect_input_error(
        &packed(ok_q, &[0, 0, 5, 11]),
        &[],
        &["`cu_seqlens_k` ends at 11", "`k` holds 12 rows"],
    );
    expect_input_error(
        &packed(ok_q, &[0, 12]),
        &[],
        &["cu_seqlens_q describes 3 sequences but cu_seqlens_k 1"],
    );
    expect_input_error(
        &packed(&[2, 3, 3, 10], ok_k),
        &[],
        &["`cu_seqlens_q`[0] is 2", "start at 0"],
    );
    expect_input_error(&packed(&[0], &[0]), &[], &["`cu_seqlens_q` has 1 entries"]);
    expect_input_error(
        &packed(ok_q, ok_k),
        &["--max-seqlen-k", "6"],
        &[
            "sequence 2 of `cu_seqlens_k` has length 7",
            "max_seqlen given (6)",
        ],
    );
    // The prefix sums themselves.
    let mut specs = packed(ok_q, ok_k);
    specs[4] = cu("cu_seqlens_k", Dtype::I64, ok_k);
    expect_input_error(&specs, &[], &["cu_seqlens_k", "I64", "must be I32"]);
    specs[4] = Spec {
        shape: vec![2, 2],
        ..cu("cu_seqlens_k", Dtype::I32, &[0, 0, 5, 12])
    };
    expect_input_error(&specs, &[], &["cu_seqlens_k", "rank 2", "[batch + 1]"]);
    let mut specs = packed(ok_q, ok_k);
    specs.pop();
    expect_input_error(
        &specs,
        &[],
        &[
            "holds `cu_seqlens_q` but not `cu_seqlens_k`",
            "--cu-seqlens-k-name",
        ],
    );
    // Custom names are looked up under the name given.
    expect_input_error(
        &packed(ok_q, ok_k),
        &["--cu-seqlens-q-name", "cuq"],
        &["holds `cu_seqlens_k` but not `cuq`"],
    );
    // The packed tensors.
    let mut specs = packed(ok_q, ok_k);
    specs[0] = spec("q", Dtype::F16, &[1, 10, 4, 64]);
    expect_input_error(
        &specs,
        &[],
        &["`q` has rank 4", "needs rank 3", "[total, heads, head_dim]"],
    );
    let mut specs = packed(ok_q, ok_k);
    specs[0] = spec("q", Dtype::F16, &[10, 3, 64]);
    expect_input_error(&specs, &[], &["`q` has 3 heads", "not a multiple"]);
    let mut specs = packed(ok_q, ok_k);
    specs[2] = spec("v", Dtype::F16, &[11, 2, 64]);
    expect_input_error(&specs, &[], &["`v` must have the shape of `k`"]);
    // Flags that do not apply.
    expect_input_error(
        &packed(ok_q, ok_k),
        &["--layout", "nhd"],
        &["--layout nhd does not apply to a packed input"],
    );
    let s = [1, 1, 8, 64];
    expect_input_error(
        &qkv(Dtype::F16, &s, &s, &s),
        &["--max-seqlen-q", "8"],
        &["--max-seqlen-q/--max-seqlen-k apply to packed inputs only"],
    );
}

/// A valid packed input on a machine without a GPU: the CPU checks pass (the input line names the
/// sequences), the GPU step fails with exit 1, nothing is written.
#[test]
fn valid_packed_input_without_gpu_is_a_runtime_error() {
    if gpu_present() {
        eprintln!("skipped: a GPU is present");
        return;
    }
    let (dir, input, out) = setup(&packed(&[0, 3, 3, 10], &[0, 0, 5, 12]));
    let r = run_on(&input, &out, &["--check"]);
    r.expect_error(1, &["CUDA"]);
    assert!(
        r.stdout
            .contains("input: packed q [10, 4, 64], k [12, 2, 64], v [12, 2, 64]"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("3 sequences, max_seqlen_q 7, max_seqlen_k 7"),
        "{}",
        r.stdout
    );
    assert_eq!(others(dir.path()), Vec::<String>::new());
}

// ------------------------------------------------------------------------------------------------
// GPU tests
// ------------------------------------------------------------------------------------------------

/// N(0,1) values for a tensor of `shape` (file order), from a fixed seed.
/// `q`, `k` and `v` of one shape, f16, N(0,1).
fn f16_normal_qkv(rng: &mut StdRng, shape: &[usize]) -> Vec<Spec> {
    ["q", "k", "v"]
        .into_iter()
        .map(|name| Spec {
            name,
            dtype: Dtype::F16,
            shape: shape.to_vec(),
            values: normal(rng, shape),
        })
        .collect()
}

fn normal(rng: &mut StdRng, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Swaps dims 1 and 2 of a file shape: NHD ↔ logical.
fn logical(shape: &[usize], nhd: bool) -> [usize; 4] {
    let s: [usize; 4] = shape.try_into().expect("rank 4");
    if nhd {
        [s[0], s[2], s[1], s[3]]
    } else {
        s
    }
}

/// A host tensor viewing file-order data (values rounded to the file dtype).
fn host(values: &[f32], dtype: Dtype, shape: &[usize], nhd: bool) -> HostTensor {
    let rounded = decode(dtype, &encode(dtype, values));
    let l = logical(shape, nhd);
    HostTensor::from_parts(rounded, l, HostTensor::contiguous_strides(l, nhd))
}

/// Parses `rel L1: sageattn X, ...` from the tool's output.
fn printed_rel_l1(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("rel L1: sageattn "))
        .unwrap_or_else(|| panic!("no rel L1 line in:\n{stdout}"));
    line["rel L1: sageattn ".len()..]
        .split(',')
        .next()
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse: {line}"))
}

/// Writes Q, K, V of N(0,1), runs the tool with `--check`, and verifies the output file against the
/// float64 reference computed here: tensors, dtype, layout, shape, rel L1 ≤ 0.02 (and the LSE).
fn round_trip(
    dtype: Dtype,
    nhd: bool,
    causal: bool,
    lse: bool,
    q_shape: &[usize],
    kv_shape: &[usize],
    extra: &[&str],
) {
    let mut rng = StdRng::seed_from_u64(0x5a6e);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.safetensors");
    let out = dir.path().join("o.safetensors");
    let specs = vec![
        Spec {
            name: "q",
            dtype,
            shape: q_shape.to_vec(),
            values: normal(&mut rng, q_shape),
        },
        Spec {
            name: "k",
            dtype,
            shape: kv_shape.to_vec(),
            values: normal(&mut rng, kv_shape),
        },
        Spec {
            name: "v",
            dtype,
            shape: kv_shape.to_vec(),
            values: normal(&mut rng, kv_shape),
        },
    ];
    write_file(&input, &specs);
    let mut args = vec!["--check"];
    if nhd {
        args.extend(["--layout", "nhd"]);
    }
    if causal {
        args.push("--causal");
    }
    if lse {
        args.push("--lse");
    }
    args.extend_from_slice(extra);
    let r = run_on(&input, &out, &args);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let printed = printed_rel_l1(&r.stdout);
    assert!(printed <= 0.02, "printed rel L1 {printed}");

    let bytes = std::fs::read(&out).expect("output written");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut names: Vec<&String> = st.names();
    names.sort();
    assert_eq!(names, if lse { vec!["lse", "o"] } else { vec!["o"] });
    let o = st.tensor("o").expect("o");
    assert_eq!(o.dtype(), dtype, "o has the input dtype");
    assert_eq!(o.shape(), q_shape, "o has q's shape in the input layout");

    let sm_scale = extra
        .iter()
        .position(|a| *a == "--sm-scale")
        .map(|i| extra[i + 1].parse::<f32>().expect("number"));
    let opts = RefOptions { causal, sm_scale };
    let (q, k, v) = (
        host(&specs[0].values, dtype, q_shape, nhd),
        host(&specs[1].values, dtype, kv_shape, nhd),
        host(&specs[2].values, dtype, kv_shape, nhd),
    );
    let exact = attention_f64(&q, &k, &v, &opts);
    // Bring o to logical contiguous order, as the reference is.
    let o_file = HostTensor::from_parts(
        decode(dtype, o.data()),
        logical(q_shape, nhd),
        HostTensor::contiguous_strides(logical(q_shape, nhd), nhd),
    );
    let [b, h, n, d] = o_file.shape;
    let mut o_logical = Vec::with_capacity(b * h * n * d);
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..n {
                for di in 0..d {
                    o_logical.push(o_file.get(bi, hi, si, di));
                }
            }
        }
    }
    let m = compare(&o_logical, &exact.o);
    println!("independent check: {m:?}");
    assert_eq!(m.n_nan_mismatch, 0);
    assert!(m.rel_l1 <= 0.02, "rel L1 {}", m.rel_l1);
    assert!(
        (m.rel_l1 - printed).abs() <= 1e-3 * printed.max(1e-3) + 1e-6,
        "tool printed {printed}, test computed {}",
        m.rel_l1
    );
    if lse {
        let l = st.tensor("lse").expect("lse");
        assert_eq!(l.dtype(), Dtype::F32);
        assert_eq!(l.shape(), &[b, h, n]);
        let lm = compare(&decode(Dtype::F32, l.data()), &exact.lse);
        println!("lse: {lm:?}");
        assert_eq!(lm.n_nan_mismatch, 0);
        assert!(lm.max_abs < 0.05, "lse max abs error {}", lm.max_abs);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_round_trip_f16_hnd_d64() {
    round_trip(
        Dtype::F16,
        false,
        false,
        false,
        &[1, 2, 256, 64],
        &[1, 2, 256, 64],
        &[],
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_round_trip_bf16_nhd_causal_lse_gqa() {
    // NHD file shapes [batch, seq, heads, head_dim]; 4 query heads over 2 kv heads.
    round_trip(
        Dtype::BF16,
        true,
        true,
        true,
        &[2, 256, 4, 128],
        &[2, 256, 2, 128],
        &[],
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_round_trip_f32_options() {
    // F32 in and out (rounded to f16 for the GPU), d = 96, every option set.
    round_trip(
        Dtype::F32,
        false,
        true,
        true,
        &[1, 2, 200, 96],
        &[1, 2, 300, 96],
        &["--no-smooth-k", "--pv-accum", "f32", "--sm-scale", "0.09"],
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_max_rel_l1_exceeded_exits_3() {
    let mut rng = StdRng::seed_from_u64(7);
    let s = [1, 2, 128, 64];
    let specs = f16_normal_qkv(&mut rng, &s);
    let (dir, input, out) = setup(&specs);
    let r = run_on(&input, &out, &["--max-rel-l1", "0"]);
    r.expect_error(3, &["exceeds --max-rel-l1 0"]);
    // The run itself succeeded, so its output is written.
    assert!(out.exists());
    assert_eq!(others(dir.path()), vec!["o.safetensors".to_string()]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_info() {
    let r = sageattn(&["info"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    for needle in [
        "compute capability",
        "SMs",
        "portable module",
        "hopper module",
        env!("CARGO_PKG_VERSION"),
    ] {
        assert!(r.stdout.contains(needle), "{needle} missing");
    }
}

/// Acceptance: d = 128, N = 4096, fp16, B = 1, H = 8 passes `--max-rel-l1 0.0135`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_acceptance_d128_n4096() {
    let mut rng = StdRng::seed_from_u64(4096);
    let s = [1, 8, 4096, 128];
    let specs = f16_normal_qkv(&mut rng, &s);
    let (_dir, input, out) = setup(&specs);
    let r = run_on(&input, &out, &["--check", "--max-rel-l1", "0.0135"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let rel = printed_rel_l1(&r.stdout);
    println!("acceptance rel L1 = {rel:.4e}");
    assert!(rel <= 0.0135);
    assert!(out.exists());
}

/// Writes a packed Q, K, V of N(0,1) with the given (query, key) lengths per sequence, runs the
/// tool with `--check --lse`, and verifies the output file against the varlen float64 reference
/// computed here: `o` is `[total_q, q_heads, d]` in the input dtype, `lse` `[q_heads, total_q]`.
fn varlen_round_trip(
    dtype: Dtype,
    lens: &[(usize, usize)],
    heads: (usize, usize),
    head_dim: usize,
    causal: bool,
    extra: &[&str],
) {
    let mut rng = StdRng::seed_from_u64(0x7a41);
    let (hq, hk) = heads;
    let prefix = |f: fn(&(usize, usize)) -> usize| -> Vec<i32> {
        let mut v = vec![0i32];
        for l in lens {
            v.push(v[v.len() - 1] + f(l) as i32);
        }
        v
    };
    let (cu_q, cu_k) = (prefix(|l| l.0), prefix(|l| l.1));
    let (total_q, total_k) = (cu_q[lens.len()] as usize, cu_k[lens.len()] as usize);
    let q_shape = [total_q, hq, head_dim];
    let kv_shape = [total_k, hk, head_dim];
    let mut specs: Vec<Spec> = [("q", &q_shape), ("k", &kv_shape), ("v", &kv_shape)]
        .into_iter()
        .map(|(name, shape)| Spec {
            name,
            dtype,
            shape: shape.to_vec(),
            values: normal(&mut rng, shape),
        })
        .collect();
    specs.push(cu("cu_seqlens_q", Dtype::I32, &cu_q));
    specs.push(cu("cu_seqlens_k", Dtype::I32, &cu_k));
    let (_dir, input, out) = setup(&specs);
    let mut args = vec!["--check", "--lse"];
    if causal {
        args.push("--causal");
    }
    args.extend_from_slice(extra);
    let r = run_on(&input, &out, &args);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(r.stdout.contains("input: packed q"), "{}", r.stdout);
    let printed = printed_rel_l1(&r.stdout);
    assert!(printed <= 0.02, "printed rel L1 {printed}");

    let bytes = std::fs::read(&out).expect("output written");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let o = st.tensor("o").expect("o");
    assert_eq!(o.dtype(), dtype);
    assert_eq!(o.shape(), &q_shape, "o is packed like q");
    let lse = st.tensor("lse").expect("lse");
    assert_eq!(lse.shape(), &[hq, total_q]);

    // The reference on the packed tensors, logical [1, heads, total, d] (NHD memory).
    let packed_host =
        |values: &[f32], [t, h, d]: [usize; 3]| host(values, dtype, &[1, t, h, d], true);
    let (q, k, v) = (
        packed_host(&specs[0].values, q_shape),
        packed_host(&specs[1].values, kv_shape),
        packed_host(&specs[2].values, kv_shape),
    );
    let opts = RefOptions {
        causal,
        sm_scale: None,
    };
    let exact = attention_varlen_f64(&q, &k, &v, (&cu_q, &cu_k), &opts);
    // o in the file is [total][heads][d]; the reference is [heads][total][d].
    let o_file = decode(dtype, o.data());
    let mut o_logical = Vec::with_capacity(o_file.len());
    for h in 0..hq {
        for t in 0..total_q {
            let at = (t * hq + h) * head_dim;
            o_logical.extend_from_slice(&o_file[at..at + head_dim]);
        }
    }
    let m = compare(&o_logical, &exact.o);
    println!("independent check: {m:?}");
    assert_eq!(m.n_nan_mismatch, 0);
    assert!(m.rel_l1 <= 0.02, "rel L1 {}", m.rel_l1);
    assert!(
        (m.rel_l1 - printed).abs() <= 1e-3 * printed.max(1e-3) + 1e-6,
        "tool printed {printed}, test computed {}",
        m.rel_l1
    );
    let lm = compare(&decode(Dtype::F32, lse.data()), &exact.lse);
    println!("lse: {lm:?}");
    assert_eq!(
        lm.n_nan_mismatch, 0,
        "rows without keys are -inf on both sides"
    );
    assert!(lm.max_abs < 0.05, "lse max abs error {}", lm.max_abs);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_varlen_round_trip_f16_causal_gqa_with_empty_sequences() {
    // An empty sequence, one without keys (rows 0, LSE -inf), single rows, a chunk of queries
    // against a longer context, and lengths that are no multiple of the tiles.
    varlen_round_trip(
        Dtype::F16,
        &[(100, 300), (0, 0), (17, 0), (1, 1), (300, 300), (129, 77)],
        (8, 2),
        128,
        true,
        &[],
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_varlen_round_trip_bf16_d64_options() {
    varlen_round_trip(
        Dtype::BF16,
        &[(256, 256), (5, 700), (513, 64)],
        (4, 4),
        64,
        false,
        &[
            "--max-seqlen-q",
            "1024",
            "--max-seqlen-k",
            "1024",
            "--pv-accum",
            "f32",
            "--no-smooth-k",
        ],
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_varlen_round_trip_f32_d96() {
    varlen_round_trip(
        Dtype::F32,
        &[(200, 200), (333, 333)],
        (2, 1),
        96,
        true,
        &["--backend", "portable"],
    );
}
