#!/usr/bin/env bash
# Type-checks docs/rust-engines.md's candle outline (its first ```rust block) against candle-core
# with its `cuda` feature and this crate with `default-features = false`, with clippy -D warnings:
# the outline compiles as written, and the two crates build together (one cudarc, candle's linkage).
#
# candle's `cuda` feature compiles its kernels with nvcc at build time, and cudarc reads the CUDA
# version from `nvcc --version`; this machine has no CUDA toolkit, so both get a stand-in nvcc that
# prints a version and writes empty outputs. Nothing is linked or run: types and lints only.
#
#   bash scripts/candle-check.sh      (CI runs it; about 4 minutes the first time on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
CANDLE_VERSION="${CANDLE_VERSION:-=0.11.1}"

work="$repo/target/candle-check"
mkdir -p "$work/crate/src" "$work/bin"

cat > "$work/bin/nvcc" <<'NVCC'
#!/usr/bin/env bash
# Stand-in nvcc for type-checking only: a version banner, and empty files where outputs go.
for a in "$@"; do
    if [[ "$a" == --version ]]; then
        printf 'nvcc: NVIDIA (R) Cuda compiler driver\nstand-in\nfor type checks\n'
        printf 'Cuda compilation tools, release 12.9, V12.9.86\nBuild cuda_12.9\n'
        exit 0
    fi
done
prev="" out="" odir="" src=""
for a in "$@"; do
    case "$prev" in -o | --output-file) out="$a" ;; --output-directory | -odir) odir="$a" ;; esac
    case "$a" in *.cu) src="$a" ;; esac
    prev="$a"
done
if [[ -n "$odir" && -n "$src" ]]; then : > "$odir/$(basename "$src" .cu).ptx"; fi
case "$out" in "") ;; *.a) ar rc "$out" ;; *) : > "$out" ;; esac
NVCC
chmod +x "$work/bin/nvcc"

cat > "$work/crate/Cargo.toml" <<TOML
[package]
name = "candle-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
candle-core = { version = "$CANDLE_VERSION", features = ["cuda"] }
sageattention = { path = "$repo", default-features = false }
half = "2"

[workspace]
TOML

# The first rust block of the doc, as the crate's library.
python3 - "$repo/docs/rust-engines.md" "$work/crate/src/lib.rs" <<'PY'
import sys
text = open(sys.argv[1]).read()
block = text.split("```rust\n", 1)[1].split("```", 1)[0]
open(sys.argv[2], "w").write("#![allow(dead_code)]\n" + block)
PY

# The outline is shown as rustfmt writes it.
rustfmt --edition 2021 --check "$work/crate/src/lib.rs" || {
    echo "candle-check: docs/rust-engines.md's outline is not formatted as rustfmt writes it" >&2
    exit 1
}
cd "$work/crate"
PATH="$work/bin:$PATH" NVCC="$work/bin/nvcc" CUDA_COMPUTE_CAP=90 SAGE_SKIP_PTX=1 \
    CARGO_TARGET_DIR="$work/target" cargo clippy --quiet -- -D warnings
echo "candle-check: docs/rust-engines.md's outline type-checks against candle-core $CANDLE_VERSION"
