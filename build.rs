//! Builds the device crate `kernels-gpu` into three PTX modules in `OUT_DIR`, which
//! `host/kernels.rs` embeds:
//!
//! - `sage_sm80.ptx`: the portable module, `-C target-cpu=sm_80` (runs on Ampere, Ada and Hopper
//!   through the driver's JIT);
//! - `sage_sm90a.ptx`: the Hopper module, `--features hopper`, `-C target-cpu=sm_90a`;
//! - `sage_sm89.ptx`: the FP8 module, `--features ada_fp8`, `-C target-cpu=sm_89`, PTX ISA 8.7
//!   (mma.sync e4m3; runs on Ada and, through the JIT, on Hopper).
//!
//! Each is built by a separate cargo invocation (own target dir, clean environment) for
//! `nvptx64-nvidia-cuda` with `-Zbuild-std=core`. The PTX toolchain is looked up in this order:
//!
//! 1. `SAGE_PTX_RUSTC` + `SAGE_PTX_CARGO` (and optionally `SAGE_LLVM_BIN`, the LLVM bin directory
//!    for `tools/nvptx-link`): used as given, linked with `tools/nvptx-link`;
//! 2. a rustup nightly with the `rust-src`, `llvm-tools` and `llvm-bitcode-linker` components:
//!    linked with rustc's own `llvm-bitcode-linker`;
//! 3. Debian's `rustc-web` (`/usr/bin/rustc`), `cargo-web` (`/usr/bin/cargo`), `rust-web-src` and
//!    `llvm-22` (the files in `scripts/debian-toolchain.txt`, which `scripts/setup-toolchain.sh` installs): linked with `tools/nvptx-link`.
//!
//! `SAGE_SKIP_PTX=1` writes empty modules instead (pure-CPU builds: docs, quick checks); the host
//! then reports `KernelNotFound` at run time. The device build reruns only when the device crate,
//! the link script, this file or one of the variables above changes.
//!
//! A packaged crate (`cargo package`, crates.io) has no `kernels-gpu/`: cargo leaves nested
//! packages out of a package. It carries the three modules prebuilt instead, in `prebuilt-ptx/`
//! (written by `scripts/prebuilt-ptx.sh` before packaging), and this script copies them: a
//! dependent crate builds with no PTX toolchain and no CUDA toolkit.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;
use std::{env, fs};

const DEVICE_TARGET: &str = "nvptx64-nvidia-cuda";
/// The variables that change what this script does.
const ENV_VARS: &[&str] = &[
    "SAGE_SKIP_PTX",
    "SAGE_PTX_RUSTC",
    "SAGE_PTX_CARGO",
    "SAGE_LLVM_BIN",
    "SAGE_PTX_ISA",
    "SAGE_PTX_SERIAL",
];

/// One PTX module to build.
struct Module {
    /// File name in `OUT_DIR`.
    file: &'static str,
    /// Name of its target dir.
    dir: &'static str,
    cpu: &'static str,
    /// PTX ISA version (digits) unless `SAGE_PTX_ISA` overrides it: 8.0 for the portable module
    /// (every CUDA 12 driver), 8.4 for the Hopper one (wgmma with mixed u8/s8 operands), 8.7 for
    /// the FP8 one (the first ISA with `mma.sync … e4m3` on sm_89; CUDA 12.8+ drivers).
    ptx_isa: &'static str,
    features: &'static [&'static str],
}

static MODULES: [Module; 3] = [
    Module {
        file: "sage_sm80.ptx",
        dir: "sm80",
        cpu: "sm_80",
        ptx_isa: "80",
        features: &[],
    },
    Module {
        file: "sage_sm90a.ptx",
        dir: "sm90a",
        cpu: "sm_90a",
        ptx_isa: "84",
        features: &["hopper"],
    },
    Module {
        file: "sage_sm89.ptx",
        dir: "sm89",
        cpu: "sm_89",
        ptx_isa: "87",
        features: &["ada_fp8"],
    },
];

