#!/usr/bin/env bash
# Builds everything the lent GPU machine runs (it has no Rust toolchain) into .device/ (ignored):
#
#   .device/tests/<name>     every test executable (integration tests by file name, the library's
#                            unit tests as `lib`), release build, debug info stripped
#   .device/bench, .device/sageattn   the binaries, likewise
#   .device/ptx/sage_sm80.ptx, sage_sm90a.ptx, sage_sm89.ptx   the modules the binaries embed
#                            (only with SAGE_BUNDLE_PTX=1: the transfer limit)
#   .device/device-run.sh    the script that runs it all there (a copy of scripts/device-run.sh)
#   .device/wheels/sageattention-*.whl   the Python wheel, for scripts/device-python.sh (with
#                            wheels/test-deps/: pytest, in case the GPU machine's Python lacks it)
#   .device/MANIFEST         what was built, from which commit, sizes
#
# Then, with the device tool: run(command="bash .device/device-run.sh", carry=[".device"]).
# SAGE_BUNDLE_MINIMAL=1: only the binaries (bench, sageattn; no tests, no wheel), about 15 MiB, for
# scripts/compare.sh runs that carry more beside .device (e.g. .whl and .peers).
# SAGE_BUNDLE_TESTS="gpu_pv8 gpu_hopper": only those test executables (and the binaries, no wheel):
# a kernel change's own tests and sanitizer tests in one short call (a few minutes instead of
# six; with two or more executables the bundle passes 56 MiB and is packed, see below).
# The transfer is limited to 64 MiB in all; when .device/ is larger than ${SAGE_BUNDLE_MAX_MIB:-56}
# MiB the script packs it with xz into .devpack/ (ignored), about a tenth of the size, with an
# unpack script: run(command="bash .devpack/unpack.sh && bash .device/device-run.sh",
# carry=[".devpack"]).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "device-bundle: error: $*" >&2; exit 1; }

[[ -z "${SAGE_SKIP_PTX:-}" || "${SAGE_SKIP_PTX}" == 0 ]] \
    || die "SAGE_SKIP_PTX is set: the binaries would embed empty PTX"
command -v python3 >/dev/null 2>&1 || die "python3 is needed to read cargo's JSON messages"

DEV=.device
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

MINIMAL="${SAGE_BUNDLE_MINIMAL:-0}"
ONLY_TESTS="${SAGE_BUNDLE_TESTS:-}"
ONLY_TESTS="${ONLY_TESTS//,/ }"
if [[ "$MINIMAL" == 1 ]]; then
    : > "$tmp/tests.json"
elif [[ -n "$ONLY_TESTS" ]]; then
    test_args=()
    for t in $ONLY_TESTS; do
        [[ -f "tests/$t.rs" ]] || die "SAGE_BUNDLE_TESTS: no tests/$t.rs"
        test_args+=(--test "$t")
    done
    echo "device-bundle: cargo test --release --no-run ${test_args[*]}" >&2
    cargo test --release --no-run "${test_args[@]}" --message-format=json-render-diagnostics > "$tmp/tests.json"
else
    echo "device-bundle: cargo test --release --no-run" >&2
    cargo test --release --no-run --message-format=json-render-diagnostics > "$tmp/tests.json"
fi
echo "device-bundle: cargo build --release --bins" >&2
cargo build --release --bins --message-format=json-render-diagnostics > "$tmp/bins.json"

# "name path" per line: test executables (lib unit tests -> lib, tests/x.rs -> x), then binaries.
python3 - "$tmp/tests.json" "$tmp/bins.json" > "$tmp/list" <<'EOF'
import json, sys
seen = set()
def emit(kind, name, path):
    if (kind, name) in seen:
        sys.exit(f"device-bundle: two {kind} executables named {name}")
    seen.add((kind, name))
    print(kind, name, path)
for fname, want_test in ((sys.argv[1], True), (sys.argv[2], False)):
    for line in open(fname):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        t = m["target"]
        if not m["profile"]["test"] == want_test:
            continue
        kinds = t["kind"]
        if want_test:
            if "lib" in kinds or "rlib" in kinds:
                emit("test", "lib", m["executable"])
            elif "test" in kinds:
                emit("test", t["name"], m["executable"])
            # unit tests of the binaries and benches are not bundled
        elif "bin" in kinds:
            emit("bin", t["name"], m["executable"])
EOF

