#!/usr/bin/env bash
# Runs on the lent GPU machine (Python with torch, transformers and timm; no network, no Rust
# toolchain), from the repo root, with the wheel that scripts/device-bundle.sh put into
# .device/wheels/:
#
#   run(command="bash scripts/device-python.sh", carry=[".device"])
#
# Steps (all of them run, whatever fails before):
#   1. pip install --no-index --no-deps --target $SAGE_PYSITE the carried wheel (and the carried
#      pytest if the interpreter has none); PYTHONPATH to it
#   2. the pytest suite python/tests (GPU tests, graph capture, torch.compile, transformers and
#      timm clients, and the CPU tests)                         -> $OUT/pytest.log, $OUT/pytest.xml
#   3. the overhead benchmark python/bench/overhead.py          -> $OUT/overhead.log, overhead.json
#   4. a summary: pytest's closing line, failed tests, the overhead table
# Exit status: non-zero if a step failed.
#
# Environment:
#   OUT                  where logs go (the device tool sets it; default ./.device-out)
#   PYTHON               the interpreter with torch (default python3)
#   SAGE_PYSITE          install target (default /tmp/pysite)
#   SAGE_PYTEST_ARGS     extra pytest arguments (e.g. "-k graph")
#   SAGE_PYTEST_TIMEOUT  seconds for the pytest run (default 420: with the benchmark, the script
#                        stays inside the device tool's 10 minutes per command)
#   SAGE_OVERHEAD_ARGS   extra arguments for the benchmark (e.g. "--rounds 11")
#   SAGE_OVERHEAD_TIMEOUT  seconds for the benchmark (default 120)
#   SAGE_SKIP_PYTEST / SAGE_SKIP_OVERHEAD = 1 to leave a step out
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DEV="$root/.device"
OUT="${OUT:-$root/.device-out}"
PYTHON="${PYTHON:-python3}"
SITE="${SAGE_PYSITE:-/tmp/pysite}"
mkdir -p "$OUT"

failed=()
note_fail() { failed+=("$1"); echo "device-python: FAILED: $1" >&2; }

shopt -s nullglob
wheels=("$DEV"/wheels/sageattention-*.whl)
shopt -u nullglob
if ((${#wheels[@]} != 1)); then
    echo "device-python: expected one wheel in $DEV/wheels, found ${#wheels[@]}: run scripts/device-bundle.sh and carry .device" >&2
    exit 2
fi
wheel="${wheels[0]}"

echo "== device-python: $(date -u +%H:%M:%S) wheel $(basename "$wheel"); bundle: $(head -2 "$DEV/MANIFEST" 2>/dev/null | tr '\n' ' ')"
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>&1 | tee "$OUT/nvidia-smi-python.txt"
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/python-env.txt"
import platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("torch", "transformers", "timm", "pytest", "numpy"):
    try:
        m = __import__(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "missing:", e)
EOF

# --- 1. install ---------------------------------------------------------------------------------
rm -rf "$SITE"
if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SITE" "$wheel" > "$OUT/pip.log" 2>&1; then
    cat "$OUT/pip.log"
    note_fail "pip install of $(basename "$wheel")"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
    echo "== pytest is missing: installing the carried one ($DEV/wheels/test-deps)"
    "$PYTHON" -m pip install --quiet --no-index --find-links "$DEV/wheels/test-deps" --target "$SITE" pytest \
        >> "$OUT/pip.log" 2>&1 || note_fail "pip install of the carried pytest"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Run from outside the source tree: python/sageattention (no extension module) must not shadow it.
cd "$OUT"
"$PYTHON" -c "import sageattention, sys; print('sageattention', sageattention.__version__, 'from', sageattention.__file__)" \
    || note_fail "import sageattention"

# --- 2. pytest ----------------------------------------------------------------------------------
if [[ "${SAGE_SKIP_PYTEST:-0}" == 1 ]]; then
    echo "== pytest: skipped (SAGE_SKIP_PYTEST=1)"
else
    echo "== pytest python/tests"
    # shellcheck disable=SC2206
    extra=(${SAGE_PYTEST_ARGS:-})
    timeout --kill-after=10 "${SAGE_PYTEST_TIMEOUT:-420}" "$PYTHON" -m pytest "$root/python/tests" \
        -v -rs -s -p no:cacheprovider --junitxml="$OUT/pytest.xml" "${extra[@]}" > "$OUT/pytest.log" 2>&1
    rc=$?
    tail -60 "$OUT/pytest.log"
    if ((rc == 124 || rc == 137)); then
        note_fail "pytest (timed out)"
    elif ((rc != 0)); then
        note_fail "pytest (exit $rc)"
    fi
fi

# --- 3. overhead ----------------------------------------------------------------------------------
if [[ "${SAGE_SKIP_OVERHEAD:-0}" == 1 ]]; then
    echo "== overhead: skipped (SAGE_SKIP_OVERHEAD=1)"
else
    echo "== overhead benchmark"
    # shellcheck disable=SC2206
    extra=(${SAGE_OVERHEAD_ARGS:-})
    timeout --kill-after=10 "${SAGE_OVERHEAD_TIMEOUT:-120}" "$PYTHON" "$root/python/bench/overhead.py" --json "$OUT/overhead.json" \
        "${extra[@]}" > "$OUT/overhead.log" 2>&1
    rc=$?
    cat "$OUT/overhead.log"
    ((rc == 0)) || note_fail "overhead benchmark (exit $rc)"
fi

# --- 4. summary -----------------------------------------------------------------------------------
echo
echo "================ summary ================"
if [[ -f "$OUT/pytest.log" ]]; then
    grep -E '^(=+ )?[0-9]+ (passed|failed).* in [0-9.]+s' "$OUT/pytest.log" | tail -1
    grep -E '^(FAILED|ERROR) ' "$OUT/pytest.log" | sed 's/^/  /'
    grep -E '^(llama|vit_|timm|transformers)' "$OUT/pytest.log" | sed 's/^/  /'
fi
[[ -f "$OUT/overhead.log" ]] && grep -E 'target|overhead:' "$OUT/overhead.log"
if ((${#failed[@]})); then
    echo "device-python: ${#failed[@]} step(s) failed:"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
echo "device-python: all steps passed"