/// How to compile and link the device crate.
struct Toolchain {
    /// Where it was found, for messages.
    origin: String,
    rustc: PathBuf,
    cargo: PathBuf,
    /// `Some(script)`: link with `tools/nvptx-link`; `None`: rustc's own `llvm-bitcode-linker`.
    link_script: Option<PathBuf>,
    /// LLVM bin directory for the link script.
    llvm_bin: Option<PathBuf>,
}

/// The device crate's tile constants (the same file the kernels and the host use), for the launch
/// bounds below.
#[allow(dead_code)]
#[path = "abi/config.rs"]
mod device_config;

/// The Hopper kernels' launch constants (the same file the sm_90a kernels and the host use).
#[path = "abi/hopper_config.rs"]
mod hopper_config;

/// Adds `.maxntid` / `.minnctapersm` launch bounds (Rust has no launch-bounds attribute): the
/// sm_90a kernels state their block size, and the memory-bound quantizer is held to a register
/// count that lets 3 CTAs share an SM. (The portable attention entries stay unbounded: a
/// `.maxntid 128` there changed ptxas' allocation at d = 128 from 171 to 209 registers and cost
/// 6%, H200.)
fn apply_launch_bounds(ptx: &str) -> String {
    let mut ptx = ptx.to_string();
    // The sm_90a kernels: their block size and the CTAs that must share an SM (one for most,
    // which keeps them launchable if registers grow; three or four for the one-warpgroup 8-bit
    // kernels, which caps them at 168 or 128 registers).
    macro_rules! bound_sm90 {
        ($name:literal, $hd:literal, $causal:literal, $pv8:literal, $narrow:literal) => {
            let (threads, ctas) = (
                hopper_config::sm90_threads($hd, $pv8, $narrow),
                hopper_config::sm90_ctas_per_sm($hd, $pv8, $narrow),
            );
            ptx = add_launch_bounds(&ptx, $name, threads, ctas);
        };
    }
    for_each_sm90_attention_variant!(bound_sm90);
    // The FP8 P·V entries: the 8-bit kernel's CTA.
    macro_rules! bound_sm90_fp8 {
        ($name:literal, $hd:literal, $causal:literal) => {
            bound_sm90!($name, $hd, $causal, true, false);
        };
    }
    for_each_sm90_fp8_variant!(bound_sm90_fp8);
    // The preparation kernel is memory-bound: bound its registers so that 3 CTAs of 256 threads
    // (all their loads in flight) fit on an SM: 65536 / (3 · 256) rounded down to ptxas'
    // granularity of 8 is 80, what `.maxntid 256` + `.minnctapersm 3` gave. A register cap
    // rather than a block size, because head_dim 256 launches it with 512 threads
    // (`config::prep_threads`; 512 · 80 registers still fit an SM).
    ptx = add_max_registers(&ptx, device_config::names::PREPARE, 80);
    // Its SUM_K and QUANT_K jobs alone: 64 registers, 4 CTAs of 256 threads per SM (2 of 512 at
    // head_dim 256).
    ptx = add_max_registers(&ptx, device_config::names::PREPARE_SUM_K, 64);
    ptx = add_max_registers(&ptx, device_config::names::PREPARE_QUANT_K, 64);
    ptx = add_max_registers(&ptx, device_config::names::PREPARE_STATS8, 64);
    ptx = add_max_registers(&ptx, device_config::names::PREPARE_QUANT8, 64);
    // The one-CTA-per-head K preparation: up to 1024 threads, one CTA per SM (ptxas then caps it
    // at 64 registers, see `config::K_HEAD_MAX_THREADS`).
    ptx = add_launch_bounds(
        &ptx,
        device_config::names::PREPARE_K_HEAD,
        device_config::K_HEAD_MAX_THREADS,
        1,
    );
    ptx
}

/// Inserts `.maxnreg regs` after entry `name`'s parameter list.
fn add_max_registers(ptx: &str, name: &str, regs: usize) -> String {
    insert_after_params(ptx, name, &format!("\n.maxnreg {regs}"))
}

