#!/usr/bin/env bash
# Builds libtorch VERSION (2.11.0 for tch 0.24, 2.13.0 for tch 0.26) with our MPS stream-pool patch
# for that version (macOS on Apple silicon), idempotently:
#   1. vendor/pytorch-VERSION at the commit in vendor/vVERSION/pytorch.lock (scripts/vendor-pytorch.sh);
#   2. patches/vVERSION/tch-streams-mps-vVERSION.patch applied (checked first; skipped when applied);
#   3. libtorch built with CMake: MPS on, Python/CUDA/distributed/tests off, the patch id compiled
#      in (-DTCH_STREAMS_MPS_PATCH_ID), installed into
#      ${TCH_STREAMS_HOME:-~/.cache/tch-streams}/libtorch/<pytorch-commit-12>-<patch-sha-12>/
#      with <prefix>/tch-streams-patch-id (the patch id, one line) and <prefix>/build-version.
#
# Usage:
#   scripts/build-libtorch.sh [--version V] [--jobs N] [--rebuild]
#                                                V: 2.11.0 or 2.13.0 (default: $TCH_STREAMS_TORCH,
#                                                else 2.13.0, as scripts/setup.sh)
#   scripts/build-libtorch.sh --allow-non-mac    on Linux etc.: only apply and check the patch
#   scripts/build-libtorch.sh --source DIR ...   use an existing PyTorch checkout instead of
#                                                vendor/pytorch-V (not checked against the lock)
#   scripts/build-libtorch.sh --print-id         print the patch id of version V and exit
#
# Needs on macOS: Xcode command-line tools, cmake (and ninja if you have it), python3 with
# pyyaml and typing_extensions (PyTorch's code generators). Takes 30-90 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
VERSION="${TCH_STREAMS_TORCH:-2.13.0}"
SRC=""
CUSTOM_SRC=0
ALLOW_NON_MAC=0
REBUILD=0
PRINT_ID=0
JOBS="$( (sysctl -n hw.ncpu || nproc) 2>/dev/null || echo 4)"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "[build-libtorch] ERROR: $*" >&2; exit 1; }
log() { echo "[build-libtorch] $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --allow-non-mac) ALLOW_NON_MAC=1 ;;
    --rebuild) REBUILD=1 ;;
    --print-id) PRINT_ID=1 ;;
    --version)
      [ $# -ge 2 ] || { echo "build-libtorch.sh: --version needs 2.11.0 or 2.13.0" >&2; exit 2; }
      VERSION="$2"; shift ;;
    --jobs)
      [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "build-libtorch.sh: --jobs needs a number" >&2; exit 2; }
      JOBS="$2"; shift ;;
    --source)
      [ $# -ge 2 ] || { echo "build-libtorch.sh: --source needs a directory" >&2; exit 2; }
      SRC="$(cd "$2" && pwd)" || exit 2; CUSTOM_SRC=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-libtorch.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

case "$VERSION" in
  2.11.0|2.13.0) ;;
  *) echo "build-libtorch.sh: no MPS patch for libtorch $VERSION (patches/ has v2.11.0 and v2.13.0)" >&2; exit 2 ;;
esac
PATCH="$ROOT/patches/v$VERSION/tch-streams-mps-v$VERSION.patch"
[ -n "$SRC" ] || SRC="$ROOT/vendor/pytorch-$VERSION"
[ -f "$PATCH" ] || die "missing $PATCH"
sha256() { if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -c1-64; }
PATCH_SHA="$(sha256 "$PATCH")"
PATCH_ID="tch-streams-mps/${PATCH_SHA:0:16}"
if [ "$PRINT_ID" = 1 ]; then echo "$PATCH_ID"; exit 0; fi

IS_MAC=0
[ "$(uname -s)" = Darwin ] && IS_MAC=1
if [ "$IS_MAC" = 0 ] && [ "$ALLOW_NON_MAC" = 0 ]; then
  die "the MPS backend builds only on macOS (this is $(uname -s)). Use --allow-non-mac to only apply
and check the patch against the PyTorch checkout here."
fi

# --- 1. source -----------------------------------------------------------------------------------
if [ "$CUSTOM_SRC" = 0 ]; then
  "$ROOT/scripts/vendor-pytorch.sh" "$VERSION"
else
  log "using $SRC as given (--source): not checked against vendor/v$VERSION/pytorch.lock"
