#!/usr/bin/env bash
# Builds the mps-emu test programs for one tree and one sanitizer: compiles the tree's ATen/mps .mm
# files (upstream text, patched), our stand-ins (standins/) and the tests (tests/) as
# Objective-C++ against the emulator's Apple headers (runtime/include), the macOS wheel's ATen/mps
# headers and the Linux torch's c10/ATen headers, and links them with the emulator
# (libmpsemu.a) and the Linux wheel's libc10.so and libtorch_cpu.so. Object files are cached by the
# sha256 of what goes into them (the source, the flags, every header directory's content), so a
# mutation that changes one .mm file recompiles that file only.
#
# Usage: build-backend.sh --tree TREE --sources "MPSStream.mm ..." --standins "device.mm ..."
#          --wheel-include DIR --torch-include DIR --runtime DIR --sanitizer tsan|asan
#          --cache DIR --out DIR [--define NAME=VALUE]...
#   TREE      has aten/src/ATen/mps/<source> for each of --sources, and the headers that take
#             precedence over the wheel's (the patched ones, the patch's new ones)
#   --runtime a directory that runtime/build.sh made for the same sanitizer (libmpsemu.a,
#             flags.txt)
# Writes OUT/stress and OUT/targeted. Progress and compiler errors on stderr; exit 1 on failure.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TREE="" SOURCES="" STANDINS="" WHEEL_INC="" TORCH_INC="" RT="" SAN="" CACHE="" OUT="" DEFINES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tree) TREE="$2"; shift ;;
    --sources) SOURCES="$2"; shift ;;
    --standins) STANDINS="$2"; shift ;;
    --wheel-include) WHEEL_INC="$2"; shift ;;
    --torch-include) TORCH_INC="$2"; shift ;;
    --runtime) RT="$2"; shift ;;
    --sanitizer) SAN="$2"; shift ;;
    --cache) CACHE="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --define) DEFINES+=("-D$2"); shift ;;
    *) echo "build-backend.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
for v in TREE WHEEL_INC TORCH_INC RT SAN CACHE OUT; do
  [ -n "${!v}" ] || { echo "build-backend.sh: missing --$(tr 'A-Z_' 'a-z-' <<<"$v")" >&2; exit 2; }
done
case "$SAN" in tsan) SANFLAG=-fsanitize=thread ;; asan) SANFLAG=-fsanitize=address ;; *) echo "build-backend.sh: --sanitizer tsan|asan" >&2; exit 2 ;; esac
CLANG="$(command -v clang++ || command -v clang++-14)"
TORCH_LIB="$(cd "$TORCH_INC/../lib" && pwd)"
mkdir -p "$CACHE/obj-$SAN" "$OUT"

# The emulator's compile and link flags (runtime/build.sh writes them as shell assignments:
# Objective-C++ mode, GCC's runtime, blocks, the sanitizer, the Apple headers; libmpsemu.a,
# libobjc, libBlocksRuntime).
MPSEMU_OBJCXXFLAGS="" MPSEMU_LDFLAGS=""
# shellcheck disable=SC1091
. "$RT/flags.txt"
[ -n "$MPSEMU_OBJCXXFLAGS" ] && [ -n "$MPSEMU_LDFLAGS" ] || { echo "build-backend.sh: $RT/flags.txt lacks the emulator's flags" >&2; exit 1; }
grep -q -- "$SANFLAG" <<<"$MPSEMU_OBJCXXFLAGS" || { echo "build-backend.sh: $RT was not built for $SAN" >&2; exit 1; }

# shellcheck disable=SC2206
CFLAGS=(-x objective-c++ $MPSEMU_OBJCXXFLAGS -fno-omit-frame-pointer -D_GLIBCXX_USE_CXX11_ABI=1 "${DEFINES[@]}"
  -I"$HERE/include" -I"$TREE/aten/src"
  -isystem "$WHEEL_INC" -isystem "$TORCH_INC" -isystem "$TORCH_INC/torch/csrc/api/include")

# Everything a compile reads besides its source: the header directories, by content.
digest_dir() { [ -d "$1" ] && find "$1" -type f \( -name '*.h' -o -name '*.hpp' -o -name '*.txt' \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-64; }
headers_key="$( {
  "$CLANG" --version | head -n 1
  printf '%s\n' "${CFLAGS[@]}" | sed "s#$TREE#TREE#g"
  digest_dir "$TREE/aten"
  digest_dir "$HERE/include"; digest_dir "$HERE/standins"; digest_dir "$HERE/tests"; digest_dir "$HERE/runtime/include"
  digest_dir "$WHEEL_INC/ATen/mps"; digest_dir "$WHEEL_INC/ATen/native/mps"
  cat "$TORCH_INC/../version.py" 2>/dev/null || echo "$TORCH_INC"
} | sha256sum | cut -c1-64)"

srcs=()
for f in $SOURCES; do srcs+=("$TREE/aten/src/ATen/mps/$f"); done
for f in $STANDINS; do srcs+=("$HERE/standins/$f"); done
srcs+=("$HERE/tests/stress.mm" "$HERE/tests/targeted.mm")

# object path for each source (content-addressed); compile the missing ones, two at a time
objs=() todo=()
for s in "${srcs[@]}"; do
  [ -f "$s" ] || { echo "build-backend.sh: no $s" >&2; exit 1; }
  key="$( { echo "$headers_key"; basename "$s"; cat "$s"; } | sha256sum | cut -c1-32)"
  o="$CACHE/obj-$SAN/$(basename "$s" .mm)-$key.o"
  objs+=("$o")
  [ -f "$o" ] || todo+=("$s=$o")
done
if [ "${#todo[@]}" -gt 0 ]; then
  echo "[mps-emu] $SAN: compiling ${#todo[@]} of ${#srcs[@]} files: $(for t in "${todo[@]}"; do basename "${t%%=*}"; done | tr '\n' ' ')" >&2
  export CLANG
  printf '%s\n' "${todo[@]}" | xargs -P "${MPSEMU_JOBS:-2}" -I{} bash -c '
    s="${1%%=*}" o="${1#*=}"; shift
    "$CLANG" -c "$@" "$s" -o "$o.tmp.$$" && mv "$o.tmp.$$" "$o"' _ {} "${CFLAGS[@]}" \
    || { echo "build-backend.sh: compilation failed ($SAN)" >&2; exit 1; }
fi

n_tests=2
backend=("${objs[@]:0:${#objs[@]}-$n_tests}")
link() { # OUTPUT TEST_OBJECT
  # shellcheck disable=SC2086
  "$CLANG" -o "$1" "$2" "${backend[@]}" $MPSEMU_LDFLAGS \
    -L"$TORCH_LIB" -Wl,-rpath,"$TORCH_LIB" -Wl,--no-as-needed -lc10 -ltorch_cpu -pthread
}
link "$OUT/stress" "${objs[${#objs[@]}-2]}"
link "$OUT/targeted" "${objs[${#objs[@]}-1]}"