/// Inserts `.maxntid threads, 1, 1` and `.minnctapersm ctas` after entry `name`'s parameter list.
fn add_launch_bounds(ptx: &str, name: &str, threads: usize, ctas: usize) -> String {
    insert_after_params(
        ptx,
        name,
        &format!("\n.maxntid {threads}, 1, 1\n.minnctapersm {ctas}"),
    )
}

/// Inserts `directives` after entry `name`'s parameter list.
fn insert_after_params(ptx: &str, name: &str, directives: &str) -> String {
    let mut ptx = ptx.to_string();
    let entry = format!(".entry {name}(");
    if let Some(start) = ptx.find(&entry) {
        // The parameter list ends at the first line that starts with `)` (llc may append a
        // comment to it); the directives go on the lines after it.
        let close = ptx[start..]
            .find("\n)")
            .and_then(|c| ptx[start + c + 2..].find('\n').map(|e| start + c + 2 + e));
        if let Some(at) = close {
            ptx.insert_str(at, directives);
        }
    }
    ptx
}

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let device = root.join("kernels-gpu");
    let link_script = root.join("tools").join("nvptx-link");

    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-env-changed=SAGE_PTX_VERBOSE");
    if env::var("SAGE_SKIP_PTX").is_ok_and(|v| !v.is_empty() && v != "0") {
        for m in &MODULES {
            fs::write(out_dir.join(m.file), "").expect("write empty PTX");
        }
        println!(
            "cargo:warning=SAGE_SKIP_PTX is set: the PTX modules are empty; every kernel launch \
             will fail with KernelNotFound"
        );
        return;
    }
    if !device.join("Cargo.toml").exists() {
        println!("cargo:rerun-if-changed={}", root.join("build.rs").display());
        copy_prebuilt(&root.join(PREBUILT_DIR), &out_dir)
            .unwrap_or_else(|msg| fail(&format!("no kernels-gpu/ to build from: {msg}")));
        return;
    }
    emit_rerun_rules(&root, &device);

    let toolchain = match find_toolchain(&link_script) {
        Ok(t) => t,
        Err(msg) => match auto_setup(&root) {
            // On a fresh Debian/Ubuntu machine the README's commands must work with nothing typed
            // before them: install the PTX toolchain once, then look again.
            Ok(()) => find_toolchain(&link_script).unwrap_or_else(|again| fail(&again)),
            Err(why) => fail(&format!("{msg}\n(automatic set-up not run: {why})")),
        },
    };

    // The inner target dirs live beside the outer profile dirs (`target/nvptx-kernels/...`), so
    // that `cargo build`, `cargo test --release` and `cargo clippy` (each its own OUT_DIR) share one
    // device build; cargo's lock on each target dir serializes concurrent builds.
    let target_base = out_dir
        .ancestors()
        .nth(4)
        .filter(|p| p.join("CACHEDIR.TAG").exists() || p.join(".rustc_info.json").exists())
        .map(|p| p.join("nvptx-kernels"))
        .unwrap_or_else(|| out_dir.join("nvptx-kernels"));

    let serial = env::var("SAGE_PTX_SERIAL").is_ok_and(|v| v == "1");
    let started = Instant::now();
    let results: Vec<(&Module, std::io::Result<Output>)> = if serial {
        MODULES
            .iter()
            .map(|m| {
                (
                    m,
                    build_module(&toolchain, &device, &target_base.join(m.dir), m),
                )
            })
            .collect()
    } else {
        // Each build is mostly one serial rustc (core, then the kernels with fat LTO), so the two
        // run side by side even on 2 cores.
        std::thread::scope(|s| {
            let handles: Vec<_> = MODULES
                .iter()
                .map(|m| {
                    let (tc, dev, dir) = (&toolchain, &device, target_base.join(m.dir));
                    (m, s.spawn(move || build_module(tc, dev, &dir, m)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(m, h)| (m, h.join().expect("device build thread panicked")))
                .collect()
        })
    };

    let mut errors = String::new();
    // The same compile error shows up in both builds: print each distinct compiler output once.
    let mut shown: Vec<String> = Vec::new();
    let mut shown_warnings: Vec<String> = Vec::new();
    for (m, result) in results {
        let tdir = target_base.join(m.dir);
        match result {
            Err(e) => {
                let _ = writeln!(
                    errors,
                    "could not run {} for {}: {e}",
                    toolchain.cargo.display(),
                    m.cpu
                );
            }
            Ok(out) if !out.status.success() => {
                let text: String = String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("Blocking waiting for file lock"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if let Some(i) = shown.iter().position(|t| *t == text) {
                    let _ = writeln!(
                        errors,
                        "building kernels-gpu for {} failed ({}): the same output as build {} above",
                        m.cpu,
                        out.status,
                        i + 1
                    );
                } else {
                    shown.push(text.clone());
                    eprintln!(
                        "==== device build {}: kernels-gpu for {} ({}) failed ====\n{text}",
                        shown.len(),
                        m.cpu,
                        m.file
                    );
                    let _ = writeln!(
                        errors,
                        "building kernels-gpu for {} failed ({}); its compiler output is above",
                        m.cpu, out.status
                    );
                }
            }
            Ok(out) => {
                forward_warnings(
                    &String::from_utf8_lossy(&out.stderr),
                    m.cpu,
                    &mut shown_warnings,
                );
                let ptx_path = tdir
                    .join(DEVICE_TARGET)
                    .join("release")
                    .join("kernels_gpu.ptx");
                match fs::read_to_string(&ptx_path) {
                    Err(e) => {
                        let _ = writeln!(errors, "{}: {e}", ptx_path.display());
                    }
                    Ok(ptx) => match check_ptx(&ptx, m.cpu) {
                        Err(msg) => {
                            let _ = writeln!(errors, "{} ({}): {msg}", ptx_path.display(), m.cpu);
                        }
                        Ok(()) => fs::write(out_dir.join(m.file), apply_launch_bounds(&ptx))
                            .expect("write PTX"),
                    },
                }
            }
        }
    }
    if !errors.is_empty() {
        fail(&format!(
            "device build with {}:\n{errors}",
            toolchain.origin
        ));
    }
    if env::var_os("SAGE_PTX_VERBOSE").is_some() {
        println!(
            "cargo:warning=device build ({}) took {:.1} s",
            toolchain.origin,
            started.elapsed().as_secs_f64()
        );
    }
}

/// Where a packaged crate carries its PTX (`scripts/prebuilt-ptx.sh` writes it).
const PREBUILT_DIR: &str = "prebuilt-ptx";

/// Copies the prebuilt modules of a packaged crate into `out_dir`, after the same checks as a
/// fresh build's PTX. They are copies of a build's `OUT_DIR` files, whose launch bounds
/// [`apply_launch_bounds`] already added: applying it again would repeat the directives.
fn copy_prebuilt(prebuilt: &Path, out_dir: &Path) -> Result<(), String> {
    println!("cargo:rerun-if-changed={}", prebuilt.display());
    for m in &MODULES {
        let path = prebuilt.join(m.file);
        println!("cargo:rerun-if-changed={}", path.display());
        let ptx = fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: {e} (a packaged crate carries its PTX there: run scripts/prebuilt-ptx.sh \
                 before cargo package)",
                path.display()
            )
        })?;
        check_ptx(&ptx, m.cpu).map_err(|msg| format!("{} ({}): {msg}", path.display(), m.cpu))?;
        fs::write(out_dir.join(m.file), ptx).map_err(|e| format!("writing {}: {e}", m.file))?;
    }
    Ok(())
}

