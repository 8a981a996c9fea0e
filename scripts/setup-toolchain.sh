#!/usr/bin/env bash
# Installs what building the device crate (kernels-gpu -> PTX) and checking its PTX needs, on
# Debian/Ubuntu. Idempotent: quiet and fast when everything is already there.
#
#   1. the PTX toolchain, from Debian's packages (one LLVM version throughout):
#        apt-get install -y rustc-web rust-web-src llvm-22
#      -> /usr/bin/rustc + /usr/bin/cargo (1.96, LLVM 22), /usr/lib/rustlib/src/rust/library (core's
#         source for -Zbuild-std=core), /usr/lib/llvm-22/bin/{llvm-link,opt,llc,llvm-ar}
#   2. ptxas (for scripts/ptxas-check.sh), from PyPI's nvidia-cuda-nvcc-cu12, into a virtualenv under
#      ${SAGE_PTX_TOOLS_DIR:-~/.cache/sage-ptx-tools}; a link to it is left at <that dir>/bin/ptxas.
#
# The host crate builds with the machine's ordinary (rustup stable) toolchain; build.rs finds the
# PTX toolchain by itself (see build.rs for the order: SAGE_PTX_RUSTC/SAGE_PTX_CARGO, a rustup
# nightly with rust-src + llvm-bitcode-linker, then the Debian packages installed here).
#
# Options (environment):
#   SAGE_SETUP_NO_PTXAS=1   skip step 2
#   SAGE_PTX_TOOLS_DIR      where the ptxas virtualenv goes (default ~/.cache/sage-ptx-tools)
set -euo pipefail

say() { echo "setup-toolchain: $*" >&2; }
die() { echo "setup-toolchain: error: $*" >&2; exit 1; }

APT_PACKAGES=(rustc-web rust-web-src llvm-22)
LLVM_BIN=/usr/lib/llvm-22/bin
RUST_SRC=/usr/lib/rustlib/src/rust/library
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

device_toolchain_present() {
    [[ -x /usr/bin/rustc && -x /usr/bin/cargo ]] || return 1
    [[ -f "$RUST_SRC/core/Cargo.toml" ]] || return 1
    local t
    for t in llvm-link opt llc llvm-ar; do [[ -x "$LLVM_BIN/$t" ]] || return 1; done
    # rustc-web is built with the nvptx64 target and must speak LLVM 22 bitcode like llvm-22.
    /usr/bin/rustc --print target-list 2>/dev/null | grep -qx nvptx64-nvidia-cuda || return 1
    /usr/bin/rustc -vV 2>/dev/null | grep -q '^LLVM version: 22\.' || return 1
    return 0
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
if device_toolchain_present; then
    say "PTX toolchain present: $(/usr/bin/rustc -V), LLVM bin $LLVM_BIN"
else
    apt_install "${APT_PACKAGES[@]}"
    device_toolchain_present || die "installed ${APT_PACKAGES[*]} but the toolchain check still fails: need /usr/bin/rustc (LLVM 22, target nvptx64-nvidia-cuda), /usr/bin/cargo, $RUST_SRC and $LLVM_BIN/{llvm-link,opt,llc,llvm-ar}"
    say "PTX toolchain installed: $(/usr/bin/rustc -V)"
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
