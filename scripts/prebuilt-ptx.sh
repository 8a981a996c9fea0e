#!/usr/bin/env bash
# Writes prebuilt-ptx/ (ignored): the three PTX modules of a release build of this checkout, which
# a packaged crate carries instead of kernels-gpu/ (cargo leaves nested packages out of a package;
# build.rs copies them when there is no kernels-gpu/ to build from). Run it before `cargo package`
# or `cargo publish`; a dependent crate then builds with no PTX toolchain and no CUDA toolkit.
#
#   bash scripts/prebuilt-ptx.sh && cargo package
#
# prebuilt-ptx/SOURCE says which commit (and whether the tree was dirty) the modules come from.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ -z "${SAGE_SKIP_PTX:-}" || "${SAGE_SKIP_PTX}" == 0 ]] \
    || { echo "prebuilt-ptx: SAGE_SKIP_PTX is set: the modules would be empty" >&2; exit 1; }
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo build --release --lib --message-format=json-render-diagnostics > "$json"
out_dir="$(python3 scripts/ptx-out-dir.py "$json")"
[[ -n "$out_dir" ]] || { echo "prebuilt-ptx: build.rs's OUT_DIR not found in cargo's output" >&2; exit 1; }
rm -rf prebuilt-ptx && mkdir prebuilt-ptx
for f in sage_sm80.ptx sage_sm90a.ptx sage_sm89.ptx; do
    [[ -s "$out_dir/$f" ]] || { echo "prebuilt-ptx: $out_dir/$f is empty or missing" >&2; exit 1; }
    cp "$out_dir/$f" "prebuilt-ptx/$f"
done
{
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- kernels-gpu build.rs tools 2>/dev/null || echo ' (device sources changed since)')"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > prebuilt-ptx/SOURCE
echo "prebuilt-ptx: $(du -sh prebuilt-ptx | cut -f1) written from $out_dir" >&2