/// Runs `scripts/setup-toolchain.sh` (apt packages; idempotent) unless `SAGE_NO_AUTO_SETUP=1`.
fn auto_setup(root: &Path) -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=SAGE_NO_AUTO_SETUP");
    if env::var("SAGE_NO_AUTO_SETUP").is_ok_and(|v| v == "1") {
        return Err("SAGE_NO_AUTO_SETUP=1".into());
    }
    let script = root.join("scripts").join("setup-toolchain.sh");
    println!(
        "cargo:warning=no PTX toolchain found: running {} (set SAGE_NO_AUTO_SETUP=1 to prevent this)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Shows the device crate's compiler warnings (headline and location) as cargo warnings, each
/// once, since the inner cargo's output is otherwise hidden on success.
fn forward_warnings(stderr: &str, cpu: &str, shown: &mut Vec<String>) {
    let lines: Vec<&str> = stderr.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with("warning") || line.contains("generated") {
            continue;
        }
        let at = lines
            .get(i + 1)
            .map(|l| l.trim())
            .filter(|l| l.starts_with("-->"))
            .unwrap_or("");
        let text = format!("kernels-gpu: {line} {at}");
        if !shown.contains(&text) {
            if shown.len() < 30 {
                println!("cargo:warning={text} [{cpu}]");
            }
            shown.push(text);
        }
    }
}

