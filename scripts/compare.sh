#!/usr/bin/env bash
# Runs on the GPU machine, from anywhere in the repository (see docs/bench.md):
#
#   here:       scripts/device-bundle.sh                       # builds .device/bench (and tests)
#               python3 -m pip download --no-deps sageattention==1.0.6 -d .whl
#   device:     run(command="bash scripts/compare.sh", carry=[".device", ".whl"])
#
# Installs the carried official SageAttention 1.0.6 wheel (pure Python, Triton) into /tmp/site,
# then runs scripts/compare.py, which times PyTorch SDPA (flash and cuDNN backends), the official
# SageAttention and our bench on the same shapes, checks accuracy against float64, and prints ONE
# table. Arguments are passed to compare.py (e.g. --head-dims 64,96,128 --seq-lens 1k,2k,32k).
#
# Outputs in $OUT (default ./compare-out): table.txt, compare.json, peers.json, ours.json,
# chart.svg, compare.log.
#
# Environment: OUT, SAGE_BENCH (our bench binary, default .device/bench), SAGE_WHEEL_DIR
# (default .whl), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

export PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/compare-out}"
export OUT
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
WHEELS="${SAGE_WHEEL_DIR:-.whl}"
export SAGE_BENCH="${SAGE_BENCH:-.device/bench}"

{
    echo "== compare.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,clocks.sm \
        --format=csv,noheader 2>/dev/null || echo "compare.sh: nvidia-smi not available"
    [[ -f .device/MANIFEST ]] && head -2 .device/MANIFEST

    shopt -s nullglob
    wheels=("$WHEELS"/sageattention-1.0.6*.whl)
    if ((${#wheels[@]})); then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "${wheels[@]}"; then
            export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
            echo "compare.sh: installed ${wheels[*]} into /tmp/site"
        else
            echo "compare.sh: installing ${wheels[*]} failed: the sage-1.0.6 columns will show the import error"
        fi
    else
        echo "compare.sh: no $WHEELS/sageattention-1.0.6*.whl (carry .whl): the sage-1.0.6 columns will show the import error"
    fi
    if [[ ! -x "$SAGE_BENCH" ]]; then
        echo "compare.sh: $SAGE_BENCH is missing or not executable (build it with scripts/device-bundle.sh and carry .device): the ours columns will be empty"
    fi

    "$PY" scripts/compare.py --out "$OUT" "$@"
    rc=$?
    echo "== compare.sh: compare.py exited with $rc"
    exit $rc
} 2>&1 | tee "$OUT/compare.log"
exit "${PIPESTATUS[0]}"
