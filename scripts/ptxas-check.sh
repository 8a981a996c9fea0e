#!/usr/bin/env bash
# Assembles the three PTX modules with ptxas -v and checks every kernel for local memory use.
#
#   bash scripts/ptxas-check.sh [PORTABLE.ptx [HOPPER.ptx [FP8.ptx]]]
#
# Without arguments it takes the newest sage_sm80.ptx / sage_sm90a.ptx / sage_sm89.ptx under
# target/*/build/sageattention-*/out/ (what build.rs wrote). The portable module is assembled for
# sm_80, sm_86, sm_89 and sm_90, the Hopper module for sm_90a, the FP8 module for sm_89 (Ada) and
# sm_90 (what the driver JIT-compiles on Hopper). The FP8 module's sm_90 spills are listed but do
# not fail the check: Hopper has no e4m3 mma.sync (ptxas emulates it with F2FP + HMMA, which needs
# more registers; its f32-accumulator d = 128 entries spill 16-28 bytes there, none on sm_89: values
# stored before the main loop and reloaded after it, none inside), and that path exists for testing
# the Ada kernel on the H200, not for speed (docs/perf-notes.md, "FP8 P·V on Ada"). Prints, per kernel and architecture,
# registers / stack frame bytes / spill store bytes / spill load bytes (and shared memory), and
# exits non-zero if any kernel has a stack frame or spills, if ptxas rejects a module, or if a
# module has no kernel.
#
# ptxas: $PTXAS, else `ptxas` on PATH, else the one scripts/setup-toolchain.sh installs
# (${SAGE_PTX_TOOLS_DIR:-~/.cache/sage-ptx-tools}/bin/ptxas).
set -euo pipefail

die() { echo "ptxas-check: error: $*" >&2; exit 2; }

cd "$(dirname "$0")/.."

PORTABLE_ARCHS=(sm_80 sm_86 sm_89 sm_90)
HOPPER_ARCHS=(sm_90a)
FP8_ARCHS=(sm_89 sm_90)

ptxas="${PTXAS:-}"
if [[ -z "$ptxas" ]]; then
    if command -v ptxas >/dev/null 2>&1; then
        ptxas="$(command -v ptxas)"
    else
        ptxas="${SAGE_PTX_TOOLS_DIR:-${HOME:-/root}/.cache/sage-ptx-tools}/bin/ptxas"
    fi
fi
[[ -x "$ptxas" ]] || die "ptxas not found (tried \$PTXAS, PATH, $ptxas): run 'bash scripts/setup-toolchain.sh'"

newest() {
    # newest file named $1 under target/*/build/sageattention-*/out (also target/<triple>/<profile>)
    local f
    f="$(find target -path '*/build/sageattention-*/out/'"$1" -type f -printf '%T@ %p\n' 2>/dev/null \
        | sort -rn | head -1 | cut -d' ' -f2-)"
    [[ -n "$f" ]] || die "no $1 under target/*/build/sageattention-*/out/: build first (cargo build), or pass the paths"
    echo "$f"
}

portable="${1:-}"
hopper="${2:-}"
fp8="${3:-}"
[[ -n "$portable" ]] || portable="$(newest sage_sm80.ptx)"
[[ -n "$hopper" ]] || hopper="$(newest sage_sm90a.ptx)"
[[ -n "$fp8" ]] || fp8="$(newest sage_sm89.ptx)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

status=0
rows="$tmp/rows"   # module arch kernel regs stack spill_st spill_ld smem
: > "$rows"

