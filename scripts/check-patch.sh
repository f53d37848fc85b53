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
#                crates/tch-streams/tests/mps_pool/pool_core_stress.cpp under ThreadSanitizer (needs g++); the same
#                test runs under `cargo test` as tests/mps_pool_tsan.rs.
#   5. reuse-tsan: the allocator's buffer/stream reuse rule (MPSBufferStreamUse.h, extracted from
#                the patch) passes crates/tch-streams/tests/mps_pool/buffer_reuse_stress.cpp under ThreadSanitizer.
#   6. header-syntax: the patched headers that have a plain C++ form (MPSAllocatorInterface.h,
#                MetalShaderLibrary.h, the two portable ones) compile with g++ -fsyntax-only
#                against the c10 headers of a Linux torch 2.11.0 (the project's venv, or
#                TCH_STREAMS_TORCH_INCLUDE); SKIP when there is none.
#   7. binary:   the .mm hunks' context agrees with the v2.11.0 build in the same wheel
#                (libtorch_cpu.dylib): every string literal on a context or removed line is in
#                it, every function defined on one is named in its symbols, the functions that
#                gain the kernel lock or the encoder move dispatch a block in v2.11.0, and the
#                facts patches/README.md relies on about v2.11.0's code hold.
#
# Usage: scripts/check-patch.sh [--no-tsan] [--help]
# Prints one PASS/FAIL/SKIP line per check; exits 1 when any check fails.
set -euo pipefail
trap 'echo "[check-patch] error: command failed at line $LINENO" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
WHEELS="$CACHE/wheels"
PATCH="$ROOT/patches/v2.11.0/tch-streams-mps-v2.11.0.patch"
SERIES_DIR="$ROOT/patches/v2.11.0/series"
RUN_TSAN=1

while [ $# -gt 0 ]; do
  case "$1" in
    --no-tsan) RUN_TSAN=0 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
# (No wheels directory yet on a fresh machine: that is "not found", not a failure.)
find_wheel() { [ -d "$WHEELS" ] || return 0; find "$WHEELS" -maxdepth 1 -name 'torch-2.11.0-*-macosx_11_0_arm64.whl' | sort | head -n 1; }
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

# --- 4./5. portable headers under ThreadSanitizer ------------------------------------------------
# tsan_check NAME SOURCE SUMMARY_PREFIX HEADER...: compiles SOURCE against HEADERs taken from the
# patched tree, runs it under TSan (without ASLR if the kernel's mmap layout upsets TSan) and
# expects "PASS <binary name>"; prints the first SUMMARY_PREFIX line on success.
tsan_check() {
  local name="$1" src="$2" summary="$3"; shift 3
  local inc="$WORK/inc-$name" bin="$WORK/$(basename "$src" .cpp)" h out rc
  mkdir -p "$inc/ATen/mps"
  for h in "$@"; do
    if [ ! -f "$A/aten/src/ATen/mps/$h" ]; then
      fail "$name" "the patch adds no aten/src/ATen/mps/$h"; return
    fi
    cp "$A/aten/src/ATen/mps/$h" "$inc/ATen/mps/"
  done
  if ! out="$(g++ -std=c++17 -O1 -g -fsanitize=thread -pthread -I"$inc" "$src" -o "$bin" 2>&1)"; then
    fail "$name" "compile failed: $(head -n 5 <<<"$out" | tr '\n' ' ')"; return
  fi
  run() { TSAN_OPTIONS="halt_on_error=1 exitcode=66" "$@" "$bin" 2>&1; }
  rc=0; out="$(run)" || rc=$?
  if grep -q "unexpected memory mapping" <<<"$out"; then
    rc=0; out="$(run setarch "$(uname -m)" -R)" || rc=$?
  fi
  if [ "$rc" = 0 ] && grep -q "^PASS $(basename "$bin")" <<<"$out"; then
    pass "$name: $(grep -m 1 "^$summary" <<<"$out" | cut -d' ' -f3-), no ThreadSanitizer report"
  else
    fail "$name" "exit $rc: $(grep -E 'FAIL|CHECK FAILED|WARNING: ThreadSanitizer' <<<"$out" | head -n 3 | tr '\n' ' ')"
  fi
}

