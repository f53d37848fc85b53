#!/usr/bin/env bash
# The project's test command (CI runs exactly this, on a machine without a GPU):
#   1. setup (venv with torch 2.11.0, libclang) — quick when already done;
#   2. preflight: prove the tests will run on the libtorch they were built against;
#   3. static checks of the MPS patch, when present (scripts/check-patch.sh);
#   4. cargo test (release profile, shared with the other scripts so nothing builds twice).
# GPU tests are #[ignore]d here; run them on a GPU machine with `cargo test --release -- --include-ignored`.
# Extra arguments go to cargo test, e.g. `scripts/test.sh stream_` to filter.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
step() { printf '\n==> %s\n' "$*"; }

step "setup"
scripts/setup.sh >/dev/null
eval "$(scripts/setup.sh --print-env)"

step "preflight"
scripts/preflight.sh

if [ -x scripts/check-patch.sh ]; then
  step "MPS patch static checks"
  scripts/check-patch.sh
fi

step "cargo test"
cargo test --release "$@"
step "all tests passed"
