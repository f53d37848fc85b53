#!/usr/bin/env bash
# The project's test command (CI runs exactly this, on a machine without a GPU):
#   1. setup (venv with torch 2.13.0, libclang) — quick when already done;
#   2. preflight: prove the tests will run on the libtorch they were built against;
#   3. cargo test --workspace (release profile, shared with the other scripts): the library, the
#      CLI, and the example apps, which depend on the library exactly as a user's crate does;
#   4. the example apps run as a user runs them (no LD_LIBRARY_PATH), output shown;
#   5. libtorch 2.11.0 / tch 0.24: the library's tests and the examples again (scripts/compat.sh);
#      TCH_STREAMS_COMPAT=0 skips this step; the shim is also compiled against 2.12.0's headers;
#   6. the scripts' own tests: the serving comparison's report on a made-up run
#      (scripts/serve-perf/test_report.py) and its records (test_records.py), the patch and lock
#      parser (scripts/patchtools/test_patchtools.py), no here-document over 10 lines (heredocs.py);
#   7. the library as published: `cargo publish -p tch-streams --dry-run` packages it and builds
#      the package on its own (nothing outside crates/tch-streams reaches it), timed;
#   8. the library's docs as docs.rs builds them: feature doc-only, no libtorch in reach, every
#      rustdoc warning (broken intra-doc links included) an error, timed;
#   9. static checks of the MPS patch (scripts/check-patch.sh).
# GPU tests are #[ignore]d here; run them on a GPU machine with `cargo test --release -- --include-ignored`.
# Extra arguments go to cargo test, e.g. `scripts/test.sh stream_` to filter.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
step() { printf '\n==> %s\n' "$*"; }
START=$(date +%s)

step "setup"
scripts/setup.sh >/dev/null
eval "$(scripts/setup.sh --print-env)"

step "preflight (libtorch $TCH_STREAMS_TORCH)"
scripts/preflight.sh

step "cargo test --workspace (libtorch $TCH_STREAMS_TORCH)"
cargo test --release --workspace "$@"

step "example apps, run as a user runs them (no LD_LIBRARY_PATH)"
FIX="$TCH_STREAMS_HOME/fixtures-$TCH_STREAMS_TORCH"
python3 scripts/fixtures/make_models.py "$FIX" >/dev/null
env -u LD_LIBRARY_PATH "$CARGO_TARGET_DIR/release/serve-torchscript" "$FIX/mlp.pt" --device cpu --threads 4 --requests 50 --workers 2
env -u LD_LIBRARY_PATH "$CARGO_TARGET_DIR/release/streams-demo" --device cpu --pairs 2 --rounds 10

step "shim against libtorch 2.12.0 headers (tch 0.25)"
scripts/check-shim.sh 2.12.0

if [ "${TCH_STREAMS_COMPAT:-1}" != 0 ]; then
  step "libtorch 2.11.0 / tch 0.24: library tests and examples"
  scripts/compat.sh 2.11.0 "$@"
fi

step "scripts: serving comparison report, patch parser, here-documents"
python3 scripts/serve-perf/test_report.py
python3 scripts/serve-perf/test_records.py
python3 scripts/patchtools/test_patchtools.py
python3 scripts/heredocs.py --max 10 >/dev/null

step "the published crate: cargo publish -p tch-streams --dry-run (libtorch $TCH_STREAMS_TORCH)"
# Packages the library and builds the package alone, in the warm target dir (dev profile).
# --allow-dirty: CI's checkout is clean; locally this checks work in progress. The packaged crate
# is its own workspace, so the workspace's sha2 opt-level (the build record hashes ~450 MB) is
# passed in here.
T0=$(date +%s)
cargo publish -p tch-streams --dry-run --allow-dirty --config 'profile.dev.package.sha2.opt-level=3'
echo "publish dry-run: $(( $(date +%s) - T0 )) s"

step "docs as docs.rs builds them (doc-only, no libtorch in reach, warnings are errors)"
# No LIBTORCH, no LIBTORCH_USE_PYTORCH, no venv on PATH: nothing could find a libtorch. Its own
# target dir, so the main build's stays warm.
T0=$(date +%s)
NO_VENV_PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v "^$TCH_STREAMS_HOME/venv-" | paste -sd: -)
env -u LIBTORCH -u LIBTORCH_USE_PYTORCH -u LD_LIBRARY_PATH PATH="$NO_VENV_PATH" DOCS_RS=1 \
  RUSTDOCFLAGS="-D warnings -D rustdoc::broken-intra-doc-links" CARGO_TARGET_DIR="$TCH_STREAMS_HOME/target-docs" \
  cargo doc -p tch-streams --no-deps --features doc-only
echo "docs (doc-only): $(( $(date +%s) - T0 )) s"

step "the command line's internal docs (warnings and broken links are errors)"
T0=$(date +%s)
RUSTDOCFLAGS="-D warnings -D rustdoc::broken-intra-doc-links" cargo doc -p tch-streams-cli --no-deps --document-private-items
echo "docs (command line): $(( $(date +%s) - T0 )) s"

if [ -x scripts/check-patch.sh ]; then
  # Last: the header check compiles against Linux torch 2.11.0 (the venv compat.sh set up).
  step "MPS patch static checks"
  scripts/check-patch.sh
fi
step "all tests passed ($(( $(date +%s) - START )) s)"
