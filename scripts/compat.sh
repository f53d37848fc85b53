#!/usr/bin/env bash
# Builds and tests the library and the example apps against an older libtorch / tch pair, the way
# an app pinned to that tch would build us:
#   scripts/compat.sh 2.11.0    # tch 0.24 (the default run is 2.13.0 / tch 0.26)
#   scripts/compat.sh 2.12.0    # tch 0.25, when the registry has it
# It copies the tree (sources only, mtimes kept, so rebuilds stay incremental) to
# $TCH_STREAMS_HOME/compat-<version>/tree, pins tch and torch-sys there with `cargo update
# --precise` (the repository's own Cargo.lock is untouched), sets up that version's venv and
# target dir, and runs `cargo test` for tch-streams, serve-torchscript and streams-demo.
# Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  -h|--help|"") sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ]; exit $? ;;
esac
VERSION="$1"; shift
case "$VERSION" in
  2.11.0) TCH=0.24.0 ;;
  2.12.0) TCH=0.25.0 ;;
  2.13.0) TCH=0.26.0 ;;
  *) echo "compat.sh: unsupported libtorch $VERSION; expected 2.11.0, 2.12.0 or 2.13.0" >&2; exit 2 ;;
esac
ROOT="$PWD"
export TCH_STREAMS_TORCH="$VERSION"
unset CARGO_TARGET_DIR LIBTORCH_USE_PYTORCH
scripts/setup.sh >/dev/null
eval "$(scripts/setup.sh --print-env)"

TREE="$TCH_STREAMS_HOME/compat-$VERSION/tree"
mkdir -p "$TREE"
# Mirror the sources: tar keeps mtimes, so cargo sees unchanged files as unchanged.
find "$TREE" -mindepth 1 -maxdepth 1 ! -name Cargo.lock -exec rm -rf {} +
tar -C "$ROOT" --exclude=./target --exclude=./.git --exclude=./vendor/pytorch --exclude=./.gpu \
    --exclude=./.whl --exclude=./results -cf - . | tar -C "$TREE" -xpf -
cd "$TREE"
if ! grep -A1 '^name = "tch"$' Cargo.lock | grep -q "version = \"$TCH\""; then
  echo "[compat] pinning tch $TCH / torch-sys $TCH in the copy's Cargo.lock" >&2
  cargo update --quiet -p tch --precise "$TCH"
  grep -A1 '^name = "torch-sys"$' Cargo.lock | grep -q "version = \"$TCH\"" \
    || cargo update --quiet -p torch-sys --precise "$TCH"
fi
echo "[compat] libtorch $VERSION, $(grep -A1 '^name = "tch"$' Cargo.lock | tail -1 | tr -d ' ')" >&2
cargo test --release -p tch-streams -p serve-torchscript -p streams-demo "$@"
