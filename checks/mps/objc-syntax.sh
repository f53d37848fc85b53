#!/usr/bin/env bash
# The objc-syntax check (called by scripts/check-patch.sh): parses upstream .mm files as
# Objective-C++ before and after the patch, with Debian's clang, against
#   - the tree's own headers first (the wheel's headers, patched or not, plus the patch's new ones),
#   - the macOS wheel's other ATen/mps and ATen/native/mps headers,
#   - the Linux torch's c10/ATen headers of the same version,
#   - the emulator's Apple headers (checks/mps/emu/runtime/include/, GCC's Objective-C runtime;
#     the same headers mps-emu compiles and runs these files with).
# Every diagnostic clang prints counts, wherever it is located: in the tree, in a header outside it
# (wheel, Linux torch, stubs, system), or from the driver ("clang: error: ..."). Passes when clang
# exits 0 and reports no error for any file, before or after, and the patch adds no -Wall -Wextra
# warning: warnings located in the tree are compared per file as text without line numbers (moved
# lines do not count as new); warnings located anywhere else must be identical before and after.
#
# Usage: objc-syntax.sh VERSION BASE_TREE PATCHED_TREE WHEEL_INCLUDE TORCH_INCLUDE FILE...
# Environment: OBJC_SYNTAX_EXTRA_FLAGS  extra clang flags (word-split), e.g. to show that a bad flag
#              or a missing include fails the check.
# Installs Debian's clang when no clang++ is found (apt-get; quick when already installed).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STUBS="$HERE/emu/runtime/include"
V="$1" BASE="$2" PATCHED="$3" WHEEL_INC="$4" TORCH_INC="$5"; shift 5

if [ -z "$TORCH_INC" ] || [ ! -d "$TORCH_INC/c10" ]; then
  echo "no Linux torch $V headers (TCH_STREAMS_TORCH=$V scripts/setup.sh makes the venv)"; exit 1
fi
CLANG="$(command -v clang++ || command -v clang++-14 || true)"
if [ -z "$CLANG" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[objc-syntax] installing Debian's clang (once)" >&2
  { $SUDO apt-get install -y -q clang >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q clang >/dev/null 2>&1; }; } || true
  CLANG="$(command -v clang++ || true)"
  [ -n "$CLANG" ] || { echo "clang++ is not installed and apt-get could not install it (apt-get install clang)"; exit 1; }
fi

# compile TREE FILE OUT: runs clang on TREE/FILE and writes every diagnostic it printed to OUT, one
# "KIND<TAB>WHERE<TAB>MESSAGE" line each (KIND error|warning; a fatal error counts as an error):
#   WHERE = "tree:PATH" for a location inside TREE (PATH relative to it, line numbers dropped, so that
#           lines the patch moves compare equal), "at:FILE:LINE:COL" for a location anywhere else
#           (headers outside the tree are the same before and after the patch), "clang" for driver
#           diagnostics ("clang: error: ...": unknown flag, missing file) and "crash" when clang
#           crashed. Also writes "status<TAB>N" (clang's exit status) and, when clang's own
#           "N warnings and M errors generated" total exceeds what was parsed, an "error" line saying so.
compile() {
  local tree="$1" f="$2" out="$3" raw="$3.raw" rc=0
  "$CLANG" -fsyntax-only -x objective-c++ -std=c++17 -fblocks -fobjc-runtime=gcc -fno-objc-arc -fconstant-string-class=NSConstantString \
    -Wall -Wextra -fno-color-diagnostics -fno-caret-diagnostics ${OBJC_SYNTAX_EXTRA_FLAGS:-} \
    -include "$STUBS/apple-compat.h" -isystem "$STUBS" \
    -I"$tree/aten/src" -isystem "$WHEEL_INC" -isystem "$TORCH_INC" -isystem "$TORCH_INC/torch/csrc/api/include" \
    "$tree/$f" >"$raw" 2>&1 || rc=$?
  python3 "$(dirname "$0")/clang_diagnostics.py" "$tree" "$raw" "$rc" >"$out"
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
errors=0 new=0 before_w=0 after_w=0 before_out=0 failed_status=0 report="" i=0
for f in "$@"; do
  i=$((i + 1))
  compile "$BASE" "$f" "$WORK/$i.b"; compile "$PATCHED" "$f" "$WORK/$i.a"
  b="$(cat "$WORK/$i.b")"; a="$(cat "$WORK/$i.a")"
  bs="$(sed -n 's/^status\t//p' <<<"$b")"; as="$(sed -n 's/^status\t//p' <<<"$a")"
  be="$(grep -c '^error' <<<"$b" || true)"; ae="$(grep -c '^error' <<<"$a" || true)"
  bw="$(grep -c '^warning' <<<"$b" || true)"; aw="$(grep -c '^warning' <<<"$a" || true)"
  before_w=$((before_w + bw)); after_w=$((after_w + aw))
  before_out=$((before_out + $(grep -c $'^warning\t\\(at:\\|clang\\)' <<<"$b" || true)))
  if [ "$be" != 0 ] || [ "$ae" != 0 ]; then
    errors=$((errors + be + ae))
    report+="$f: $be errors before, $ae after: $(grep -m 2 '^error' <<<"$a"$'\n'"$b" | cut -f2- | tr '\t\n' '  ')"$'\n'
  fi
  if [ "$bs" != 0 ] || [ "$as" != 0 ]; then
    failed_status=1
    report+="$f: clang exit status $bs before, $as after: $(cat "$WORK/$i.b.raw" "$WORK/$i.a.raw" | tail -n 2 | tr '\n' ' ')"$'\n'
  fi
  # Warnings the patch adds: in the tree, in the patched list more often than in the base list
  # (locations without line numbers); anywhere else (headers outside the tree, the driver), the two
  # lists must be the same, since the patch does not change those files.
  added="$(comm -13 <(grep $'^warning\ttree:' <<<"$b" | sort) <(grep $'^warning\ttree:' <<<"$a" | sort) || true)"
  if [ -n "$added" ]; then
    new=$((new + $(wc -l <<<"$added")))
    report+="$f: new warnings: $(head -n 3 <<<"$added" | tr '\t\n' '  ')"$'\n'
  fi
  elsewhere="$(diff <(grep -v $'^warning\ttree:' <<<"$b" | grep '^warning' | sort) \
                    <(grep -v $'^warning\ttree:' <<<"$a" | grep '^warning' | sort) | grep '^[<>]' || true)"
  if [ -n "$elsewhere" ]; then
    new=$((new + $(wc -l <<<"$elsewhere")))
    report+="$f: warnings outside the tree differ before/after: $(head -n 3 <<<"$elsewhere" | tr '\t\n' '  ')"$'\n'
  fi
done
printf '%s' "$report"
version="$("$CLANG" --version | head -n 1)"
if [ "$errors" = 0 ] && [ "$new" = 0 ] && [ "$failed_status" = 0 ]; then
  echo "$# .mm files ($(for f in "$@"; do basename "$f"; done | tr '\n' ' '| sed 's/ $//')) parse before and after the patch: 0 errors, $before_w -> $after_w -Wall -Wextra warnings ($before_out of them outside the tree, unchanged), 0 new ($version, the emulator's Apple headers)"
else
  echo "$errors errors, $new new or changed warnings$([ "$failed_status" = 0 ] || echo ", clang exited nonzero") ($version)"
  exit 1
fi