fi
git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1 || die "$SRC is not a git checkout"
COMMIT="$(git -C "$SRC" rev-parse HEAD)"

# --- 2. patch ------------------------------------------------------------------------------------
if (cd "$SRC" && git apply --reverse --check "$PATCH" 2>/dev/null); then
  log "patch already applied in $SRC ($PATCH_ID)"
else
  if ! out="$(cd "$SRC" && git apply --check --verbose "$PATCH" 2>&1)"; then
    echo "$out" | grep -E '^(error|Checking patch)' | grep -B1 '^error' >&2 || true
    failing="$(echo "$out" | sed -n 's/^error: patch failed: \(.*\)$/\1/p' | head -n 1)"
    die "patches/v$VERSION/tch-streams-mps-v$VERSION.patch does not apply to $SRC (commit $COMMIT).
The first failing hunk is at ${failing:-<see the errors above>} (file:line in the patch's numbering).
The tree may be partly patched or locally modified: 'git -C $SRC status' shows it; restore it with
'git -C $SRC checkout -- . && git -C $SRC clean -fd aten' and run this again. If it still fails, the
hunk's context does not match v$VERSION: please report it with the lines above."
  fi
  (cd "$SRC" && git apply "$PATCH")
  log "patch applied to $SRC ($PATCH_ID)"
fi
(cd "$SRC" && git apply --reverse --check "$PATCH") || die "the patch does not read back as applied in $SRC"

if [ "$IS_MAC" = 0 ]; then
  log "--allow-non-mac: patch applied and checked; libtorch itself is built on macOS only. Done."
  exit 0
fi

# --- 3. build ------------------------------------------------------------------------------------
PREFIX="$CACHE/libtorch/${COMMIT:0:12}-${PATCH_SHA:0:12}"
STAMP="$PREFIX/tch-streams-patch-id"
LIB="$PREFIX/lib/libtorch_cpu.dylib"
if [ "$REBUILD" = 0 ] && [ -f "$LIB" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PATCH_ID" ]; then
  log "already built: $PREFIX (use --rebuild to build again)"
else
  command -v cmake >/dev/null || die "cmake is not installed (brew install cmake ninja)"
  python3 -c 'import yaml, typing_extensions' 2>/dev/null \
    || die "python3 needs pyyaml and typing_extensions for PyTorch's code generators (pip install pyyaml typing_extensions)"
  BUILD="$SRC/build-tch-streams"
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  # The id reaches the compiler as a string literal: the generators run compile lines through a
  # shell, which turns \" into ". Set for C++ and Objective-C++ (the MPS sources are .mm).
  DEFINE="-DTCH_STREAMS_MPS_PATCH_ID=\\\"$PATCH_ID\\\""
  log "configuring in $BUILD (install prefix $PREFIX)"
  cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DBUILD_PYTHON=OFF -DBUILD_TEST=OFF -DBUILD_SHARED_LIBS=ON \
    -DUSE_MPS=ON -DUSE_CUDA=OFF -DUSE_ROCM=OFF -DUSE_DISTRIBUTED=OFF \
    -DPython_EXECUTABLE="$(command -v python3)" \
    "-DCMAKE_CXX_FLAGS=$DEFINE" "-DCMAKE_OBJCXX_FLAGS=$DEFINE"
  log "building with $JOBS jobs (this takes a long while)"
  cmake --build "$BUILD" --target install --parallel "$JOBS"
  [ -f "$LIB" ] || die "build finished but $LIB is missing"
  # The marker must really be in the library, with the id we computed.
  nm -gU "$LIB" | grep -q '_tch_streams_mps_patch_id$' || die "$LIB does not export tch_streams_mps_patch_id"
  grep -aq "$PATCH_ID" "$LIB" || die "$LIB does not contain '$PATCH_ID': the -D flag did not reach the MPS sources"
  printf '%s\n' "$PATCH_ID" > "$STAMP"
  printf '%s\n' "$VERSION" > "$PREFIX/build-version"
fi

cat <<EOF

Patched libtorch ($PATCH_ID) is in:
  $PREFIX

Next steps:
  export LIBTORCH=$PREFIX
  export DYLD_LIBRARY_PATH=\$LIBTORCH/lib:\${DYLD_LIBRARY_PATH:-}
  cargo build --release
  target/release/tch-streams preflight --require patched
EOF
