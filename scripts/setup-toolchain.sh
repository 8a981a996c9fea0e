#!/usr/bin/env bash
# Installs what building the device crate (kernels-gpu -> PTX) and checking its PTX needs, on
# Debian/Ubuntu. Idempotent: quiet and fast when everything is already there.
#
#   1. the PTX toolchain, from Debian's packages (one LLVM version throughout): the packages named in
#      scripts/debian-toolchain.txt, with the files each must provide
#        apt-get install -y rustc-web cargo-web rust-web-src llvm-22
#      -> /usr/bin/rustc (rustc-web), /usr/bin/cargo (cargo-web), 1.96 with LLVM 22;
#         /usr/lib/rustlib/src/rust/library (rust-web-src: core's source for -Zbuild-std=core);
#         /usr/lib/llvm-22/bin/{llvm-link,opt,llc,llvm-ar} (llvm-22)
#   2. ptxas (for scripts/ptxas-check.sh), from PyPI's nvidia-cuda-nvcc-cu12, into a virtualenv under
#      ${SAGE_PTX_TOOLS_DIR:-~/.cache/sage-ptx-tools}; a link to it is left at <that dir>/bin/ptxas.
#
# The host crate builds with the machine's ordinary (rustup stable) toolchain; build.rs finds the
# PTX toolchain by itself (see build.rs for the order: SAGE_PTX_RUSTC/SAGE_PTX_CARGO, a rustup
# nightly with rust-src + llvm-bitcode-linker, then the Debian packages installed here).
#
# `--verify` (used by .ci/run, after the install): for every file in the manifest, `dpkg -S` must
# name the package the manifest gives, and that package must be one this script installs. It
# fails even where the file happens to be installed by some package the list forgot.
#
# Options (environment):
#   SAGE_SETUP_NO_PTXAS=1   skip step 2
#   SAGE_PTX_TOOLS_DIR      where the ptxas virtualenv goes (default ~/.cache/sage-ptx-tools)
set -euo pipefail

say() { echo "setup-toolchain: $*" >&2; }
die() { echo "setup-toolchain: error: $*" >&2; exit 1; }

