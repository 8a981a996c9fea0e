#!/usr/bin/env bash
# Runs on the lent GPU machine (no Rust toolchain there), from the repo root, on what
# scripts/device-bundle.sh put into .device/:
#
#   run(command="bash .device/device-run.sh", carry=[".device"])
#
# Steps (all of them run, whatever fails before):
#   1. nvidia-smi -L
#   2. every .device/tests/* with --include-ignored --test-threads=1      -> $OUT/tests.log
#      (--include-ignored runs the GPU tests, which are #[ignore]d for CI, and the CPU ones;
#       libtest refuses --ignored together with it)
#   3. compute-sanitizer memcheck, racecheck, initcheck, synccheck on the tests whose names match
#      $SAGE_SANITIZER_FILTER (default `sanitizer_`)                       -> $OUT/sanitizer.log
#   4. .device/bench $SAGE_BENCH_ARGS, if .device/bench exists            -> $OUT/bench.log
#   5. a short summary: test result lines, failed tests, sanitizer ERROR SUMMARY lines
# Exit status: non-zero if any step failed.
#
# Environment:
#   OUT                      where logs go (the device tool sets it; default ./.device-out)
#   SAGE_TEST_FILTER         passed to every test executable as its name filter (default: `--skip
#                            probe --skip perf_`, which leaves out the timing probes: with them the suite runs
#                            past one device call's 600 s; SAGE_RUN_PROBES=1 keeps them)
#   SAGE_TEST_TIMEOUT        seconds per test executable (default 300)
#   SAGE_SANITIZER_FILTER    test name filter for compute-sanitizer (default sanitizer_)
#   SAGE_SANITIZER_TOOLS     default "memcheck racecheck initcheck synccheck"
#   SAGE_SANITIZER_TIMEOUT   seconds per tool and executable (default 300)
#   SAGE_BENCH_ARGS          arguments for the bench (default: none)
#   SAGE_BENCH_TIMEOUT       seconds (default 300)
#   SAGE_SKIP_TESTS / SAGE_SKIP_SANITIZER / SAGE_SKIP_BENCH = 1 to leave a step out
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
if [[ -d "$here/tests" ]]; then
    DEV="$here"                      # run as .device/device-run.sh
else
    DEV="$(cd "$here/.." && pwd)/.device"  # run as scripts/device-run.sh
fi
cd "$DEV/.."
[[ -d "$DEV/tests" ]] || { echo "device-run: $DEV/tests not found: run scripts/device-bundle.sh first and carry .device" >&2; exit 2; }

OUT="${OUT:-$PWD/.device-out}"
# The CLI tests run the bundled binary (cargo's path to it does not exist on this machine).
[[ -x "$DEV/sageattn" ]] && export SAGEATTN_BIN="$DEV/sageattn"
mkdir -p "$OUT"
TEST_TIMEOUT="${SAGE_TEST_TIMEOUT:-300}"
SAN_FILTER="${SAGE_SANITIZER_FILTER:-sanitizer_}"
SAN_TOOLS="${SAGE_SANITIZER_TOOLS:-memcheck racecheck initcheck synccheck}"
SAN_TIMEOUT="${SAGE_SANITIZER_TIMEOUT:-300}"
BENCH_TIMEOUT="${SAGE_BENCH_TIMEOUT:-300}"
if [[ -z "${SAGE_TEST_FILTER:-}" && "${SAGE_RUN_PROBES:-0}" != 1 ]]; then
    TEST_FILTER=(--skip probe --skip perf_)
else
    # shellcheck disable=SC2206
    TEST_FILTER=(${SAGE_TEST_FILTER:-})
fi

failed=()
summary=()
note_fail() { failed+=("$1"); echo "device-run: FAILED: $1" >&2; }

echo "== device-run: $(date -u +%H:%M:%S) bundle: $(head -2 "$DEV/MANIFEST" 2>/dev/null | tr '\n' ' ')"

# --- 1. the GPU --------------------------------------------------------------------------------
echo "== nvidia-smi -L"
if ! nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt"; then
    note_fail "nvidia-smi"
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader \
    >> "$OUT/nvidia-smi.txt" 2>/dev/null || true

