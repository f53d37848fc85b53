#!/usr/bin/env bash
# Builds the mps-emu runtime and its self-test under ThreadSanitizer and under AddressSanitizer,
# runs each with a watchdog (timeout 120 s), and prints
#   PASS mpsemu-selftest: <n> checks (tsan), <n> checks (asan)
# or the failing checks. Any ThreadSanitizer report in the test process itself fails the run
# (halt_on_error); the children that must provoke one are checked separately.
#
# Usage: selftest.sh [BUILD_DIR]   (default: a fresh temporary directory)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${1:-$(mktemp -d)}"
summary=()
for mode in tsan asan; do
  out="$BUILD/$mode"
  "$HERE/build.sh" "$out" "$mode" >/dev/null
  # shellcheck disable=SC1091
  . "$out/flags.txt"
  # shellcheck disable=SC2086
  clang++ $MPSEMU_OBJCXXFLAGS -Wall -Wno-unused-parameter "$HERE/selftest.mm" -o "$out/selftest" $MPSEMU_LDFLAGS
  log="$out/selftest.log"
  rc=0
  TSAN_OPTIONS="halt_on_error=1 exitcode=66" ASAN_OPTIONS="detect_leaks=1" LSAN_OPTIONS="$MPSEMU_LSAN_OPTIONS" \
    timeout 120 "$out/selftest" >"$log" 2>&1 || rc=$?
  n="$(grep -c '^ok ' "$log" || true)"
  if [ "$rc" != 0 ] || grep -q '^FAIL' "$log" || grep -qE '^(WARNING: ThreadSanitizer|==[0-9]+==ERROR: |SUMMARY: )' "$log"; then
    cat "$log"
    [ "$rc" = 124 ] && echo "FAIL mpsemu-selftest ($mode): watchdog expired after 120 s"
    echo "FAIL mpsemu-selftest ($mode): exit $rc, $n checks passed"
    exit 1
  fi
  summary+=("$n checks ($mode)")
done
echo "PASS mpsemu-selftest: ${summary[0]}, ${summary[1]}"
