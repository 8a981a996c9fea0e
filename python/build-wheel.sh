#!/usr/bin/env bash
# Builds the sageattention wheel (PyO3 abi3: one wheel for CPython >= 3.9, manylinux) with maturin.
#
#   bash python/build-wheel.sh [--test-deps] [OUT_DIR]        default OUT_DIR: target/wheels
#
# --test-deps also downloads pytest and its dependencies (pure-Python wheels) into
# OUT_DIR/test-deps, for a machine without network whose Python may lack pytest (the GPU machine,
# Python 3.12: the wheels are chosen for it).
#
# maturin comes from PyPI into a venv under target/ (reused; SAGE_MATURIN_VENV to move it).
# The extension is the workspace member python/ (crate sageattention-python), built in release
# into the workspace's target/, so it reuses the library and its PTX from `cargo build --release`.
# maturin checks the shared library's glibc symbol versions and tags the wheel with the oldest
# manylinux policy they satisfy: manylinux_2_34 when built on Debian 12 (glibc 2.36), which every
# glibc >= 2.34 system takes (Ubuntu 22.04+, RHEL 9+). SAGE_WHEEL_PORTABLE=1 links with zig
# (PyPI ziglang, ~400 MB installed) against glibc 2.28 instead: manylinux_2_28, the policy of
# torch's own wheels; it builds in target/wheel-portable (zig changes every unit's flags, so
# sharing target/ would rebuild everything twice). Extra maturin flags go in SAGE_WHEEL_ARGS.
# Prints the wheel's path on the last line.
set -euo pipefail

test_deps=0
if [[ "${1:-}" == --test-deps ]]; then
    test_deps=1
    shift
fi
out="${1:-}"
if [[ -n "$out" ]]; then
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"   # relative to the caller's directory
fi
cd "$(dirname "$0")/.."
out="${out:-$PWD/target/wheels}"
venv="${SAGE_MATURIN_VENV:-target/maturin-venv}"
[[ -z "${SAGE_SKIP_PTX:-}" || "${SAGE_SKIP_PTX}" == 0 ]] \
    || { echo "build-wheel: SAGE_SKIP_PTX is set: the wheel would embed empty PTX" >&2; exit 1; }

if [[ ! -x "$venv/bin/maturin" ]]; then
    echo "build-wheel: installing maturin into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.5,<2"
fi
venv="$(cd "$venv" && pwd)"
extra=()
if [[ "${SAGE_WHEEL_PORTABLE:-0}" == 1 ]]; then
    if ! "$venv/bin/python" -c "import ziglang" 2>/dev/null; then
        echo "build-wheel: installing ziglang into $venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check ziglang
    fi
    export PATH="$venv/bin:$PATH"   # maturin runs zig as `python3 -m ziglang`
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/wheel-portable}"
    extra=(--zig --compatibility manylinux_2_28)
fi
mkdir -p "$out"
rm -f "$out"/sageattention-*.whl
# shellcheck disable=SC2086
"$venv/bin/maturin" build --release --manifest-path python/Cargo.toml --out "$out" "${extra[@]}" ${SAGE_WHEEL_ARGS:-} >&2
if ((test_deps)); then
    rm -rf "$out/test-deps"
    "$venv/bin/pip" download --quiet --disable-pip-version-check --dest "$out/test-deps" \
        --only-binary=:all: --implementation py --abi none --platform any --python-version 3.12 pytest >&2
fi
wheels=("$out"/sageattention-*.whl)
[[ -f "${wheels[0]}" ]] || { echo "build-wheel: no wheel in $out" >&2; exit 1; }
echo "${wheels[0]}"
