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
# The official SageAttention 2.2 sm90 path (INT8 QK, FP8 PV) as a peer: its sources are packed
# here, into the ignored .peers/ (nothing of it is tracked), from a snapshot or clone of the public
# github.com/thu-ml/SageAttention (Apache-2.0) and the build recipe in ../shared/peers/sage2-sm90:
#
#   here:       bash scripts/compare.sh --pack-sage2 <SageAttention clone or git dir>
#                                      # -> .peers/sage2.tar.gz (sources, recipe, ninja wheel)
#   device:     run(command="bash scripts/compare.sh ...", carry=[".device", ".whl", ".peers"])
#
# When .peers/sage2.tar.gz is there, this script first builds its two sm90 extensions with the
# nvcc of the GPU machine into /tmp/sage2-build (about 136 s with MAX_JOBS=16; reused while the
# machine stays warm), and compare.py adds the sage-2.2-sm90 peers (SAGE2=0 skips all that).
# `compare.sh --build-sage2` does only that build and exits (run it in the background to overlap
# the build with GPU work; the compare.sh after it, on the same machine, reuses the build).
#
# The varlen section (compare.py --varlen on|off|only; on by default) times our sageattn_varlen
# through our Python wheel: this script installs .device/wheels/sageattention-*.whl (built by
# scripts/device-bundle.sh; not with SAGE_BUNDLE_MINIMAL=1) into /tmp/sage-rs-site and exports
# SAGE_RS_SITE, from where compare.py imports it as `sageattention_rs` next to the official 1.0.6
# (both are the package `sageattention`). The official sageattn_varlen is the 1.0.6 wheel's
# (Triton): no other build is needed.
#
#   device:     run(command="bash scripts/compare.sh --varlen only", carry=[".device", ".whl"])
#
# Outputs in $OUT (default ./compare-out): table.txt, compare.json, peers.json, ours.json,
# chart.svg (with the 8-bit P.V: ours-int8.json, chart-int8.svg; with the FP8 P.V: ours-fp8.json,
# chart-fp8.svg), compare.log, sage2-build.log,
# and with the 2.2 peer built, sage2-kernels.txt: the registers, stack and shared memory of its
# attention kernels (cuobjdump -res-usage; what decides its CTAs per SM), plus with SAGE2_SASS=1
# sage2-sass.txt.gz, their SASS (to compare its per-tile instruction path with ours:
# python3 scripts/sass-mix.py sage2-sass.txt.gz qk_int8_sv_f8_attn_kernel).
#
# Environment: OUT, SAGE_BENCH (our bench binary, default .device/bench), SAGE_WHEEL_DIR
# (default .whl), SAGE_RS_WHEEL_DIR (our wheel, default .device/wheels), PYTHON (default python3), SAGE2 (0: no 2.2 peer), SAGE2_TARBALL (default
# .peers/sage2.tar.gz), SAGE2_BUILD_TIMEOUT (seconds, default 330), MAX_JOBS (default 16),
# SAGE2_RECIPE (for --pack-sage2; default ../shared/peers/sage2-sm90), SAGE2_SASS (1: write
# sage2-sass.txt.gz).
set -uo pipefail
cd "$(dirname "$0")/.."

