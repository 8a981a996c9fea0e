#!/usr/bin/env bash
# CI step (no GPU): build the wheel, install it into a fresh venv, run the pytest suite there.
# Without torch and a GPU the GPU tests skip themselves; what runs is the CPU subset: import without
# torch, the official signatures, TypeError on numpy/list inputs and unknown keywords, and the
# extension's own argument checks (every bad input an exception, never a crash).
# torch is deliberately not installed: PyPI's Linux torch wheel is the CUDA build (~1 GB with its
# nvidia-* dependencies), too much for a CI step; the torch-dependent CPU tests skip likewise.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

wheel="$(bash python/build-wheel.sh target/wheels | tail -1)"
echo "ci: built $wheel ($(du -k "$wheel" | cut -f1) KiB)"

venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check pytest numpy
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$wheel"

# From outside the source tree, so that `import sageattention` finds the installed wheel.
cd "$(dirname "$venv")"
"$venv/bin/python" -m pytest "$repo/python/tests" -q -rs -p no:cacheprovider