/// Prints the error and stops the build (an `Err` from `main` would add a Debug-quoted copy).
fn fail(msg: &str) -> ! {
    eprintln!("\nerror: sageattention build.rs: {msg}");
    std::process::exit(1);
}

fn emit_rerun_rules(root: &Path, device: &Path) {
    println!("cargo:rerun-if-changed={}", root.join("build.rs").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("scripts").join("debian-toolchain.txt").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tools").join("nvptx-link").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        device.join("Cargo.toml").display()
    );
    // A lock file the inner cargo creates on its first build must not trigger a second run, so it
    // is watched only when it is already there.
    let lock = device.join("Cargo.lock");
    if lock.exists() {
        println!("cargo:rerun-if-changed={}", lock.display());
    }
    // The directories themselves (cargo scans them: new and deleted files count) and every file
    // in them: the device sources, and the host/device contract in abi/ that they include.
    let src = device.join("src");
    let abi = root.join("abi");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", abi.display());
    let mut stack = vec![src, abi];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

fn is_exe(p: &Path) -> bool {
    p.is_file()
}

fn find_toolchain(link_script: &Path) -> Result<Toolchain, String> {
    if !is_exe(link_script) {
        return Err(format!("{} is missing", link_script.display()));
    }

    // 1. explicit
    let rustc = env::var_os("SAGE_PTX_RUSTC").filter(|v| !v.is_empty());
    let cargo = env::var_os("SAGE_PTX_CARGO").filter(|v| !v.is_empty());
    let llvm_bin = env::var_os("SAGE_LLVM_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match (rustc, cargo) {
        (Some(rustc), Some(cargo)) => {
            let (rustc, cargo) = (PathBuf::from(rustc), PathBuf::from(cargo));
            for p in [&rustc, &cargo] {
                // a bare name is looked up in PATH; a path must exist
                if p.components().count() > 1 && !is_exe(p) {
                    return Err(format!(
                        "{} (from SAGE_PTX_RUSTC/SAGE_PTX_CARGO) does not exist",
                        p.display()
                    ));
                }
            }
            return Ok(Toolchain {
                origin: format!(
                    "SAGE_PTX_RUSTC={} SAGE_PTX_CARGO={}",
                    rustc.display(),
                    cargo.display()
                ),
                rustc,
                cargo,
                link_script: Some(link_script.to_path_buf()),
                llvm_bin,
            });
        }
        (None, None) => {}
        _ => return Err("set both SAGE_PTX_RUSTC and SAGE_PTX_CARGO, or neither".into()),
    }

    // 2. a rustup nightly with rust-src + llvm-bitcode-linker (+ llvm-tools).
    if let Some(t) = find_rustup_nightly() {
        return Ok(t);
    }

    // 3. Debian's packages: the files scripts/debian-toolchain.txt lists, each with its package.
    let llvm_bin = llvm_bin.unwrap_or_else(|| PathBuf::from("/usr/lib/llvm-22/bin"));
    let missing: Vec<String> = debian_toolchain_files()
        .filter(|(path, _)| !Path::new(path).is_file())
        .map(|(path, package)| format!("{path} (Debian package {package})"))
        .collect();
    let llvm_ok = ["llvm-link", "opt", "llc", "llvm-ar"]
        .iter()
        .all(|t| is_exe(&llvm_bin.join(t)));
    if missing.is_empty() && llvm_ok {
        return Ok(Toolchain {
            origin: "Debian rustc-web + cargo-web + rust-web-src + llvm-22".into(),
            rustc: PathBuf::from("/usr/bin/rustc"),
            cargo: PathBuf::from("/usr/bin/cargo"),
            link_script: Some(link_script.to_path_buf()),
            llvm_bin: Some(llvm_bin),
        });
    }
    let mut missing = missing.join("\n\x20   ");
    if !llvm_ok {
        write!(
            missing,
            "\n\x20   llvm-link/opt/llc/llvm-ar in {} (SAGE_LLVM_BIN)",
            llvm_bin.display()
        )
        .unwrap();
    }

    Err(format!(
        "no toolchain that can build the device crate (kernels-gpu) to PTX was found.\n\
         Install one of these:\n\
         \x20 - on Debian/Ubuntu: bash scripts/setup-toolchain.sh\n\
         \x20   (= apt-get install -y {}; files and packages in scripts/debian-toolchain.txt)\n\
         \x20 - with rustup: rustup toolchain install nightly --component rust-src llvm-tools llvm-bitcode-linker\n\
         \x20 - any other: set SAGE_PTX_RUSTC and SAGE_PTX_CARGO (a rustc with the nvptx64-nvidia-cuda target\n\
         \x20   and its library source), and SAGE_LLVM_BIN (llvm-link, opt, llc, llvm-ar of the same LLVM)\n\
         Or set SAGE_SKIP_PTX=1 for a CPU-only build (every kernel launch then fails).\n\
         Missing from the Debian toolchain:\n\x20   {missing}",
        debian_packages().join(" "),
    ))
}

/// `(path, Debian package)` for every file of the Debian toolchain, from the manifest that
/// `scripts/setup-toolchain.sh` installs from.
fn debian_toolchain_files() -> impl Iterator<Item = (&'static str, &'static str)> {
    include_str!("scripts/debian-toolchain.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?, fields.next()?))
        })
}

