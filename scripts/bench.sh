#!/usr/bin/env bash
# Benchmark harness: set up, build, then sweep threads x modes x workloads with the Python
# PyTorch peer side by side (the venv from setup has torch); writes JSON, CSV and a PNG to results/.
# Arguments are passed to `tch-streams bench` (see `tch-streams bench --help`), e.g.:
#   scripts/bench.sh --quick                    short CPU-sized sweep (threads 1,2; about a minute)
#   scripts/bench.sh --device cuda:0            full sweep on the first GPU
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
build_tch_streams
exec "$BIN" bench --with-python "$@"
