#!/usr/bin/env bash
# Builds the sageattention wheel (PyO3 abi3: one wheel for CPython >= 3.9, manylinux) with maturin.
#
#   bash python/build-wheel.sh [OUT_DIR]        default OUT_DIR: target/wheels
#
# maturin comes from PyPI into a venv under target/ (reused; SAGE_MATURIN_VENV to move it).
# The extension is the workspace member python/ (crate sageattention-python), built in release
# into the workspace's target/, so it reuses the library and its PTX from `cargo build --release`.
# maturin checks the shared library's glibc symbol versions and tags the wheel with the oldest
# manylinux policy they satisfy (manylinux_2_34 when built on Debian 12); extra maturin flags go in
# SAGE_WHEEL_ARGS (e.g. "--compatibility linux" to skip that check).
# Prints the wheel's path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-target/wheels}"
venv="${SAGE_MATURIN_VENV:-target/maturin-venv}"
[[ -z "${SAGE_SKIP_PTX:-}" || "${SAGE_SKIP_PTX}" == 0 ]] \
    || { echo "build-wheel: SAGE_SKIP_PTX is set: the wheel would embed empty PTX" >&2; exit 1; }

if [[ ! -x "$venv/bin/maturin" ]]; then
    echo "build-wheel: installing maturin into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.5,<2"
fi
mkdir -p "$out"
rm -f "$out"/sageattention-*.whl
# shellcheck disable=SC2086
"$venv/bin/maturin" build --release --manifest-path python/Cargo.toml --out "$out" ${SAGE_WHEEL_ARGS:-} >&2
wheels=("$out"/sageattention-*.whl)
[[ -f "${wheels[0]}" ]] || { echo "build-wheel: no wheel in $out" >&2; exit 1; }
echo "${wheels[0]}"
