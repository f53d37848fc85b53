#!/usr/bin/env bash
# Prepares everything the build needs, idempotently:
#   - a Python venv per libtorch version under $TCH_STREAMS_HOME (default ~/.cache/tch-streams),
#     venv-<version>, holding PyPI torch==<version>, whose headers and libraries torch-sys builds
#     and links against;
#   - Debian packages the build needs when missing (libclang-dev, for bindgen);
#   - tritonclient[http,grpc] and numpy in that venv, for the `serve` tests;
#   - a cargo target dir per version in the same cache, so a fresh clone reuses an earlier build.
#
# The version: TCH_STREAMS_TORCH=2.11.0|2.12.0|2.13.0 (default 2.13.0, the newest tch supports:
# tch 0.24 <-> 2.11.0, 0.25 <-> 2.12.0, 0.26 <-> 2.13.0). The lockfile's tch must match it.
#
# Usage:
#   scripts/setup.sh              set up (quick when already done), then print the environment
#   scripts/setup.sh --print-env  print only the `export` lines, for `eval "$(scripts/setup.sh --print-env)"`
#   scripts/setup.sh --cuda-graphs  the same (accepted for older instructions: the CUDA headers are
#                                  now always installed beside a CUDA torch, see step 3)
#
# A libtorch of your own (e.g. the patched MPS build) is honoured: when LIBTORCH is set, the build
# links it and the venv's torch is only used by the Python peer of the benchmark.
set -euo pipefail

TORCH_VERSION="${TCH_STREAMS_TORCH:-2.13.0}"
case "$TORCH_VERSION" in
  2.11.0|2.12.0|2.13.0) ;;
  *) echo "setup.sh: TCH_STREAMS_TORCH=$TORCH_VERSION is not supported; use 2.11.0 (tch 0.24), 2.12.0 (tch 0.25) or 2.13.0 (tch 0.26)" >&2; exit 2 ;;
esac
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
VENV="$CACHE/venv-$TORCH_VERSION"
PRINT_ONLY=0
case "${1:-}" in
  --print-env) PRINT_ONLY=1 ;;
  --cuda-graphs) ;;
  -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "setup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

log() { [ "$PRINT_ONLY" = 1 ] || echo "[setup] $*" >&2; }

print_env() {
  echo "export TCH_STREAMS_HOME=\"$CACHE\""
  echo "export TCH_STREAMS_TORCH=\"$TORCH_VERSION\""
  echo "export PATH=\"$VENV/bin:\$PATH\""
  if [ -z "${LIBTORCH:-}" ]; then
    echo "export LIBTORCH_USE_PYTORCH=1"
  fi
  echo "export CARGO_TARGET_DIR=\"${CARGO_TARGET_DIR:-$CACHE/target-$TORCH_VERSION}\""
  if [ -n "${LIBCLANG_PATH_FOUND:-}" ]; then
    echo "export LIBCLANG_PATH=\"$LIBCLANG_PATH_FOUND\""
  fi
}

find_libclang() {
  local d
  for d in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib; do
    # bindgen needs the C API library (libclang.so), not libclang-cpp.so.
    if compgen -G "$d/libclang.so*" >/dev/null 2>&1 || compgen -G "$d/libclang-[0-9]*.so*" >/dev/null 2>&1; then
      LIBCLANG_PATH_FOUND="$d"; return 0
    fi
  done
  return 1
}

torch_installed() {
  compgen -G "$VENV/lib/python3*/site-packages/torch-${TORCH_VERSION}*.dist-info" >/dev/null 2>&1 \
    && [ -x "$VENV/bin/python" ]
}

if [ "$PRINT_ONLY" = 1 ]; then
  find_libclang || true
  print_env
  exit 0
fi

mkdir -p "$CACHE"

# 1. libclang for bindgen.
if ! find_libclang; then
  log "libclang not found; installing Debian package libclang-dev"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get install -y -q libclang-dev >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libclang-dev >/dev/null; }; }; then
    cat >&2 <<MSG