# --- 2. tests ---------------------------------------------------------------------------------
tests=()
for t in "$DEV"/tests/*; do [[ -x "$t" ]] && tests+=("$t"); done
if [[ "${SAGE_SKIP_TESTS:-0}" == 1 ]]; then
    echo "== tests: skipped (SAGE_SKIP_TESTS=1)"
else
    : > "$OUT/tests.log"
    for t in "${tests[@]}"; do
        name="$(basename "$t")"
        echo "== test $name" | tee -a "$OUT/tests.log"
        start=$SECONDS
        timeout --kill-after=10 "$TEST_TIMEOUT" "$t" --include-ignored --test-threads=1 "${TEST_FILTER[@]}" \
            > "$OUT/test-$name.log" 2>&1
        rc=$?
        cat "$OUT/test-$name.log" >> "$OUT/tests.log"
        echo "== test $name: exit $rc ($((SECONDS - start)) s)" >> "$OUT/tests.log"
        result="$(grep -E '^test result:' "$OUT/test-$name.log" | tail -1)"
        summary+=("$(printf '%-24s exit %-3s %4d s  %s' "$name" "$rc" $((SECONDS - start)) "${result:-(no result line)}")")
        rm -f "$OUT/test-$name.log"
        if ((rc == 124 || rc == 137)); then
            note_fail "test $name (timed out after $TEST_TIMEOUT s)"
        elif ((rc != 0)); then
            note_fail "test $name (exit $rc)"
        fi
    done
fi

# --- 3. compute-sanitizer ------------------------------------------------------------------------
sanitizer="$(command -v compute-sanitizer || true)"
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer /opt/cuda/bin; do
    [[ -z "$sanitizer" && -x "$d/compute-sanitizer" ]] && sanitizer="$d/compute-sanitizer"
done
if [[ "${SAGE_SKIP_SANITIZER:-0}" == 1 ]]; then
    echo "== sanitizer: skipped (SAGE_SKIP_SANITIZER=1)"
elif [[ -z "$sanitizer" ]]; then
    note_fail "compute-sanitizer not found"
else
    : > "$OUT/sanitizer.log"
    ran=0
    for t in "${tests[@]}"; do
        name="$(basename "$t")"
        # only executables that have matching tests
        n="$("$t" --list --include-ignored "$SAN_FILTER" 2>/dev/null | grep -c ': test$' || true)"
        ((n > 0)) || continue
        for tool in $SAN_TOOLS; do
            ran=1
            echo "== sanitizer $tool $name '$SAN_FILTER' ($n tests)" | tee -a "$OUT/sanitizer.log"
            start=$SECONDS
            timeout --kill-after=10 "$SAN_TIMEOUT" "$sanitizer" --tool "$tool" --error-exitcode 99 \
                "$t" --include-ignored --test-threads=1 "$SAN_FILTER" > "$OUT/san-one.log" 2>&1
            rc=$?
            cat "$OUT/san-one.log" >> "$OUT/sanitizer.log"
            echo "== sanitizer $tool $name: exit $rc ($((SECONDS - start)) s)" >> "$OUT/sanitizer.log"
            errs="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san-one.log" | sed 's/^=* *//' | tr '\n' ' ')"
            res="$(grep -E '^test result:' "$OUT/san-one.log" | tail -1 | sed 's/; finished in.*//')"
            summary+=("$(printf 'sanitizer %-10s %-16s exit %-3s %4d s  %s| %s' "$tool" "$name" "$rc" $((SECONDS - start)) "${errs:-(no ERROR SUMMARY) }" "${res:-(no result line)}")")
            rm -f "$OUT/san-one.log"
            if ((rc == 124 || rc == 137)); then
                note_fail "sanitizer $tool $name (timed out after $SAN_TIMEOUT s)"
            elif ((rc != 0)); then
                note_fail "sanitizer $tool $name (exit $rc)"
            fi
        done
    done
    ((ran)) || echo "== sanitizer: no test matches '$SAN_FILTER'" | tee -a "$OUT/sanitizer.log"
fi

# --- 4. bench -------------------------------------------------------------------------------------
if [[ "${SAGE_SKIP_BENCH:-0}" == 1 ]]; then
    echo "== bench: skipped (SAGE_SKIP_BENCH=1)"
elif [[ -x "$DEV/bench" ]]; then
    # shellcheck disable=SC2206
    bench_args=(${SAGE_BENCH_ARGS:-})
    echo "== bench ${bench_args[*]}"
    timeout --kill-after=10 "$BENCH_TIMEOUT" "$DEV/bench" "${bench_args[@]}" > "$OUT/bench.log" 2>&1
    rc=$?
    if ((rc != 0)); then note_fail "bench (exit $rc)"; fi
    tail -40 "$OUT/bench.log"
else
    echo "== bench: $DEV/bench not in the bundle"
fi

# --- 5. summary ---------------------------------------------------------------------------------
echo
echo "================ summary ================"
if ((${#summary[@]})); then
    printf '%s\n' "${summary[@]}"
fi
if [[ -f "$OUT/tests.log" ]]; then
    if grep -qE '^test .* \.\.\. FAILED$' "$OUT/tests.log"; then
        echo "failed tests:"
        grep -E '^test .* \.\.\. FAILED$' "$OUT/tests.log" | sed 's/^/  /'
    fi
fi
if ((${#failed[@]})); then
    echo "device-run: ${#failed[@]} step(s) failed:"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
echo "device-run: all steps passed"
