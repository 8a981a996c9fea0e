#!/usr/bin/env bash
# Builds the bench of other git revisions for an A/B on the GPU machine (scripts/device-ab.sh):
# each into .devab/NAME.xz (ignored; stripped, xz-compressed, about 2 MiB each), with an unpack
# script. The revisions build in detached worktrees under target/ab/ with a target directory of
# their own each, kept for the next time (a rebuild of the same name is incremental).
#
#   bash scripts/bundle-ab.sh main=main v28=portable-fast-softmax      # NAME=REV …
#   run(command="bash .devab/unpack.sh && bash scripts/device-ab.sh main=.devab/main \
#                v28=.devab/v28 top=.device/bench -- --portable …", carry=[".device", ".devab"])
#
# (.devab is separate from .devpack because scripts/device-bundle.sh rebuilds .devpack whole.)
# Environment: SAGE_AB_KEEP_WORKTREES=1 keeps the worktrees (default: removed after the build).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

die() { echo "bundle-ab: error: $*" >&2; exit 1; }
(($#)) || die "give NAME=REV pairs, e.g. main=main"
command -v xz >/dev/null 2>&1 || die "xz is needed"

mkdir -p .devab target/ab
manifest=.devab/MANIFEST
for spec in "$@"; do
    [[ "$spec" == *=* ]] || die "expected NAME=REV, got '$spec'"
    name="${spec%%=*}"
    rev="${spec#*=}"
    [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "NAME '$name': letters, digits, _ . - only"
    sha="$(git rev-parse --verify --quiet "$rev^{commit}")" || die "'$rev' is not a revision"
    wt="target/ab/wt-$name"
    git worktree remove --force "$wt" 2>/dev/null || rm -rf "$wt"
    git worktree prune
    git worktree add --quiet --detach "$wt" "$sha"
    echo "bundle-ab: $name = $rev (${sha:0:10}): cargo build --release --bin bench" >&2
    (cd "$wt" && CARGO_TARGET_DIR="$repo/target/ab/target-$name" cargo build --release --quiet --bin bench)
    cp "target/ab/target-$name/release/bench" ".devab/$name"
    strip --strip-debug ".devab/$name"
    rm -f ".devab/$name.xz"
    xz -T0 ".devab/$name"
    [[ "${SAGE_AB_KEEP_WORKTREES:-0}" == 1 ]] || git worktree remove --force "$wt"
    grep -v "^$name " "$manifest" 2>/dev/null > "$manifest.new" || true
    echo "$name ${sha:0:10} $rev $(stat -c %s ".devab/$name.xz") bytes" >> "$manifest.new"
    mv "$manifest.new" "$manifest"
done
cat > .devab/unpack.sh <<'SH'
#!/usr/bin/env bash
# Unpacks the A/B benches (scripts/bundle-ab.sh) next to their .xz files.
set -e
cd "$(dirname "$0")"
for f in *.xz; do xz -dkf "$f" && chmod +x "${f%.xz}"; done
cat MANIFEST
SH
chmod +x .devab/unpack.sh
echo "bundle-ab: .devab holds: $(cut -d' ' -f1 "$manifest" | tr '\n' ' ')($(du -sh .devab | cut -f1)); carry it with the bundle" >&2
