#!/usr/bin/env bash
# The main job: set up, build, prove which libtorch is loaded (preflight), then run a short
# inference benchmark of the built-in small MLP on the best device found (CUDA if present, else CPU).
# Arguments after the script name are passed to `tch-streams run` (see `tch-streams run --help`).
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
build_tch_streams
"$BIN" preflight
echo
if "$BIN" run --help >/dev/null 2>&1; then
  exec "$BIN" run --device auto --duration 3 "$@"
fi
