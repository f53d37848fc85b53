#!/usr/bin/env bash
# Makes the trees checks/mps/emu/run.sh builds from, the way scripts/check-patch.sh makes the trees
# its objc-syntax check compiles, from this repository alone (for runs by hand; check-patch passes
# its own trees):
#   OUT/base     every file the cumulative patch touches: ATen headers from PyPI's macOS arm64
#                torch wheel of VERSION (installer wrapper lines stripped), .mm files from
#                vendor/v<VERSION>/upstream/ (the lock's compile-drop= lines left out) or, for
#                files the lock names standin=, the earlier window's vendored text;
#   OUT/patched  OUT/base with patches/v<VERSION>/tch-streams-mps-v<VERSION>.patch applied;
#   OUT/wheel    the wheel's torch/include/ATen/{mps,native/mps} headers, as shipped.
# A .mm file the patch touches that has no vendored text is left out of both trees (run.sh reports
# what it lacks). Prints OUT/wheel/torch/include on its last line.
#
# Usage: prepare-trees.sh VERSION OUT [PATCH]   (PATCH: another cumulative patch file for VERSION,
#        e.g. an earlier revision: git show REV:patches/v2.11.0/tch-streams-mps-v2.11.0.patch)
# Needs unzip, git, python3, and the wheel in ${TCH_STREAMS_HOME:-~/.cache/tch-streams}/wheels
# (downloaded with pip when missing, as check-patch does).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
V="$1" OUT="$2"
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
WHEELS="$CACHE/wheels"
PATCH="${3:-$ROOT/patches/v$V/tch-streams-mps-v$V.patch}"
LOCK="$ROOT/vendor/v$V/mps-context.lock"
[ -f "$PATCH" ] || { echo "prepare-trees: no $PATCH" >&2; exit 1; }

case "$V" in 2.11.*) tag=macosx_11_0_arm64 ;; *) tag=macosx_14_0_arm64 ;; esac
find_wheel() { [ -d "$WHEELS" ] && find "$WHEELS" -maxdepth 1 -name "torch-$V-*-$tag.whl" | sort | head -n 1; }
wheel="$(find_wheel || true)"
if [ -z "$wheel" ]; then
  mkdir -p "$WHEELS"
  echo "[prepare-trees] downloading PyPI's $tag torch==$V wheel into $WHEELS" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$tag" "torch==$V" -d "$WHEELS" >&2
  wheel="$(find_wheel)"
fi
rm -rf "$OUT/base" "$OUT/patched" "$OUT/wheel"
mkdir -p "$OUT/base"
unzip -q -o "$wheel" 'torch/include/ATen/mps/*' 'torch/include/ATen/native/mps/*' -d "$OUT/wheel"

# The patch and the lock are read by scripts/patchtools/patchtools.py, as check-patch reads them.
pt() { python3 "$ROOT/scripts/patchtools/patchtools.py" "$@"; }
files="$(pt files "$PATCH")"   # path new|old for each file of the patch
standin_of() { pt lock "$LOCK" standin "$1"; }
drops_of() { pt lock "$LOCK" compile-drop "$1"; }
include=()
while read -r path kind; do
  [ "$kind" = new ] && continue
  case "$path" in
    aten/src/ATen/*.h)
      src="$OUT/wheel/torch/include/${path#aten/src/}"
      mkdir -p "$OUT/base/$(dirname "$path")"
      n="$(wc -l < "$src")"
      sed -n "2,$((n - 4))p" "$src" > "$OUT/base/$path"
      include+=(--include="$path") ;;
    aten/src/ATen/mps/*.mm)
      from="$ROOT/vendor/v$V/upstream/$path"
      s="$(standin_of "$path")"
      [ -n "$s" ] && from="$ROOT/vendor/v$s/upstream/$path"
      [ -f "$from" ] || continue
      mkdir -p "$OUT/base/$(dirname "$path")"
      d="$(drops_of "$path")"
      pt drop-lines "$from" "$d" > "$OUT/base/$path"
      include+=(--include="$path") ;;
  esac
done <<<"$files"
# new files of the patch
while read -r path kind; do [ "$kind" = new ] && include+=(--include="$path"); done <<<"$files"
cp -r "$OUT/base" "$OUT/patched"
# (GIT_CEILING_DIRECTORIES: OUT may lie inside a git work tree, whose root git apply would use)
(cd "$OUT/patched" && GIT_CEILING_DIRECTORIES="$(cd "$OUT" && pwd)" git apply "${include[@]}" "$PATCH")
echo "$OUT/wheel/torch/include"