if [ "$RUN_TSAN" = 0 ]; then
  skip pool-tsan "--no-tsan given (cargo test runs it as tests/mps_pool_tsan.rs)"
  skip reuse-tsan "--no-tsan given (cargo test runs it as tests/mps_pool_tsan.rs)"
elif ! command -v g++ >/dev/null; then
  fail pool-tsan "g++ is not installed (apt-get install g++)"
  fail reuse-tsan "g++ is not installed (apt-get install g++)"
else
  tsan_check pool-tsan "$ROOT/crates/tch-streams/tests/mps_pool/pool_core_stress.cpp" "pool-core: exclusive" \
    MPSStreamPoolCore.h
  tsan_check reuse-tsan "$ROOT/crates/tch-streams/tests/mps_pool/buffer_reuse_stress.cpp" "buffer-reuse: stress threads" \
    MPSStreamPoolCore.h MPSBufferStreamUse.h
fi

# --- 6. patched headers with a plain C++ form compile ----------------------------------------------
TORCH_INC="${TCH_STREAMS_TORCH_INCLUDE:-}"
if [ -z "$TORCH_INC" ]; then
  TORCH_INC="$(find "$CACHE/venv-2.11.0" -maxdepth 6 -type d -path '*/site-packages/torch/include' 2>/dev/null | sort | head -n 1 || true)"
fi
if ! command -v g++ >/dev/null; then
  fail header-syntax "g++ is not installed (apt-get install g++)"
elif [ -z "$TORCH_INC" ] || [ ! -f "$TORCH_INC/c10/core/Allocator.h" ]; then
  skip header-syntax "no Linux torch include directory (set TCH_STREAMS_TORCH_INCLUDE, or run scripts/setup.sh)"
else
  cat > "$WORK/header_syntax.cpp" <<'CPP'
#include <ATen/mps/MPSAllocatorInterface.h>
#include <ATen/mps/MPSBufferStreamUse.h>
#include <ATen/mps/MPSStreamPoolCore.h>
#include <ATen/native/mps/MetalShaderLibrary.h>
// IMPSAllocator gained a pure virtual recordStream: an implementation overrides it.
struct RecordStreamProbe final : at::mps::IMPSAllocator {
  void recordStream(const c10::DataPtr&, c10::Stream) const override {}
};
// MetalShaderLibrary's inline accessors lock the (protected) cacheMutex().
struct ShaderLibraryProbe : at::native::mps::MetalShaderLibrary {
  ShaderLibraryProbe() : MetalShaderLibrary("") {}
  std::recursive_mutex& lock() { return cacheMutex(); }
};
int main() { return 0; }
CPP
  # The patched headers come first; every other include resolves to the Linux torch headers.
  if out="$(g++ -std=c++17 -fsyntax-only -Wall -Wextra -D_GLIBCXX_USE_CXX11_ABI=1 -I"$A/aten/src" \
              -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" "$WORK/header_syntax.cpp" 2>&1)"; then
    pass "header-syntax: patched MPSAllocatorInterface.h, MetalShaderLibrary.h (non-Objective-C form) and the portable headers compile against the c10 headers in $TORCH_INC"
  else
    fail header-syntax "$(grep -E 'error' <<<"$out" | head -n 3 | tr '\n' ' ')"
  fi
fi