fn debian_packages() -> Vec<&'static str> {
    let mut packages: Vec<&str> = Vec::new();
    for (_, package) in debian_toolchain_files() {
        if !packages.contains(&package) {
            packages.push(package);
        }
    }
    packages
}

/// A rustup toolchain named `nightly*` that has `rust-src` and `llvm-bitcode-linker` (and the
/// `llvm-tools` it runs). Looks at the directories; runs no rustup command.
fn find_rustup_nightly() -> Option<Toolchain> {
    let home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))?;
    let mut names: Vec<PathBuf> = fs::read_dir(home.join("toolchains"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("nightly"))
        })
        .collect();
    names.sort();
    names.into_iter().rev().find_map(|tc| {
        let rustc = tc.join("bin").join("rustc");
        let cargo = tc.join("bin").join("cargo");
        let src = tc.join("lib/rustlib/src/rust/library/core/Cargo.toml");
        if !(is_exe(&rustc) && is_exe(&cargo) && src.is_file()) {
            return None;
        }
        let has_linker = fs::read_dir(tc.join("lib/rustlib"))
            .ok()?
            .flatten()
            .any(|host| {
                let bin = host.path().join("bin");
                bin.join("self-contained")
                    .join("llvm-bitcode-linker")
                    .is_file()
                    && bin.join("llc").is_file()
            });
        has_linker.then(|| Toolchain {
            origin: format!("rustup {}", tc.display()),
            rustc,
            cargo,
            link_script: None,
            llvm_bin: None,
        })
    })
}

