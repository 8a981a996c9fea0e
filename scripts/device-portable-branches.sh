#!/usr/bin/env bash
# The device calls that decide v28–v30 (branches portable-fast-softmax ⊂ portable-compact ⊂
# portable-reverse-causal; docs/perf-notes.md, v28–v30 and the sixteenth session's status), one
# stage per call (each fits the 600 s limit). Built here first, from this branch:
#
#   SAGE_BUNDLE_TESTS="gpu_attention gpu_hopper" bash scripts/device-bundle.sh   # -> .devpack
#   bash scripts/bundle-ab.sh main=main v28=portable-fast-softmax               # -> .devab
#   run(command="bash scripts/device-portable-branches.sh tests", carry=[".devpack", ".devab"])
#   run(command="bash scripts/device-portable-branches.sh portable", carry=[…the same])
#   run(command="bash scripts/device-portable-branches.sh order", carry=[…the same])
#
# tests:    gpu_attention (every test: the jump, compact and fused-QKV tests among them) and
#           gpu_hopper, then memcheck and racecheck on sanitizer_small_matrix (compact cases)
# portable: A/B main / v28 / this branch, portable kernel, N(0,1); then the occupancy proxy
#           (100 KiB SMs): the 64-key variants (--no-compact) against the compact ones
# order:    the lagging max on positional inputs: main's sm_90a f16 kernels (v27) on N(0,1),
#           rotary and recency inputs; v28 against this branch (v28.1 headroom, v30 reverse
#           causal order) on rotary and recency inputs, portable kernel
# Logs and tables go to $OUT; a summary ends stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/.device-out}"
mkdir -p "$OUT"
stage="${1:?give a stage: tests, portable or order}"

[[ -d .device ]] || bash .devpack/unpack.sh > /dev/null
[[ -x .devab/main ]] || bash .devab/unpack.sh > /dev/null
nvidia-smi -L
t0=$SECONDS
ab() { # ab LABEL NAME=PATH… -- bench arguments
    local label="$1"; shift
    OUT="$OUT" bash scripts/device-ab.sh "$@" > "$OUT/ab-$label.log" 2>&1
    cp "$OUT/ab.txt" "$OUT/ab-$label.txt"
    echo "== $label ($((SECONDS - t0)) s)"
    cat "$OUT/ab-$label.txt"
}

case "$stage" in
tests)
    for t in gpu_attention gpu_hopper; do
        timeout 240 ".device/tests/$t" --include-ignored --test-threads=1 --skip probe --skip perf_ \
            > "$OUT/$t.log" 2>&1
        echo "$t: exit $? ($((SECONDS - t0)) s)"
        grep -E "^test result|FAILED|panicked" "$OUT/$t.log" | head -20
    done
    for tool in memcheck racecheck; do
        timeout 120 compute-sanitizer --tool "$tool" .device/tests/gpu_attention --ignored \
            --test-threads=1 sanitizer_small_matrix > "$OUT/sanitizer-$tool.log" 2>&1
        echo "sanitizer $tool: exit $? ($((SECONDS - t0)) s)"
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$OUT/sanitizer-$tool.log" | tail -3
    done
    ;;
portable)
    ROUNDS=2 ab portable main=.devab/main v28=.devab/v28 top=.device/bench -- --portable \
        --head-dims 64,96,128 --seq-lens 2048,16384 --causal both --paths kernel
    ROUNDS=2 ab proxy full=.device/bench+--no-compact compact=.device/bench -- --portable \
        --emulate-smem-per-sm 100 --head-dims 96,128 --seq-lens 2048,16384 --causal both \
        --paths kernel
    ;;
order)
    ROUNDS=2 ab sm90a-inputs normal=.devab/main+--inputs+normal \
        rotary=.devab/main+--inputs+rotary recency=.devab/main+--inputs+recency -- \
        --head-dims 64,128 --seq-lens 8192 --causal both --paths kernel
    for inputs in rotary recency; do
        ROUNDS=2 ab "portable-$inputs" v28=.devab/v28 top=.device/bench -- --portable \
            --inputs "$inputs" --head-dims 64,128 --seq-lens 8192 --causal both --paths kernel
    done
    ;;
*)
    echo "unknown stage '$stage' (tests, portable, order)" >&2
    exit 2
    ;;
esac
echo "stage $stage done in $((SECONDS - t0)) s"