# --- 7. .mm context against the v2.11.0 binary ---------------------------------------------------
# The wheel's libtorch_cpu.dylib was built from the exact v2.11.0 sources: its string literals and
# symbol names are a fingerprint of the .mm files whose text we could only read at other revisions.
unzip -q -o "$WHEEL" 'torch/lib/libtorch_cpu.dylib' -d "$WORK/wheel"
if out="$(python3 - "$PATCH" "$WORK/wheel/torch/lib/libtorch_cpu.dylib" <<'PY'
import re, sys
patch, dylib = sys.argv[1], sys.argv[2]
data = open(dylib, 'rb').read()
problems, literals, functions = [], set(), set()
for block in re.split(r'^(?=diff --git )', open(patch).read(), flags=re.M)[1:]:
    path = re.match(r'diff --git a/(\S+) b/', block).group(1)
    if not path.endswith('.mm') or re.search(r'^--- /dev/null$', block, flags=re.M):
        continue
    for line in block.splitlines():
        if line[:1] not in (' ', '-') or line.startswith('--- '):
            continue
        for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', line[1:]):
            if '\\' not in lit and len(lit) >= 6:
                literals.add((path, lit))
        m = re.match(r'^(?:static\s+|inline\s+)*[\w:<>,*&\s]*?\b\w+::(\w+)\(|^(?:static\s+|inline\s+)*[\w:<>,*&]+[\s*&]+(\w+)\(', line[1:])
        if m and (m.group(1) or m.group(2)) not in ('if', 'for', 'while', 'switch', 'return'):
            functions.add((path, m.group(1) or m.group(2)))
for path, lit in sorted(literals):
    if lit.encode() not in data:
        problems.append('literal "%s" of %s is not in v2.11.0' % (lit, path))
for path, name in sorted(functions):
    if name.encode() not in data:
        problems.append('function %s of %s is not in v2.11.0' % (name, path))
# Functions that gain the kernel lock (taken before their dispatch) or the encoder move.
dispatching = ['_mps_linear_nograph', 'linalg_lu_factor_ex_out_mps_impl', 'linalg_solve_out_mps_impl',
               'tiled_bmm_out_mps_impl', 'layer_norm_mps']
for name in dispatching:
    if not re.search(re.escape(name.encode()) + rb'[\w$.]*_block_invoke', data):
        problems.append('%s dispatches no block in v2.11.0' % name)
# binary_facts: what patches/README.md says about v2.11.0's code.
facts = [
    # layer_norm_mps picks its Metal kernel as "layer_norm_single_row_"/"layer_norm_looped_" + dtype
    # (the revision the Normalization.mm hunk's context comes from), not by index width as later.
    (b'layer_norm_single_row_\0', True), (b'layer_norm_looped_\0', True), (b'layer_norm_single_row_i32', False),
    # linalg.solve is MPSMatrixDecompositionLU + MPSMatrixSolveLU; no MPS lu_solve kernel yet.
    (b'solve(): Linear solve failed at the ', True), (b'linalg.lu_solve(): MPS only supports float32', False),
    # arange/range/linspace run MPSGraph graphs (encoded on the stream's queue), not the later Metal
    # kernels whose encoder is taken off the queue (the code pytorch/pytorch#197805 describes).
    (b'linspace_out_mps:\0', True), (b'arange_strided_', False), (b'linspace_integral_', False),
    # MPSStream has no commitAdaptive (the later caller of recordEvents from inside a queue block).
    (b'commitAdaptive', False),
]
for needle, present in facts:
    if (needle in data) != present:
        problems.append('expected %r to be %s the v2.11.0 binary' % (needle, 'in' if present else 'absent from'))
print('%d literals, %d functions, %d dispatching functions, %d facts' % (len(literals), len(functions), len(dispatching), len(facts)))
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PY
)"; then
  pass "binary: .mm context agrees with the v2.11.0 libtorch_cpu.dylib in the wheel ($out)"
else
  fail binary "$(tail -n +2 <<<"$out" | head -n 5 | tr '\n' ' ')"
fi

if [ "$FAILED" = 0 ]; then echo "check-patch: all checks passed"; else echo "check-patch: FAILED"; fi
exit "$FAILED"
