#!/usr/bin/env bash
# Builds tch-streams if needed and runs `tch-streams preflight`, passing through its arguments:
#   scripts/preflight.sh                      # report; exit 0 when the loaded libtorch is the built one
#   scripts/preflight.sh --require cuda-pool  # also require a working CUDA stream pool (exit 3 if not)
#   scripts/preflight.sh --json
# Exit codes are preflight's: 0 ok, 2 libtorch mismatch, 3 missing capability, 1 other failure.
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
build_tch_streams
exec "$BIN" preflight "$@"
