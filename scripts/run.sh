#!/usr/bin/env bash
# The main job: set up, build, prove which libtorch is loaded (preflight), then run a short
# inference benchmark of the built-in small MLP on the best device found (CUDA if present, else CPU).
# Arguments after the script name are passed to `tch-streams run` (see `tch-streams run --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
scripts/setup.sh >/dev/null
eval "$(scripts/setup.sh --print-env)"
cargo build --release --quiet --bin tch-streams
BIN="$CARGO_TARGET_DIR/release/tch-streams"
"$BIN" preflight
echo
if "$BIN" run --help >/dev/null 2>&1; then
  exec "$BIN" run --device auto --duration 3 "$@"
fi