[setup] error: could not install libclang-dev, which bindgen needs to read the shim's C header.
Install it yourself (Debian/Ubuntu: 'sudo apt-get install libclang-dev'; macOS: 'xcode-select --install'),
or point LIBCLANG_PATH at a directory holding libclang.so, then run scripts/setup.sh again.
MSG
    exit 1
  fi
  find_libclang || { echo "[setup] error: libclang-dev installed but libclang.so still not found; set LIBCLANG_PATH" >&2; exit 1; }
fi
log "libclang: $LIBCLANG_PATH_FOUND"

# 2. The venv with torch.
if torch_installed; then
  log "torch $TORCH_VERSION already in $VENV"
else
  PY="${PYTHON:-python3}"
  if ! command -v "$PY" >/dev/null; then
    echo "[setup] error: python3 not found; install Python >= 3.10 (or set PYTHON=/path/to/python) and run again." >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    "$PY" -m venv "$VENV"
  fi
  log "installing torch==$TORCH_VERSION into $VENV (about 4.6 GB with its CUDA wheels on Linux; a few minutes)"
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy >&2; then
    cat >&2 <<MSG
[setup] error: pip could not install torch==$TORCH_VERSION into $VENV. The build needs libtorch
$TORCH_VERSION exactly (each tch release accepts one libtorch). If this machine is offline, copy a
venv holding torch==$TORCH_VERSION to $VENV (or set TCH_STREAMS_HOME to a cache that has one), or
download libtorch $TORCH_VERSION and set LIBTORCH=/path/to/libtorch; then run scripts/setup.sh again.
If pip reported 'No space left on device', free about 6 GB under $CACHE.
MSG
    exit 1
  fi
  torch_installed || { echo "[setup] error: pip finished but torch $TORCH_VERSION is not in $VENV" >&2; exit 1; }
fi

# 3. CUDA headers beside a CUDA torch, so that the crate compiles its CUDA graph code (the engine
#    uses graphs by default on CUDA): PyPI nvidia-cuda-crt matching torch's CUDA runtime. A torch
#    without CUDA (macOS, a CPU wheel) needs none. TCH_STREAMS_CUDA_GRAPHS=0 skips this (and the
#    build then leaves graphs out).
RT=$("$VENV/bin/python" -m pip show nvidia-cuda-runtime 2>/dev/null | sed -n 's/^Version: \([0-9]*\.[0-9]*\).*/\1/p' || true)
if [ "${TCH_STREAMS_CUDA_GRAPHS:-1}" = 0 ]; then
  log "CUDA graphs opted out (TCH_STREAMS_CUDA_GRAPHS=0): not installing CUDA headers"
elif [ -z "$RT" ]; then
  log "torch in $VENV has no CUDA runtime: CUDA graphs are not built"
elif compgen -G "$VENV/lib/python3*/site-packages/nvidia/cu*/include/crt/host_config.h" >/dev/null; then
  log "CUDA $RT headers (for CUDA graphs) already present"
else
  log "installing nvidia-cuda-crt==$RT.* (CUDA headers, so that CUDA graphs are built)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "nvidia-cuda-crt==$RT.*" >&2 \
    || { echo "[setup] error: could not install nvidia-cuda-crt==$RT.*; install the CUDA $RT toolkit headers and set CUDA_INCLUDE_DIR, or set TCH_STREAMS_CUDA_GRAPHS=0 to build without CUDA graphs" >&2; exit 1; }
fi

# 4. NVIDIA's tritonclient (HTTP and gRPC) and numpy: the `serve` tests drive the server with
#    them, as a user of the Open Inference Protocol would. Skipped when already importable.
if "$VENV/bin/python" -c 'import numpy, tritonclient.http, tritonclient.grpc' >/dev/null 2>&1; then
  log "tritonclient already in $VENV"
else
  log "installing tritonclient[http,grpc] and numpy into $VENV (for the serve tests)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "tritonclient[http,grpc]" numpy >&2 \
    || { echo "[setup] error: could not install tritonclient[http,grpc] into $VENV; the serve tests need it (pip install 'tritonclient[http,grpc]' numpy)" >&2; exit 1; }
fi

log "ready; environment:"
print_env
