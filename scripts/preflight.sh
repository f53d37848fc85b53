#!/usr/bin/env bash
# Builds tch-streams if needed and runs `tch-streams preflight`, passing through its arguments:
#   scripts/preflight.sh                      # report; exit 0 when the loaded libtorch is the built one
#   scripts/preflight.sh --require cuda-pool  # also require a working CUDA stream pool (exit 3 if not)
#   scripts/preflight.sh --json
# Exit codes are preflight's: 0 ok, 2 libtorch mismatch, 3 missing capability, 1 other failure.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
scripts/setup.sh >/dev/null
eval "$(scripts/setup.sh --print-env)"
cargo build --release --quiet --bin tch-streams
exec "$CARGO_TARGET_DIR/release/tch-streams" preflight "$@"
