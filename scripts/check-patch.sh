#!/usr/bin/env bash
# Static checks of the MPS stream-pool patch (patches/), runnable on Linux; idempotent.
#
#   1. headers:  every header hunk of patches/tch-streams-mps-v2.11.0.patch applies to the exact
#                v2.11.0 headers shipped in PyPI's macOS arm64 torch==2.11.0 wheel (downloaded once
#                into the cache; the installer's TORCH_STABLE_ONLY wrapper lines are stripped).
#   2. series:   applying patches/series/*.patch in order gives the same files as the cumulative
#                patch (on the wheel headers, and on .mm pre-images rebuilt from the cumulative
#                patch's own hunks: that part compares the two forms, not upstream).
#   3. sources:  the whole patch applies to vendor/pytorch when scripts/vendor-pytorch.sh has made
#                it (the only check of the .mm hunks against real v2.11.0 sources); SKIP otherwise.
#   4. pool-tsan: the pool core header, extracted from the patch, passes
#                tests/mps_pool/pool_core_stress.cpp under ThreadSanitizer (needs g++); the same
#                test runs under `cargo test` as tests/mps_pool_tsan.rs.
#
# Usage: scripts/check-patch.sh [--no-tsan] [--help]
# Prints one PASS/FAIL/SKIP line per check; exits 1 when any check fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
WHEELS="$CACHE/wheels"
PATCH="$ROOT/patches/tch-streams-mps-v2.11.0.patch"
SERIES_DIR="$ROOT/patches/series"
RUN_TSAN=1

while [ $# -gt 0 ]; do
  case "$1" in
    --no-tsan) RUN_TSAN=0 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-patch.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