# --pack-sage2 SNAPSHOT: here, not on the GPU machine.
if [[ "${1:-}" == --pack-sage2 ]]; then
    set -e
    src="${2:?usage: scripts/compare.sh --pack-sage2 <SageAttention clone or git dir>}"
    [[ "$src" == /* ]] || src="$OLDPWD/$src"   # relative to where this was called from
    git_dir="$src"
    [[ -d "$src/.git" ]] && git_dir="$src/.git"
    recipe="${SAGE2_RECIPE:-../shared/peers/sage2-sm90}"
    [[ -f "$recipe/build_sm90.py" ]] || { echo "compare.sh: no $recipe/build_sm90.py (set SAGE2_RECIPE)" >&2; exit 1; }
    git check-ignore -q .peers/x || { echo "compare.sh: .peers/ is not ignored (.gitignore)" >&2; exit 1; }
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/sage2" "$tmp/whl" .peers
    git --git-dir="$git_dir" archive HEAD sageattention csrc setup.py README.md LICENSE | tar -x -C "$tmp/sage2"
    cp "$recipe"/build_sm90.py "$recipe"/bench_sage2*.py "$tmp/sage2/"
    echo "thu-ml/SageAttention $(git --git-dir="$git_dir" rev-parse --short HEAD)" > "$tmp/sage2/SOURCE"
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --python-version 3.12 ninja -d "$tmp/whl"
    tar -czf .peers/sage2.tar.gz -C "$tmp" sage2 whl
    echo "compare.sh: wrote .peers/sage2.tar.gz ($(du -k .peers/sage2.tar.gz | cut -f1) KiB: $(cat "$tmp/sage2/SOURCE"), $(ls "$tmp/whl"))"
    exit 0
fi

# Builds the official SageAttention 2.2 sm90 extensions from $SAGE2_TARBALL into /tmp/sage2-build
# (skipped when that tarball was built there already); sets SAGE2_DIR, or SAGE2_ERROR with why not.
build_sage2() {
    local tarball="$1" dest=/tmp/sage2-build sum log="$OUT/sage2-build.log" t0 rc
    sum="$(sha256sum "$tarball" | cut -c1-16)"
    if [[ -f "$dest/.built-$sum" ]]; then
        echo "compare.sh: the official SageAttention 2.2 is already built in $dest/sage2 ($(cat "$dest/sage2/SOURCE" 2>/dev/null))"
        export SAGE2_DIR="$dest/sage2"
        return 0
    fi
    rm -rf "$dest" && mkdir -p "$dest"
    if ! tar -xzf "$tarball" -C "$dest"; then
        export SAGE2_ERROR="unpacking $tarball failed"
        return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$dest/tools" "$dest"/whl/*.whl \
        || echo "compare.sh: installing ninja failed: the build will be slow (no ninja)"
    echo "compare.sh: building the official SageAttention 2.2 sm90 extensions ($(cat "$dest/sage2/SOURCE" 2>/dev/null)), MAX_JOBS=${MAX_JOBS:-16}, log in $log"
    t0=$SECONDS
    (cd "$dest/sage2" && PATH="$dest/tools/bin:$PATH" PYTHONPATH="$dest/tools" MAX_JOBS="${MAX_JOBS:-16}" \
        timeout "${SAGE2_BUILD_TIMEOUT:-330}" "$PY" build_sm90.py build_ext --inplace) > "$log" 2>&1
    rc=$?
    shopt -s nullglob
    local built=("$dest"/sage2/sageattention/_qattn_sm90*.so "$dest"/sage2/sageattention/_fused*.so)
    if ((rc != 0 || ${#built[@]} != 2)); then
        tail -5 "$log"
        export SAGE2_ERROR="building the official SageAttention 2.2 failed (status $rc after $((SECONDS - t0)) s; sage2-build.log): $(grep -m1 -iE 'error' "$log" | cut -c1-160)"
        echo "compare.sh: $SAGE2_ERROR"
        return 1
    fi
    touch "$dest/.built-$sum"
    echo "compare.sh: built the official SageAttention 2.2 in $((SECONDS - t0)) s"
    export SAGE2_DIR="$dest/sage2"
}

# Writes what the official 2.2 attention kernels use per thread and CTA (and, with SAGE2_SASS=1,
# their SASS) next to the table, from the extension build_sage2 made; a missing cuobjdump only
# leaves the files out.
describe_sage2() {
    local so cuobjdump
    so="$(ls "$SAGE2_DIR"/sageattention/_qattn_sm90*.so 2>/dev/null | head -1)"
    cuobjdump="$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)"
    [[ -n "$so" && -x "$cuobjdump" ]] || { echo "compare.sh: no cuobjdump or no _qattn_sm90 extension: sage2-kernels.txt left out"; return 0; }
    "$cuobjdump" -res-usage "$so" 2>/dev/null | grep -A1 -E "Function .*attn" > "$OUT/sage2-kernels.txt" || true
    echo "compare.sh: wrote sage2-kernels.txt ($(grep -c Function "$OUT/sage2-kernels.txt") kernels)"
    if [[ "${SAGE2_SASS:-0}" == 1 ]]; then
        "$cuobjdump" -sass "$so" 2>/dev/null | gzip > "$OUT/sage2-sass.txt.gz"
    fi
}

export PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/compare-out}"
export OUT
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
WHEELS="${SAGE_WHEEL_DIR:-.whl}"
export SAGE_BENCH="${SAGE_BENCH:-.device/bench}"
tarball="${SAGE2_TARBALL:-.peers/sage2.tar.gz}"

# --build-sage2: only build the 2.2 peer (on the CPUs, e.g. in the background while GPU tests
# run); a later compare.sh in the same machine's life reuses the build.
if [[ "${1:-}" == --build-sage2 ]]; then
    [[ -f "$tarball" ]] || { echo "compare.sh: no $tarball (carry .peers; scripts/compare.sh --pack-sage2)" >&2; exit 1; }
    build_sage2 "$tarball"
    exit $?
fi

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
    rs_wheels=("${SAGE_RS_WHEEL_DIR:-.device/wheels}"/sageattention-*.whl)
    unset SAGE_RS_SITE
    if ((${#rs_wheels[@]} == 1)); then
        rm -rf /tmp/sage-rs-site
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target /tmp/sage-rs-site "${rs_wheels[0]}"; then
            export SAGE_RS_SITE=/tmp/sage-rs-site
            echo "compare.sh: installed our wheel $(basename "${rs_wheels[0]}") into $SAGE_RS_SITE (for the varlen section)"
        else
            echo "compare.sh: installing our wheel ${rs_wheels[0]} failed: the varlen section's ours columns will say so"
        fi
    else
        echo "compare.sh: expected one of our wheels in ${SAGE_RS_WHEEL_DIR:-.device/wheels}, found ${#rs_wheels[@]} (scripts/device-bundle.sh, carry .device): the varlen section's ours columns will say so"
    fi
    unset SAGE2_DIR SAGE2_ERROR
    if [[ "${SAGE2:-1}" != 0 && -f "$tarball" ]]; then
        build_sage2 "$tarball" && describe_sage2
    elif [[ "${SAGE2:-1}" != 0 ]]; then
        echo "compare.sh: no $tarball (carry .peers; scripts/compare.sh --pack-sage2): no SageAttention 2.2 peer"
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
