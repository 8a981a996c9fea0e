#!/usr/bin/env bash
# A/B timing of bench binaries on the GPU machine, in one process run of this script: each binary
# runs the same bench arguments in turn, the whole round twice (A B, then B A, so drift and the
# position in a round hit all of them alike), and the table gives each case's best TOPS per
# binary, its ratio to the first, and the case's spread between rounds (how much of a ratio is
# noise).
#
#   run(command="bash scripts/device-ab.sh main=.devpack/bench-main branch=.device/bench \
#                -- --head-dims 64,128 --seq-lens 2048,16384 --causal both --paths both",
#       carry=[".devpack"])
#
# Arguments: NAME=PATH for each binary (the first is the baseline), then `--`, then the bench's
# arguments (`--json`, `-q` and `--no-check` are added). `NAME=PATH+ARG+ARG…` adds arguments for
# that binary only (e.g. `full=.device/bench+--no-compact compact=.device/bench`: one binary,
# two settings). Output: the table on stdout and in
# $OUT/ab.txt; each run's JSON stays in /tmp (only the table comes back, the device tool returns
# few files). Environment: OUT (default ./.device-out), ROUNDS (default 2), AB_TIMEOUT (seconds
# per bench run, default 150).
set -uo pipefail

names=()
paths=()
extra=()
while (($#)) && [[ "$1" != -- ]]; do
    [[ "$1" == *=* ]] || { echo "device-ab: expected NAME=PATH, got '$1'" >&2; exit 2; }
    names+=("${1%%=*}")
    spec="${1#*=}"
    paths+=("${spec%%+*}")
    # The binary's own arguments, `+`-separated after its path ("" when none).
    [[ "$spec" == *+* ]] && extra+=("${spec#*+}") || extra+=("")
    shift
done
[[ "${1:-}" == -- ]] && shift
((${#names[@]} >= 2)) || { echo "device-ab: give at least two NAME=PATH binaries" >&2; exit 2; }
for p in "${paths[@]}"; do
    [[ -x "$p" ]] || { echo "device-ab: $p is not an executable" >&2; exit 2; }
done

OUT="${OUT:-$PWD/.device-out}"
mkdir -p "$OUT"
work="$(mktemp -d /tmp/device-ab.XXXXXX)"
t0=$SECONDS
# Even rounds run the binaries in reverse order (A B, B A, A B, …): a binary that always ran first
# in its round would always meet the GPU a little cooler than the next one, and best-of-rounds
# would favour it.
order=("${!names[@]}")
reverse=()
for ((j = ${#order[@]} - 1; j >= 0; j--)); do reverse+=("${order[$j]}"); done
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
    if ((round % 2 == 0)); then
        this_round=("${reverse[@]}")
    else
        this_round=("${order[@]}")
    fi
    for i in "${this_round[@]}"; do
        json="$work/${names[$i]}.$round.json"
        own=()
        [[ -n "${extra[$i]}" ]] && IFS=+ read -r -a own <<< "${extra[$i]}"
        timeout "${AB_TIMEOUT:-150}" "${paths[$i]}" "${own[@]}" "$@" -q --no-check --json "$json" \
            > "$work/${names[$i]}.$round.log" 2>&1
        echo "device-ab: ${names[$i]} round $round: exit $? ($((SECONDS - t0)) s)"
    done
done

python3 - "$work" "${names[@]}" <<'EOF' | tee "$OUT/ab.txt"
import glob, json, os, sys

work, names = sys.argv[1], sys.argv[2:]
rounds = {}  # (head_dim, seq_len, causal, path) -> {name: [TOPS of each round]}
for name in names:
    for f in sorted(glob.glob(os.path.join(work, f"{name}.*.json"))):
        try:
            cases = json.load(open(f))["cases"]
        except (OSError, ValueError, KeyError) as e:
            print(f"device-ab: {f}: {e}")
            continue
        for c in cases:
            for path in ("kernel", "full"):
                if c.get(path):
                    key = (c["head_dim"], c["seq_len"], int(bool(c.get("causal"))), path)
                    rounds.setdefault(key, {}).setdefault(name, []).append(c[path]["tops"])
base = names[0]
# spread%: the largest (best - worst) / best of one binary's rounds in that case: a ratio to the
# baseline within it is noise (an A/A run measures the same thing directly).
print("d      N  causal  path    " + "".join(f"{n:>10}" for n in names)
      + "".join(f"{n + '/' + base:>16}" for n in names[1:]) + f"{'spread%':>9}")
for (d, n, causal, path), got in sorted(rounds.items()):
    best = {x: max(v) for x, v in got.items()}
    spread = max((100.0 * (max(v) - min(v)) / max(v) for v in got.values() if max(v) > 0),
                 default=0.0)
    row = f"{d:<4}{n:>7}  {causal:>6}  {path:<6}"
    row += "".join(f"{best.get(x, 0.0):>10.1f}" for x in names)
    ref = best.get(base, 0.0)
    row += "".join(f"{(best.get(x, 0.0) / ref if ref else 0.0):>16.3f}" for x in names[1:])
    print(row + f"{spread:>9.1f}")
EOF