/// Runs the inner cargo for one module; the PTX lands in
/// `<target_dir>/nvptx64-nvidia-cuda/release/kernels_gpu.ptx`.
fn build_module(
    tc: &Toolchain,
    device: &Path,
    target_dir: &Path,
    m: &Module,
) -> std::io::Result<Output> {
    let mut cmd = Command::new(&tc.cargo);
    clean_env(&mut cmd);
    cmd.current_dir(device)
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(device.join("Cargo.toml"))
        .arg("--target")
        .arg(DEVICE_TARGET)
        .arg("-Zbuild-std=core")
        .arg("--target-dir")
        .arg(target_dir);
    if !m.features.is_empty() {
        cmd.arg("--features").arg(m.features.join(","));
    }
    // RUSTFLAGS (not `cargo rustc -- ..`) so that core is compiled for the same cpu as the kernels.
    let mut flags = vec![format!("-Ctarget-cpu={}", m.cpu)];
    let isa = env::var("SAGE_PTX_ISA").unwrap_or_else(|_| m.ptx_isa.to_string());
    match &tc.link_script {
        Some(script) => flags.push(format!("-Clinker={}", script.display())),
        // rustc's llvm-bitcode-linker runs its own opt; rustc's fat-LTO pipeline gets the
        // unroll-threshold safety net instead (see tools/nvptx-link).
        None => {
            flags.push("-Cllvm-args=-unroll-threshold=2000".into());
            flags.push(format!("-Ctarget-feature=+ptx{isa}"));
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("RUSTC", &tc.rustc)
        .env("RUSTC_BOOTSTRAP", "1");
    if let Some(bin) = &tc.llvm_bin {
        cmd.env("SAGE_LLVM_BIN", bin);
    }
    // tools/nvptx-link reads the ISA from the environment; rustc's own linker from the feature.
    cmd.env("SAGE_PTX_ISA", &isa);
    cmd.output()
}

/// Removes what the outer cargo (and rustup, clippy, sccache) put into the environment, keeping
/// the user's own cargo settings (home, network, registries).
fn clean_env(cmd: &mut Command) {
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const REMOVE: &[&str] = &[
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTC_BOOTSTRAP",
        "RUSTFLAGS",
        "RUSTDOC",
        "RUSTDOCFLAGS",
        "CARGO",
        "TARGET",
        "HOST",
        "NUM_JOBS",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "MAKEFLAGS",
        "MFLAGS",
        "LD_LIBRARY_PATH",
        "SAGE_LLVM_BIN",
        "SAGE_PTX_ISA",
    ];
    let vars: Vec<OsString> = env::vars_os().map(|(k, _)| k).collect();
    for key in vars {
        let Some(k) = key.to_str() else { continue };
        let cargo_var = (k.starts_with("CARGO") || k.starts_with("__CARGO"))
            && !KEEP_PREFIXES.iter().any(|p| k.starts_with(p));
        if cargo_var
            || REMOVE.contains(&k)
            || k.starts_with("CLIPPY_")
            || k.starts_with("DEP_")
            || k.starts_with("SCCACHE_")
        {
            cmd.env_remove(&key);
        }
    }
}

/// The linked PTX must target the right cpu, contain at least one kernel and call nothing that is
/// not defined in it.
fn check_ptx(ptx: &str, cpu: &str) -> Result<(), String> {
    let target_ok = ptx.lines().any(|l| {
        let l = l.trim();
        l.starts_with(".target") && l.split([' ', '\t', ',']).any(|w| w == cpu)
    });
    if !target_ok {
        return Err(format!("no `.target {cpu}` line"));
    }
    let externs: Vec<&str> = ptx
        .lines()
        .filter(|l| l.trim_start().starts_with(".extern .func"))
        .collect();
    if !externs.is_empty() {
        return Err(format!(
            "unresolved functions (the linker left {} undefined):\n  {}",
            externs.len(),
            externs.join("\n  ")
        ));
    }
    if !ptx.lines().any(|l| l.contains(".entry ")) {
        return Err("no kernel (`.entry`) in the module: are the kernels `#[unsafe(no_mangle)] pub \
                    unsafe extern \"ptx-kernel\" fn` in a module the crate compiles for this feature set?"
            .into());
    }
    Ok(())
}
