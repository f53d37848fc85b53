#!/usr/bin/env bash
# The objc-syntax check (called by scripts/check-patch.sh): parses upstream .mm files as
# Objective-C++ before and after the patch, with Debian's clang, against
#   - the tree's own headers first (the wheel's headers, patched or not, plus the patch's new ones),
#   - the macOS wheel's other ATen/mps and ATen/native/mps headers,
#   - the Linux torch's c10/ATen headers of the same version,
#   - our Apple stub headers (checks/mps/apple-stubs/).
# Passes when no file has an error, before or after, and the patch adds no -Wall -Wextra warning
# (warnings compared per file as text without line numbers, so moved lines do not count as new).
#
# Usage: objc-syntax.sh VERSION BASE_TREE PATCHED_TREE WHEEL_INCLUDE TORCH_INCLUDE FILE...
# Installs Debian's clang when no clang++ is found (apt-get; quick when already installed).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STUBS="$HERE/apple-stubs"
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

# compile TREE FILE: prints "error|warning<TAB>file<TAB>message" lines, one per diagnostic.
compile() {
  local tree="$1" f="$2"
  "$CLANG" -fsyntax-only -x objective-c++ -std=c++17 -fblocks -fobjc-runtime=gnustep-2.0 \
    -Wall -Wextra -include "$STUBS/apple-compat.h" -isystem "$STUBS" \
    -I"$tree/aten/src" -isystem "$WHEEL_INC" -isystem "$TORCH_INC" -isystem "$TORCH_INC/torch/csrc/api/include" \
    "$tree/$f" 2>&1 | sed -n "s#^$tree/\([^:]*\):[0-9]*:[0-9]*: \(error\|fatal error\|warning\): #\2\t\1\t#p" || true
}

errors=0 new=0 before_w=0 after_w=0 report=""
for f in "$@"; do
  b="$(compile "$BASE" "$f")"; a="$(compile "$PATCHED" "$f")"
  be="$(grep -c '^\(error\|fatal error\)' <<<"$b" || true)"; ae="$(grep -c '^\(error\|fatal error\)' <<<"$a" || true)"
  bw="$(grep -c '^warning' <<<"$b" || true)"; aw="$(grep -c '^warning' <<<"$a" || true)"
  before_w=$((before_w + bw)); after_w=$((after_w + aw))
  if [ "$be" != 0 ] || [ "$ae" != 0 ]; then
    errors=$((errors + be + ae))
    report+="$f: $be errors before, $ae after: $(grep -m 2 'error' <<<"$a$b" | tr '\t\n' '  ')"$'\n'
  fi
  # warnings the patch adds: in the patched list more often than in the base list
  added="$(comm -13 <(grep '^warning' <<<"$b" | sort) <(grep '^warning' <<<"$a" | sort) || true)"
  if [ -n "$added" ]; then
    new=$((new + $(wc -l <<<"$added")))
    report+="$f: new warnings: $(head -n 3 <<<"$added" | tr '\t\n' '  ')"$'\n'
  fi
done
printf '%s' "$report"
version="$("$CLANG" --version | head -n 1)"
if [ "$errors" = 0 ] && [ "$new" = 0 ]; then
  echo "$# .mm files ($(for f in "$@"; do basename "$f"; done | tr '\n' ' '| sed 's/ $//')) parse before and after the patch: 0 errors, $before_w -> $after_w -Wall -Wextra warnings, 0 new ($version, Apple stubs)"
else
  echo "$errors errors, $new new warnings ($version)"
  exit 1
fi
