#!/usr/bin/env bash
# Serving comparison on a GPU (perf_analyzer against `tch-streams serve`, PyTriton and the
# in-process engine): scripts/serve-perf/serve_perf.py does the work; see `scripts/serve-perf.sh --help`.
#   scripts/serve-perf.sh pack|run|report ...
exec python3 "$(dirname "$0")/serve-perf/serve_perf.py" "$@"