rm -rf "$DEV"
mkdir -p "$DEV/tests" "$DEV/ptx"
# Test executables with no GPU test (they run in CI) stay here: the bundle must fit the transfer.
CPU_ONLY_TESTS=" ${SAGE_BUNDLE_CPU_ONLY:-cpu_reference cpu_pv8 cpu_varlen module_graph smem_layout tensor_validation} "
while read -r kind name path; do
    [[ "$kind" == test && "$CPU_ONLY_TESTS" == *" $name "* ]] && continue
    case "$kind" in
        test) dest="$DEV/tests/$name" ;;
        bin) dest="$DEV/$name" ;;
    esac
    cp "$path" "$dest"
    # debug info out, symbols kept (readable backtraces)
    strip --strip-debug "$dest" 2>/dev/null || echo "device-bundle: warning: could not strip $dest" >&2
done < "$tmp/list"
[[ "$MINIMAL" == 1 ]] || ls "$DEV"/tests/* >/dev/null 2>&1 || die "no test executables were found in cargo's output"

# The PTX the binaries embed: build.rs's OUT_DIR of this release build.
out_dir="$(python3 scripts/ptx-out-dir.py "$tmp/tests.json" "$tmp/bins.json")"
[[ -n "$out_dir" && -f "$out_dir/sage_sm80.ptx" ]] || die "build.rs's OUT_DIR not found in cargo's output"
for f in sage_sm80.ptx sage_sm90a.ptx sage_sm89.ptx; do
    [[ -s "$out_dir/$f" ]] || die "$out_dir/$f is empty or missing"
    # The binaries embed them; the copies (for ncu / cuobjdump there) only with SAGE_BUNDLE_PTX=1.
    [[ "${SAGE_BUNDLE_PTX:-0}" == 1 ]] && cp "$out_dir/$f" "$DEV/ptx/$f"
done
cp scripts/device-run.sh "$DEV/device-run.sh"
chmod +x "$DEV/device-run.sh"

# The Python wheel (abi3, maturin; embeds the same PTX), run there by scripts/device-python.sh:
#   run(command="bash scripts/device-python.sh", carry=[".device"])
if [[ "$MINIMAL" != 1 && -z "$ONLY_TESTS" ]]; then
echo "device-bundle: python wheel (python/build-wheel.sh)" >&2
bash python/build-wheel.sh --test-deps "$DEV/wheels" > /dev/null || die "building the Python wheel failed"
echo "device-bundle: the wheel's tests: run(command=\"bash scripts/device-python.sh\", carry=[\".device\"])" >&2
fi

{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "rustc (host): $(rustc -V)"
    (cd "$DEV" && find . -type f ! -name MANIFEST -printf '%s %p\n' | sort -k2)
} > "$DEV/MANIFEST"

size_kib=$(du -sk "$DEV" | cut -f1)
max_mib="${SAGE_BUNDLE_MAX_MIB:-56}"
echo "device-bundle: $DEV is $((size_kib / 1024)) MiB:" >&2
(cd "$DEV" && find . -type f -printf '  %10s  %p\n' | sort -k2) >&2
if ((size_kib > max_mib * 1024)); then
    # Every test executable embeds both PTX modules as text: xz takes the bundle to about a tenth.
    # Carry .devpack instead and unpack there: run(command="bash .devpack/unpack.sh && ...").
    command -v xz >/dev/null 2>&1 || die "$DEV is $((size_kib / 1024)) MiB, over $max_mib MiB, and xz is missing"
    rm -rf .devpack && mkdir -p .devpack
    tar -cJf .devpack/device.tar.xz "$DEV"
    printf '#!/usr/bin/env bash\n# Unpacks .device/ from the compressed bundle (scripts/device-bundle.sh).\nset -e\ncd "$(dirname "$0")/.."\nrm -rf .device && tar -xJf .devpack/device.tar.xz\n' > .devpack/unpack.sh
    packed_kib=$(du -sk .devpack | cut -f1)
    ((packed_kib <= max_mib * 1024)) || die ".devpack is $((packed_kib / 1024)) MiB even compressed"
    echo "device-bundle: $DEV is over $max_mib MiB: packed into .devpack ($((packed_kib / 1024)) MiB); carry it: run(command=\"bash .devpack/unpack.sh && bash .device/device-run.sh\", carry=[\".devpack\"])" >&2
    exit 0
fi
if [[ "$MINIMAL" == 1 ]]; then
    echo "device-bundle: ready (minimal: bench and sageattn only); e.g. run(command=\"bash scripts/compare.sh\", carry=[\".device\", \".whl\", \".peers\"])" >&2
else
    echo "device-bundle: ready; run it with: run(command=\"bash .device/device-run.sh\", carry=[\".device\"])" >&2
fi