check_module() {
    local name="$1" file="$2"; shift 2
    [[ -f "$file" ]] || die "$file does not exist"
    if [[ ! -s "$file" ]]; then
        echo "ptxas-check: $name module $file is EMPTY (built with SAGE_SKIP_PTX=1?)" >&2
        status=1
        return
    fi
    echo "$name module: $file ($(grep -m1 '^\.version' "$file" | tr -s ' \t' ' '), $(grep -m1 '^\.target' "$file" | tr -s ' \t' ' '), $(grep -c '\.entry ' "$file") entries)"
    local arch log
    for arch in "$@"; do
        log="$tmp/$name.$arch.log"
        if ! "$ptxas" -arch="$arch" -v -o "$tmp/out.cubin" "$file" > "$log" 2>&1; then
            echo "ptxas-check: ptxas -arch=$arch REJECTED $file:" >&2
            grep -v '^ptxas info' "$log" | head -40 >&2
            status=1
            continue
        fi
        # warnings (e.g. C7511 'wgmma serialized') are shown, not failed on
        grep -E 'warning' "$log" | sed "s/^/  [$arch] /" || true
        awk -v mod="$name" -v arch="$arch" '
            /Compiling entry function/ { match($0, /'"'"'[^'"'"']*'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2); entry[fn] = 1 }
            /Function properties for/ { cur = $NF; sub(/:$/, "", cur) }
            /bytes stack frame/ {
                for (i = 1; i <= NF; i++) {
                    if ($(i+1) == "bytes" && $(i+2) == "stack") st[cur] = $i
                    if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /^stores/) ss[cur] = $i
                    if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /^loads/) sl[cur] = $i
                }
            }
            /Used [0-9]+ registers/ {
                for (i = 1; i <= NF; i++) {
                    if ($i == "Used") regs[cur] = $(i+1)
                    if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem[cur] = $i
                }
            }
            END {
                for (f in regs) {
                    kind = (f in entry) ? f : f " (.func)"
                    printf "%s %s %s %d %d %d %d %d\n", mod, arch, kind, regs[f], st[f], ss[f], sl[f], smem[f]
                }
            }' "$log" | sed 's/ (\.func)/(.func)/' >> "$rows"
    done
}

check_module portable "$portable" "${PORTABLE_ARCHS[@]}"
check_module hopper "$hopper" "${HOPPER_ARCHS[@]}"
check_module fp8 "$fp8" "${FP8_ARCHS[@]}"

# One line per kernel: regs/stack/spill-stores/spill-loads for each arch, then smem (first arch).
print_table() {
    local mod="$1"; shift
    local archs="$*"
    grep -q "^$mod " "$rows" || return 0
    echo
    echo "$mod module: cells are regs/stack/spill-st/spill-ld (bytes); smem = static shared bytes"
    sort -k3,3 -k2,2 "$rows" | awk -v mod="$mod" -v archs="$archs" '
        $1 != mod { next }
        { k = $3; if (!(k in seen)) { seen[k] = 1; order[n++] = k }
          cell[k, $2] = $4 "/" $5 "/" $6 "/" $7; if (!(k in smem)) smem[k] = $8
          if (($5 > 0 || $6 > 0 || $7 > 0) && !(mod == "fp8" && $2 == "sm_90")) bad[k] = 1 }
        END {
            na = split(archs, a, " ")
            w = 6; for (i = 0; i < n; i++) if (length(order[i]) > w) w = length(order[i])
            printf "  %-" w "s", "kernel"; for (j = 1; j <= na; j++) printf "  %-14s", a[j]; printf "  %s\n", "smem"
            for (i = 0; i < n; i++) {
                k = order[i]; printf "  %-" w "s", k
                for (j = 1; j <= na; j++) printf "  %-14s", ((k, a[j]) in cell) ? cell[k, a[j]] : "-"
                printf "  %s%s\n", smem[k], (k in bad) ? "   <-- LOCAL MEMORY" : ""
            }
        }'
}
print_table portable "${PORTABLE_ARCHS[@]}"
print_table hopper "${HOPPER_ARCHS[@]}"
print_table fp8 "${FP8_ARCHS[@]}"

for mod in portable hopper fp8; do
    if [[ -s "$rows" ]] && ! grep -q "^$mod " "$rows" && [[ $status == 0 ]]; then
        echo "ptxas-check: the $mod module has no kernel" >&2
        status=1
    fi
done
tolerated="$(awk '$1 == "fp8" && $2 == "sm_90" && ($5 > 0 || $6 > 0 || $7 > 0)' "$rows")"
if [[ -n "$tolerated" ]]; then
    echo
    echo "ptxas-check: note: FP8 module on sm_90 (emulated e4m3 mma, test path only), spills tolerated:"
    echo "$tolerated" | sed 's/^/  /'
fi
bad="$(awk '!($1 == "fp8" && $2 == "sm_90") && ($5 > 0 || $6 > 0 || $7 > 0)' "$rows")"
if [[ -n "$bad" ]]; then
    echo >&2
    echo "ptxas-check: FAIL: kernels with a stack frame or spills (module arch kernel regs stack spill-st spill-ld smem):" >&2
    echo "$bad" | sed 's/^/  /' >&2
    status=1
fi
if [[ $status == 0 ]]; then
    echo
    if [[ -n "$tolerated" ]]; then
        echo "ptxas-check: OK ($(awk '{print $3}' "$rows" | sort -u | wc -l) kernels, no stack frame, no spills but the FP8 module's on sm_90 above)"
    else
        echo "ptxas-check: OK ($(awk '{print $3}' "$rows" | sort -u | wc -l) kernels, no stack frame, no spills)"
    fi
fi
exit "$status"
