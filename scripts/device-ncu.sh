#!/usr/bin/env bash
# Per-launch kernel times of one bench run under ncu, on the GPU machine (run from the repo root,
# with the bench of scripts/device-bundle.sh in .device/):
#
#   run(command="bash scripts/device-ncu.sh -- --head-dims 128 --seq-lens 1024,2048 --paths both",
#       carry=[".device"])        # or .devpack, unpacked first
#
# ncu (`gpu__time_duration.sum` only, `--clock-control none --cache-control none` as METHOD.md
# asks) writes its CSV to its own log file, apart from the bench's output; scripts/ncu-times.py
# then prints one line per launch and the median per kernel and grid. The bench runs with few
# launches per case (`--min-iters 3 --min-seconds 0 --warmup-ms 0 -q --no-check` are added):
# every launch is replayed by ncu. Outputs: $OUT/ncu.csv, $OUT/ncu-times.txt.
# Environment: OUT (default ./.device-out), NCU (default: ncu on PATH or /usr/local/cuda/bin/ncu),
# SAGE_BENCH (default .device/bench), NCU_TIMEOUT (seconds, default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
[[ "${1:-}" == -- ]] && shift
OUT="${OUT:-$PWD/.device-out}"
mkdir -p "$OUT"
ncu="${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}"
bench="${SAGE_BENCH:-.device/bench}"
[[ -x "$ncu" ]] || { echo "device-ncu: no ncu at $ncu" >&2; exit 2; }
[[ -x "$bench" ]] || { echo "device-ncu: no bench at $bench (scripts/device-bundle.sh)" >&2; exit 2; }
timeout "${NCU_TIMEOUT:-300}" "$ncu" --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu.csv" \
    "$bench" "$@" --min-iters 3 --min-seconds 0 --warmup-ms 0 -q --no-check \
    > "$OUT/bench.log" 2>&1
rc=$?
echo "device-ncu: ncu exit $rc" >&2
python3 scripts/ncu-times.py "$OUT/ncu.csv" | tee "$OUT/ncu-times.txt"
