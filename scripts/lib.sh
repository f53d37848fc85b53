# shellcheck shell=bash
# The opening shared by the scripts that build and run tch-streams (run.sh, bench.sh,
# preflight.sh, serve-demo.sh, multi-gpu.sh); sourced, never run:
#   . "$(dirname "$0")/lib.sh"   strict mode (set -euo pipefail), the repository root as the working
#                                directory, and -h/--help as the first argument: the caller's header
#                                comment printed (line 2 up to the first line that is not a comment, or
#                                a shellcheck directive),
#                                exit 0;
#   usage                        prints that header comment (for a caller that parses its own flags);
#   build_tch_streams            scripts/setup.sh (quiet), its environment, and the release build of
#                                the tch-streams binary; sets BIN to its path.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { awk 'NR == 1 { next } !/^#/ || /^# shellcheck / { exit } { sub(/^# ?/, ""); print }' "$0"; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
build_tch_streams() {
  scripts/setup.sh >/dev/null
  eval "$(scripts/setup.sh --print-env)"
  cargo build --release --quiet --bin tch-streams
  # shellcheck disable=SC2034  # BIN is the caller's
  BIN="$CARGO_TARGET_DIR/release/tch-streams"
}