FAILED=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; FAILED=1; }
skip() { echo "SKIP $1: $2"; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

[ -f "$PATCH" ] || { fail patch "missing $PATCH"; exit 1; }
mapfile -t SERIES < <(find "$SERIES_DIR" -maxdepth 1 -name '[0-9][0-9][0-9][0-9]-*.patch' | sort)
[ "${#SERIES[@]}" -gt 0 ] || { fail series "no patches in $SERIES_DIR"; exit 1; }

# --- the wheel -----------------------------------------------------------------------------------
find_wheel() { find "$WHEELS" -maxdepth 1 -name 'torch-2.11.0-*-macosx_11_0_arm64.whl' 2>/dev/null | sort | head -n 1; }
WHEEL="$(find_wheel)"
if [ -z "$WHEEL" ]; then
  mkdir -p "$WHEELS"
  echo "[check-patch] downloading PyPI's macOS arm64 torch==2.11.0 wheel (~80 MB, once) into $WHEELS" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform macosx_11_0_arm64 \
    torch==2.11.0 -d "$WHEELS" >&2 || true
  WHEEL="$(find_wheel)"
fi
if [ -z "$WHEEL" ]; then
  cat <<EOF
FAIL headers: the macOS arm64 torch==2.11.0 wheel is not in $WHEELS and could not be downloaded.
The header check compares the patch with the exact v2.11.0 headers, which ship only in that wheel.
On a machine with PyPI access run: python3 -m pip download --no-deps --only-binary=:all:
--platform macosx_11_0_arm64 torch==2.11.0 -d "$WHEELS" (or copy any torch-2.11.0-*-macosx_11_0_arm64.whl
there), then run scripts/check-patch.sh again; nothing else needs the network.
EOF
  exit 1
fi

# --- files the patch touches ---------------------------------------------------------------------
# "path new|old" per file: new when the patch creates it.
python3 - "$PATCH" > "$WORK/files" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for block in re.split(r'^(?=diff --git )', text, flags=re.M)[1:]:
    path = re.match(r'diff --git a/(\S+) b/', block).group(1)
    print(path, 'new' if re.search(r'^--- /dev/null$', block, flags=re.M) else 'old')
PY

# Rebuilds a pre-image of PATH from the hunks of the cumulative patch: each hunk's old lines at
# its stated line numbers, unique filler lines in between.
rebuild_preimage() {
  python3 - "$PATCH" "$1" <<'PY'
import re, sys
text, want = open(sys.argv[1]).read(), sys.argv[2]
out = []
for block in re.split(r'^(?=diff --git )', text, flags=re.M)[1:]:
    if re.match(r'diff --git a/(\S+) b/', block).group(1) != want:
        continue
    for m in re.finditer(r'^@@ -(\d+)(?:,(\d+))? \+\S+ @@[^\n]*\n((?:[ +\\-][^\n]*\n?)*)', block, flags=re.M):
        start = int(m.group(1))
        while len(out) < start - 1:
            out.append('/* pre-image gap %d */' % len(out))
        out += [l[1:] for l in m.group(3).splitlines() if l[:1] in (' ', '-')]
out += ['/* pre-image tail %d */' % i for i in range(3)]
print('\n'.join(out))
PY
}

# --- base tree: wheel headers (wrapper stripped) + .mm pre-images --------------------------------
BASE="$WORK/base"
mkdir -p "$BASE"
unzip -q -o "$WHEEL" 'torch/include/ATen/mps/*' 'torch/include/ATen/native/mps/*' -d "$WORK/wheel"
WRAP_HEAD='#if !defined(TORCH_STABLE_ONLY) && !defined(TORCH_TARGET_VERSION)'
WRAP_TAIL="$(printf '%s\n' '' '#else' \
  '#error "This file should not be included when either TORCH_STABLE_ONLY or TORCH_TARGET_VERSION is defined."' \
  '#endif  // !defined(TORCH_STABLE_ONLY) && !defined(TORCH_TARGET_VERSION)')"
HEADERS_OK=1
while read -r path kind; do
  [ "$kind" = new ] && continue
  mkdir -p "$BASE/$(dirname "$path")"
  case "$path" in
    aten/src/ATen/*.h)
      src="$WORK/wheel/torch/include/${path#aten/src/}"
      if [ ! -f "$src" ]; then
        fail headers "$path is not in the wheel (torch/include/${path#aten/src/})"; HEADERS_OK=0; continue
      fi
      n="$(wc -l < "$src")"
      if [ "$(head -n 1 "$src")" != "$WRAP_HEAD" ] || [ "$(tail -n 4 "$src")" != "$WRAP_TAIL" ]; then
        fail headers "$src does not carry the expected installer wrapper lines; update check-patch.sh"
        HEADERS_OK=0; continue
      fi
      sed -n "2,$((n - 4))p" "$src" > "$BASE/$path" ;;
    *)
      rebuild_preimage "$path" > "$BASE/$path" ;;
  esac
done < "$WORK/files"

# --- 1. header hunks against the exact wheel headers ---------------------------------------------
if [ "$HEADERS_OK" = 1 ]; then
  H="$WORK/h"; cp -r "$BASE" "$H"
  if out="$(cd "$H" && git apply --check --verbose --include='aten/src/ATen/*.h' "$PATCH" 2>&1)"; then
    pass "headers: $(grep -c '^Checking patch .*\.h' <<<"$out") header files (new ones included) apply to the v2.11.0 wheel headers ($(basename "$WHEEL"))"
  else
    fail headers "$(grep -E '^error:' <<<"$out" | head -n 5 | tr '\n' ' ')"
  fi
fi

# --- 2. series == cumulative ---------------------------------------------------------------------
A="$WORK/cumulative"; B="$WORK/series"
cp -r "$BASE" "$A"; cp -r "$BASE" "$B"
if ! out="$(cd "$A" && git apply "$PATCH" 2>&1)"; then
  fail series "the cumulative patch does not apply to its own base: $(head -n 3 <<<"$out" | tr '\n' ' ')"
else
  series_ok=1
  for p in "${SERIES[@]}"; do
    if ! out="$(cd "$B" && git apply "$p" 2>&1)"; then
      fail series "$(basename "$p") does not apply after the ones before it: $(head -n 3 <<<"$out" | tr '\n' ' ')"
      series_ok=0; break
    fi
  done
  if [ "$series_ok" = 1 ]; then
    if d="$(diff -r "$A" "$B")"; then
      pass "series: ${#SERIES[@]} series patches in order == cumulative patch"
    else
      fail series "series and cumulative patch differ: $(head -n 8 <<<"$d" | tr '\n' ' ')"
    fi
  fi
fi

# --- 3. every hunk against real v2.11.0 sources --------------------------------------------------
VENDOR="$ROOT/vendor/pytorch"
if [ -d "$VENDOR/.git" ] || [ -f "$VENDOR/.git" ]; then
  if "$ROOT/scripts/vendor-pytorch.sh" --check >/dev/null 2>&1; then
    if (cd "$VENDOR" && git apply --check "$PATCH" 2>/dev/null); then
      pass "sources: the whole patch applies to vendor/pytorch (v2.11.0)"
    elif (cd "$VENDOR" && git apply --reverse --check "$PATCH" 2>/dev/null); then
      pass "sources: vendor/pytorch already carries the whole patch"
    else
      fail sources "$(cd "$VENDOR" && git apply --check "$PATCH" 2>&1 | head -n 3 | tr '\n' ' ')"
    fi
  else
    fail sources "vendor/pytorch is not at the commit in vendor/pytorch.lock (scripts/vendor-pytorch.sh --check)"
  fi
else
  skip sources ".mm hunks not checked against real v2.11.0 sources (no vendor/pytorch; scripts/vendor-pytorch.sh makes it)"
fi

# --- 4. pool core under ThreadSanitizer ----------------------------------------------------------
if [ "$RUN_TSAN" = 0 ]; then
  skip pool-tsan "--no-tsan given (cargo test runs it as tests/mps_pool_tsan.rs)"
elif ! command -v g++ >/dev/null; then
  fail pool-tsan "g++ is not installed (apt-get install g++)"
else
  [ -f "$A/aten/src/ATen/mps/MPSStreamPoolCore.h" ] || fail pool-tsan "the patch adds no aten/src/ATen/mps/MPSStreamPoolCore.h"
  if [ -f "$A/aten/src/ATen/mps/MPSStreamPoolCore.h" ]; then
    mkdir -p "$WORK/core/ATen/mps"
    cp "$A/aten/src/ATen/mps/MPSStreamPoolCore.h" "$WORK/core/ATen/mps/"
    if ! out="$(g++ -std=c++17 -O1 -g -fsanitize=thread -pthread -I"$WORK/core" \
                "$ROOT/tests/mps_pool/pool_core_stress.cpp" -o "$WORK/pool_core_stress" 2>&1)"; then
      fail pool-tsan "compile failed: $(head -n 5 <<<"$out" | tr '\n' ' ')"
    else
      run() { TSAN_OPTIONS="halt_on_error=1 exitcode=66" "$@" "$WORK/pool_core_stress" 2>&1; }
      rc=0; out="$(run)" || rc=$?
      if grep -q "unexpected memory mapping" <<<"$out"; then
        rc=0; out="$(run setarch "$(uname -m)" -R)" || rc=$?
      fi
      if [ "$rc" = 0 ] && grep -q '^PASS pool_core_stress' <<<"$out"; then
        pass "pool-tsan: $(grep '^pool-core: exclusive' <<<"$out" | cut -d' ' -f3-5), no ThreadSanitizer report"
      else
        fail pool-tsan "exit $rc: $(grep -E 'FAIL|CHECK FAILED|WARNING: ThreadSanitizer' <<<"$out" | head -n 3 | tr '\n' ' ')"
      fi
    fi
  fi
fi

if [ "$FAILED" = 0 ]; then echo "check-patch: all checks passed"; else echo "check-patch: FAILED"; fi
exit "$FAILED"
