#!/usr/bin/env bash
# Benchmark harness: set up, build, then sweep threads x modes x workloads with the Python
# PyTorch peer side by side (the venv from setup has torch); writes JSON, CSV and a PNG to results/.
# Arguments are passed to `tch-streams bench` (see `tch-streams bench --help`), e.g.:
#   scripts/bench.sh --quick                    short CPU-sized sweep (threads 1,2; about a minute)
#   scripts/bench.sh --device cuda:0            full sweep on the first GPU
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
scripts/setup.sh >/dev/null
eval "$(scripts/setup.sh --print-env)"
cargo build --release --quiet --bin tch-streams
exec "$CARGO_TARGET_DIR/release/tch-streams" bench --with-python "$@"
