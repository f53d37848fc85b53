#!/usr/bin/env bash
# Builds the mps-emu runtime: OUTDIR/libmpsemu.a from src/*.mm, for one sanitizer mode
# (tsan, asan or plain; default tsan), and OUTDIR/flags.txt with the flags that code built against
# the emulator must use (a shell file: source it, or read the three lines):
#   MPSEMU_OBJCXXFLAGS  compiling Objective-C++ (.mm files; add -x objective-c++ for other names)
#                       against the emulated Apple headers
#   MPSEMU_CXXFLAGS     compiling plain C++ that includes them (blocks, includes, sanitizer)
#   MPSEMU_LDFLAGS      linking (libmpsemu.a, GCC's libobjc, libBlocksRuntime, the sanitizer)
#   MPSEMU_LSAN_OPTIONS for LSAN_OPTIONS when running asan builds (suppresses libobjc's own tables)
# Needs Debian's clang, libobjc-12-dev (or another GCC's libobjc) and libblocksruntime-dev.
# Uses at most two compiler processes (MPSEMU_JOBS overrides).
#
# Usage: build.sh OUTDIR [tsan|asan|plain]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:?usage: build.sh OUTDIR [tsan|asan|plain]}"
MODE="${2:-tsan}"
JOBS="${MPSEMU_JOBS:-2}"
CXX="${CXX:-$(command -v clang++ || command -v clang++-14 || true)}"
[ -n "$CXX" ] || { echo "build.sh: clang++ not found (apt-get install clang)" >&2; exit 1; }
case "$MODE" in
  tsan) SAN="-fsanitize=thread" ;;
  asan) SAN="-fsanitize=address -fno-omit-frame-pointer" ;;
  plain) SAN="" ;;
  *) echo "build.sh: mode must be tsan, asan or plain (got $MODE)" >&2; exit 2 ;;
esac
mkdir -p "$OUT/obj"
OUT="$(cd "$OUT" && pwd)"
LIBOBJC_DIR="$(dirname "$(gcc -print-file-name=libobjc.so)")"
[ -e "$LIBOBJC_DIR/libobjc.so" ] || { echo "build.sh: GCC's libobjc not found (apt-get install libobjc-12-dev)" >&2; exit 1; }

INC="-include $HERE/include/apple-compat.h -isystem $HERE/include -I$(cd "$HERE/../include" && pwd)"
COMMON="-std=c++17 -fblocks -g -O1 $SAN"
OBJCXXFLAGS="$COMMON -fobjc-runtime=gcc -fno-objc-arc -fconstant-string-class=NSConstantString $INC"
CXXFLAGS="$COMMON $INC"
LDFLAGS="-x none $SAN $OUT/libmpsemu.a -L$LIBOBJC_DIR -lobjc -lBlocksRuntime -ldl -pthread"

printf '%s\n' "$HERE"/src/*.mm | xargs -P "$JOBS" -I{} sh -c \
  'f="$1"; shift; exec "$@" -Wall -Wextra -Wno-unused-parameter -c "$f" -o "'"$OUT"'/obj/$(basename "$f" .mm).o"' \
  _ {} "$CXX" -x objective-c++ $OBJCXXFLAGS
rm -f "$OUT/libmpsemu.a"
ar rcs "$OUT/libmpsemu.a" "$OUT"/obj/*.o
{
  echo "MPSEMU_OBJCXXFLAGS=\"$OBJCXXFLAGS\""
  echo "MPSEMU_CXXFLAGS=\"$CXXFLAGS\""
  echo "MPSEMU_LDFLAGS=\"$LDFLAGS\""
  echo "MPSEMU_LSAN_OPTIONS=\"suppressions=$HERE/lsan.supp\""
} >"$OUT/flags.txt"
echo "built $OUT/libmpsemu.a ($MODE, $("$CXX" --version | head -n 1))"
cat "$OUT/flags.txt"
