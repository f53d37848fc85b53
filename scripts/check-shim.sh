#!/usr/bin/env bash
# Compiles the C++ shim (crates/tch-streams/src/shim/*.cpp, syntax and warnings) against the
# headers of a libtorch release, without building tch for it:
#   scripts/check-shim.sh 2.12.0 [2.11.0 2.13.0 ...]
# Headers come from PyPI's Linux torch wheel for that version (only torch/include is unpacked,
# cached in $TCH_STREAMS_HOME/headers-<version>). scripts/test.sh runs it for 2.12.0, the version
# between the two it builds in full (2.13.0, and 2.11.0 through scripts/compat.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help|"") sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ]; exit $? ;; esac
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
PY="${PYTHON:-python3}"
status=0
for VERSION in "$@"; do
  INC="$CACHE/headers-$VERSION/torch/include"
  if [ ! -f "$INC/torch/headeronly/version.h" ]; then
    echo "[check-shim] fetching torch $VERSION headers (the wheel is downloaded once, then removed)" >&2
    TMP="$(mktemp -d)"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 "torch==$VERSION" -d "$TMP" >&2
    "$PY" - "$TMP" "$CACHE/headers-$VERSION" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/torch-*.whl")[0]
z = zipfile.ZipFile(wheel)
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("torch/include/")])
PY
    rm -rf "$TMP"
  fi
  got="$(grep -A1 '#define TORCH_VERSION ' "$INC/torch/headeronly/version.h" | grep -o '"[^"]*"' | head -1 | tr -d '"')"
  [ "$got" = "$VERSION" ] || { echo "[check-shim] headers in $INC say $got, expected $VERSION" >&2; exit 1; }
  for f in crates/tch-streams/src/shim/*.cpp; do
    if ! g++ -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -fsyntax-only -Wall -Wextra -Werror \
        -isystem "$INC" -isystem "$INC/torch/csrc/api/include" "$f"; then
      echo "[check-shim] FAIL $f against libtorch $VERSION" >&2; status=1
    fi
  done
  [ "$status" = 0 ] && echo "check-shim: $(ls crates/tch-streams/src/shim/*.cpp | wc -l) shim sources compile against libtorch $VERSION headers"
done
exit "$status"