MANIFEST="$(dirname "$0")/debian-toolchain.txt"
[[ -f "$MANIFEST" ]] || die "$MANIFEST is missing"
# path -> package, and the package list, from the manifest (comments and blank lines skipped)
declare -A PACKAGE_OF=()
APT_PACKAGES=()
while read -r path pkg _; do
    [[ -z "$path" || "$path" == \#* ]] && continue
    [[ -n "$pkg" ]] || die "$MANIFEST: no package for $path"
    PACKAGE_OF[$path]=$pkg
    [[ " ${APT_PACKAGES[*]} " == *" $pkg "* ]] || APT_PACKAGES+=("$pkg")
done <"$MANIFEST"
LLVM_BIN=/usr/lib/llvm-22/bin
PTXAS_PIP_SPEC="nvidia-cuda-nvcc-cu12>=12.4,<13"
TOOLS_DIR="${SAGE_PTX_TOOLS_DIR:-${HOME:-/root}/.cache/sage-ptx-tools}"

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (no sudo found): run this script as root"
    fi
}

# Prints one line per missing piece ("<path> (Debian package <pkg>)"); succeeds when none is.
missing_pieces() {
    local path missing=0
    for path in "${!PACKAGE_OF[@]}"; do
        if [[ ! -f "$path" ]]; then
            echo "$path (Debian package ${PACKAGE_OF[$path]})"
            missing=1
        fi
    done
    if [[ -x /usr/bin/rustc ]]; then
        # rustc-web is built with the nvptx64 target and must speak LLVM 22 bitcode like llvm-22.
        if ! /usr/bin/rustc --print target-list 2>/dev/null | grep -qx nvptx64-nvidia-cuda; then
            echo "the nvptx64-nvidia-cuda target in /usr/bin/rustc (Debian package rustc-web)"
            missing=1
        fi
        if ! /usr/bin/rustc -vV 2>/dev/null | grep -q '^LLVM version: 22\.'; then
            echo "LLVM 22 in /usr/bin/rustc, found $(/usr/bin/rustc -vV 2>/dev/null | grep '^LLVM' || echo 'none') (Debian package rustc-web from bookworm-security)"
            missing=1
        fi
    fi
    return $missing
}

# `dpkg -S` prints "pkg[:arch][, pkg2]: path" (diversions print "diversion by ..."): the owner list.
owner_of() {
    dpkg -S "$1" 2>/dev/null | grep -v '^diversion' | head -1 | sed 's/: .*//; s/:[a-z0-9_]*//g'
}

# Every manifest path must be owned, per dpkg, by the package the manifest names.
verify_manifest() {
    local path owner bad=0
    for path in "${!PACKAGE_OF[@]}"; do
        owner="$(owner_of "$path")"
        # /usr/lib/rustlib/src/rust/library is a link into /usr/src/rustc-<version>: ask for the target
        [[ -n "$owner" ]] || owner="$(owner_of "$(readlink -f "$path")")"
        if [[ -z "$owner" ]]; then
            echo "verify: $path belongs to no installed package (manifest says ${PACKAGE_OF[$path]})" >&2
            bad=1
        elif [[ ", $owner, " != *", ${PACKAGE_OF[$path]}, "* ]]; then
            echo "verify: $path belongs to '$owner', but the manifest says ${PACKAGE_OF[$path]}" >&2
            bad=1
        else
            echo "verify: $path <- ${PACKAGE_OF[$path]} (installed by this script)" >&2
        fi
    done
    return $bad
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian/Ubuntu. Elsewhere install a Rust nightly with 'rustup component add rust-src llvm-tools llvm-bitcode-linker', or set SAGE_PTX_RUSTC/SAGE_PTX_CARGO/SAGE_LLVM_BIN (see build.rs)"
    say "running apt-get update"
    as_root apt-get update -qq || die "apt-get update failed"
    say "installing $*"
    as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# --- 1. the PTX toolchain ------------------------------------------------------------------------
if missing="$(missing_pieces)"; then
    say "PTX toolchain present: $(/usr/bin/rustc -V), LLVM bin $LLVM_BIN"
else
    say "missing: ${missing//$'\n'/; }"
    apt_install "${APT_PACKAGES[@]}"
    missing="$(missing_pieces)" || die "installed ${APT_PACKAGES[*]} but still missing: ${missing//$'\n'/; }"
    say "PTX toolchain installed: $(/usr/bin/rustc -V)"
fi
if [[ "${1:-}" == --verify ]]; then
    verify_manifest || die "scripts/debian-toolchain.txt names a wrong package for some file (above)"
    say "verified: every toolchain file belongs to a package in (${APT_PACKAGES[*]})"
fi

# --- 2. ptxas --------------------------------------------------------------------------------------
if [[ "${SAGE_SETUP_NO_PTXAS:-0}" == 1 ]]; then
    say "skipping ptxas (SAGE_SETUP_NO_PTXAS=1)"
    exit 0
fi

VENV="$TOOLS_DIR/venv"
LINK="$TOOLS_DIR/bin/ptxas"

find_pip_ptxas() {
    # the wheel puts it at site-packages/nvidia/cuda_nvcc/bin/ptxas
    local f
    for f in "$VENV"/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas \
             "$TOOLS_DIR"/site/nvidia/cuda_nvcc/bin/ptxas; do
        [[ -x "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}

if ! ptxas_path="$(find_pip_ptxas)" || ! "$ptxas_path" --version >/dev/null 2>&1; then
    mkdir -p "$TOOLS_DIR"
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv python3-pip
    if [[ ! -x "$VENV/bin/python" ]]; then
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            say "python3 -m venv failed; installing python3-venv"
            apt_install python3-venv
            python3 -m venv "$VENV" || die "could not create a virtualenv at $VENV"
        fi
    fi
    say "installing ptxas ($PTXAS_PIP_SPEC) into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PTXAS_PIP_SPEC" \
        || die "pip install $PTXAS_PIP_SPEC failed"
    ptxas_path="$(find_pip_ptxas)" || die "nvidia-cuda-nvcc-cu12 installed but its ptxas was not found under $VENV"
fi
"$ptxas_path" --version >/dev/null 2>&1 || die "$ptxas_path does not run"
mkdir -p "$TOOLS_DIR/bin"
ln -sfn "$ptxas_path" "$LINK"
say "ptxas: $LINK -> $ptxas_path ($("$ptxas_path" --version | grep -o 'release [0-9.]*' | head -1))"
