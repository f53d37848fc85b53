#!/usr/bin/env bash
# Static checks of the MPS stream-pool patches (patches/v<VERSION>/), runnable on Linux; idempotent.
# Every check runs for every version (2.11.0 and 2.13.0 unless --version says otherwise) and
# prints one line: "PASS|FAIL|SKIP <check> v<VERSION>: ...". The last line counts them:
#   check-patch: N passed, M skipped (<check> v<VERSION>, ...)[, K failed (<check> v<VERSION>, ...): FAILED]
# A SKIP is not a pass: the summary names every check that did not run, and why is on its line.
# The upstream .mm files that series, context, objc-syntax and mps-emu need are vendored
# (vendor/v<VERSION>/upstream/, see vendor/README.md), so they run without GitHub access.
#
#   headers       every header hunk applies to the exact headers of PyPI's macOS arm64 torch
#                 wheel of that version (downloaded once into the cache; the installer's
#                 TORCH_STABLE_ONLY wrapper lines are stripped).
#   series        the series applied in order gives the same files as the cumulative patch (on the
#                 wheel headers, the context .mm files where fetched, and .mm pre-images rebuilt
#                 from the cumulative patch's own hunks elsewhere).
#   context       every hunk of every .mm file listed in vendor/v<VERSION>/mps-context.lock applies
#                 to that upstream file (scripts/fetch-mps-context.sh: the vendored copy, sha256-
#                 checked against the lock); SKIP when the lock lists none.
#   sources       the whole patch applies to vendor/pytorch-<VERSION> when scripts/vendor-pytorch.sh
#                 has made it; SKIP otherwise.
#   binary        the .mm hunks' context agrees with the wheel's libtorch_cpu.dylib (string literals,
#                 function names) and checks/mps/binary-facts-v<VERSION>.txt holds.
#   header-syntax the patched headers with a plain C++ form compile (g++ -fsyntax-only -Wall
#                 -Wextra) against the c10 headers of the Linux torch of that version (venv).
#   pool-tsan     the pool core header from the patch passes tests/mps_pool/pool_core_stress.cpp
#                 under ThreadSanitizer;
#   reuse-tsan    the allocator's reuse rule passes tests/mps_pool/buffer_reuse_stress.cpp (TSan);
#   queue-model   checks/mps/queue_model.cpp (serial queues, late GPU signals, pooled events, command
#                 buffers with retain counts, the allocator lock) runs the patch's portable headers
#                 under TSan with no report and no violation, and catches bugs 1, 2, 5 and 7 of
#                 issue #16 when they are put back (five mutation runs, each must FAIL).
#   objc-syntax   checks/mps/objc-syntax.sh: clang -fsyntax-only -x objective-c++ of the context .mm
#                 files before and after the patch, against the wheel's ATen/mps headers, the Linux
#                 torch's c10/ATen headers and the emulator's Apple headers (checks/mps/emu/runtime/include/):
#                 0 errors, no warning the patch adds. Lines the lock lists as compile-drop= (a
#                 change of the copy that the release lacks) are left out of the compiled text
#                 before the patch is applied; files it lists as standin= are an earlier window's
#                 text, compiled patched against these headers. Every diagnostic clang prints counts
#                 (also in headers outside the tree, and driver errors).
#   mps-emu       checks/mps/emu/run.sh, when present, given the same base and patched trees that
#                 objc-syntax compiles: PASS on exit 0, SKIP on exit 3, FAIL otherwise (its last
#                 stdout line is the message); SKIP when run.sh is not present or --no-emu is given.
#
# Needs g++, curl, python3; installs Debian's clang and llvm (apt-get) when missing.
# Usage: scripts/check-patch.sh [--version 2.11.0|2.13.0] [--no-tsan] [--no-emu] [--help]
# Exits 1 when any check fails (a SKIP alone does not fail the run, but the summary lists it).
set -euo pipefail
trap 'echo "[check-patch] error: command failed at line $LINENO" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
WHEELS="$CACHE/wheels"
RUN_TSAN=1
RUN_EMU=1
VERSIONS=(2.11.0 2.13.0)

while [ $# -gt 0 ]; do
  case "$1" in
    --no-tsan) RUN_TSAN=0 ;;
    --no-emu) RUN_EMU=0 ;;
    --version)
      case "${2:-}" in 2.11.0|2.13.0) VERSIONS=("$2") ;; *) echo "check-patch.sh: --version 2.11.0|2.13.0" >&2; exit 2 ;; esac
      shift ;;
    -h|--help) sed -n "2,$(($(grep -n -m1 '^set -euo pipefail' "$0" | cut -d: -f1) - 1))p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-patch.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# Debian packages the checks use: clang (objc-syntax), llvm (llvm-nm, for the binary facts).
# Quick when already installed; failures surface in the checks that need them.
ensure_debian_packages() {
  local need=()
  command -v clang++ >/dev/null || need+=(clang)
  { command -v llvm-nm || command -v llvm-nm-14; } >/dev/null || need+=(llvm)
  [ "${#need[@]}" = 0 ] && return 0
  command -v apt-get >/dev/null || return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "[check-patch] installing Debian packages: ${need[*]}" >&2
  { $sudo apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "${need[@]}" >/dev/null 2>&1; }; } || true
}
ensure_debian_packages

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Every result line is printed and appended to $RESULTS, from whichever process prints it (the TSan
# checks run in a pipeline, i.e. a subshell); the summary counts $RESULTS.
RESULTS="$WORK/results"; : > "$RESULTS"
emit() { echo "$1"; echo "$1" >> "$RESULTS"; }
pass() { emit "PASS $1 v$V: $2"; }
fail() { emit "FAIL $1 v$V: $2"; }
skip() { emit "SKIP $1 v$V: $2"; }
oneline() { tr '\n' ' ' | cut -c1-400; }

# PyPI has no macosx_11_0_arm64 torch wheels after 2.11.
wheel_tag() { case "$1" in 2.11.*) echo macosx_11_0_arm64 ;; *) echo macosx_14_0_arm64 ;; esac; }
find_wheel() { [ -d "$WHEELS" ] || return 0; find "$WHEELS" -maxdepth 1 -name "torch-$1-*-$(wheel_tag "$1").whl" | sort | head -n 1; }

# Patches and lock files are read by scripts/patchtools/patchtools.py (see its --help):
#   pt files PATCH            "path new|old" per file of a patch: new when the patch creates it;
#   pt preimage PATCH PATH    a pre-image of PATH rebuilt from the patch's hunks (each hunk's old
#                             lines at its stated line numbers, unique filler lines in between);
#   pt hunks PATCH PATH...    the number of hunks in those files;
#   pt lock LOCK KEY [PATH]   a lock file's KEY= lines; pt drop-lines FILE SPEC.
pt() { python3 "$ROOT/scripts/patchtools/patchtools.py" "$@"; }

# tsan_run NAME SOURCE BIN INCLUDE_DIR [extra g++ args]: compiles and runs under TSan (without ASLR
# if the kernel's mmap layout upsets TSan); sets TSAN_OUT and TSAN_RC.
tsan_run() {
  local name="$1" src="$2" bin="$3" inc="$4"; shift 4
  TSAN_RC=0
  if ! TSAN_OUT="$(g++ -std=c++17 -O1 -g -fsanitize=thread -pthread -I"$inc" "$@" "$src" -o "$bin" 2>&1)"; then
    TSAN_RC=127; return
  fi
  TSAN_OUT="$(TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0" "$bin" 2>&1)" || TSAN_RC=$?
  if grep -q "unexpected memory mapping" <<<"$TSAN_OUT"; then
    TSAN_RC=0
    TSAN_OUT="$(TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0" setarch "$(uname -m)" -R "$bin" 2>&1)" || TSAN_RC=$?
  fi
}

check_version() {
  V="$1"
  local PATCH="$ROOT/patches/v$V/tch-streams-mps-v$V.patch"
  local SERIES_DIR="$ROOT/patches/v$V/series"
  local W="$WORK/v$V"; mkdir -p "$W"
  if [ ! -f "$PATCH" ]; then fail patch "missing $PATCH"; return; fi
  local SERIES=()
  mapfile -t SERIES < <(find "$SERIES_DIR" -maxdepth 1 -name '[0-9][0-9][0-9][0-9]-*.patch' | sort)
  if [ "${#SERIES[@]}" = 0 ]; then fail series "no patches in $SERIES_DIR"; return; fi

  # --- the wheel ---------------------------------------------------------------------------------
  local WHEEL; WHEEL="$(find_wheel "$V")"
  if [ -z "$WHEEL" ]; then
    mkdir -p "$WHEELS"
    echo "[check-patch] downloading PyPI's $(wheel_tag "$V") torch==$V wheel (~100 MB, once) into $WHEELS" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$(wheel_tag "$V")" \
      "torch==$V" -d "$WHEELS" >&2 || true
    WHEEL="$(find_wheel "$V")"
  fi
  if [ -z "$WHEEL" ]; then
    fail headers "the $(wheel_tag "$V") torch==$V wheel is not in $WHEELS and could not be downloaded (python3 -m pip download --no-deps --only-binary=:all: --platform $(wheel_tag "$V") torch==$V -d $WHEELS)"
    return
  fi
  unzip -q -o "$WHEEL" 'torch/include/ATen/mps/*' 'torch/include/ATen/native/mps/*' 'torch/lib/libtorch_cpu.dylib' -d "$W/wheel"

  # --- context .mm files (real upstream text) ----------------------------------------------------
  local CTX; CTX="$("$ROOT/scripts/fetch-mps-context.sh" --print-dir "$V")"
  local CTX_OK=1 CTX_RC=0
  "$ROOT/scripts/fetch-mps-context.sh" "$V" >"$W/fetch.log" 2>&1 || CTX_RC=$?
  [ "$CTX_RC" = 0 ] || CTX_OK=0
  # Exit 3: a listed file is not vendored (vendor/v<VERSION>/upstream/) and the upstream host cannot
  # be reached from this machine. The checks that need the real files then skip (saying so) rather
  # than fail; a vendored or downloaded file with the wrong sha256 fails.
  ctx_missing() { # CHECK WHAT
    if [ "$CTX_RC" = 3 ]; then
      skip "$1" "$2: a listed upstream .mm file is not vendored and could not be downloaded here ($(oneline < "$W/fetch.log")); vendor it or set TCH_STREAMS_GITHUB_RAW to a mirror to run it"
    else
      fail "$1" "$2: $(oneline < "$W/fetch.log")"
    fi
  }
  local CTX_FILES=() DROPS=()
  local LOCK="$ROOT/vendor/v$V/mps-context.lock"
  mapfile -t CTX_FILES < <(pt lock "$LOCK" file | cut -d' ' -f1)
  # compile-drop=PATH LINES REASON: lines (e.g. 6,68-73,75, numbered in the fetched, sha256-checked
  # file) that objc-syntax leaves out of a context file before patching and compiling it: a
  # change the copy carries that the release lacks. `context` still checks the whole file.
  mapfile -t DROPS < <(pt lock "$LOCK" compile-drop)
  # standin=VERSION PATH REASON: objc-syntax also compiles PATH as that earlier version's window
  # text (its own lock, fetched and sha256-checked), patched by this version's patch, against this
  # version's headers: a stand-in where this version's window text was not found. `context`
  # ignores stand-ins (they are not this version's text).
  local STANDINS=() STANDIN_OK=1
  mapfile -t STANDINS < <(pt lock "$LOCK" standin)

  # --- base tree: wheel headers (wrapper stripped) + context .mm + rebuilt pre-images ------------
  local BASE="$W/base"; mkdir -p "$BASE"
  pt files "$PATCH" > "$W/files"
  local WRAP_HEAD='#if !defined(TORCH_STABLE_ONLY) && !defined(TORCH_TARGET_VERSION)'
  local WRAP_TAIL
  WRAP_TAIL="$(printf '%s\n' '' '#else' \
    '#error "This file should not be included when either TORCH_STABLE_ONLY or TORCH_TARGET_VERSION is defined."' \
    '#endif  // !defined(TORCH_STABLE_ONLY) && !defined(TORCH_TARGET_VERSION)')"
  local HEADERS_OK=1 path kind src n
  while read -r path kind; do
    [ "$kind" = new ] && continue
    mkdir -p "$BASE/$(dirname "$path")"
    case "$path" in
      aten/src/ATen/*.h)
        src="$W/wheel/torch/include/${path#aten/src/}"
        if [ ! -f "$src" ]; then fail headers "$path is not in the wheel"; HEADERS_OK=0; continue; fi
        n="$(wc -l < "$src")"
        if [ "$(head -n 1 "$src")" != "$WRAP_HEAD" ] || [ "$(tail -n 4 "$src")" != "$WRAP_TAIL" ]; then
          fail headers "$src does not carry the expected installer wrapper lines; update check-patch.sh"
          HEADERS_OK=0; continue
        fi
        sed -n "2,$((n - 4))p" "$src" > "$BASE/$path" ;;
      *)
        if [ "$CTX_OK" = 1 ] && [ -f "$CTX/$path" ]; then cp "$CTX/$path" "$BASE/$path"
        else pt preimage "$PATCH" "$path" > "$BASE/$path"; fi ;;
    esac
  done < "$W/files"
  local out

  # headers
  if [ "$HEADERS_OK" = 1 ]; then
    local H="$W/h"; cp -r "$BASE" "$H"
    if out="$(cd "$H" && git apply --check --verbose --include='aten/src/ATen/*.h' "$PATCH" 2>&1)"; then
      pass headers "$(grep -c '^Checking patch .*\.h' <<<"$out") header files (new ones included) apply to the v$V wheel headers ($(basename "$WHEEL"))"
    else
      fail headers "$(grep -E '^error:' <<<"$out" | head -n 5 | oneline)"
    fi
  fi

  # series == cumulative
  # applied: the cumulative patch applied to the base in $A (what header-syntax and the TSan
  # checks compile); it can be even when the series cannot be checked.
  local A="$W/cumulative" B="$W/series" p series_ok=1 applied=0 d
  cp -r "$BASE" "$A"; cp -r "$BASE" "$B"
  if [ "${#CTX_FILES[@]}" -gt 0 ] && [ "$CTX_OK" = 0 ]; then
    # the series' intermediate steps touch upstream lines that only the real files have
    ctx_missing series "needs the context .mm files"
    series_ok=0
    # The .mm pre-images were rebuilt from the patch itself: the cumulative patch applies to them.
    (cd "$A" && git apply "$PATCH" >/dev/null 2>&1) && applied=1
  elif ! out="$(cd "$A" && git apply "$PATCH" 2>&1)"; then
    fail series "the cumulative patch does not apply to its own base: $(head -n 3 <<<"$out" | oneline)"
    series_ok=0
  else
    applied=1
    for p in "${SERIES[@]}"; do
      if ! out="$(cd "$B" && git apply "$p" 2>&1)"; then
        fail series "$(basename "$p") does not apply after the ones before it: $(head -n 3 <<<"$out" | oneline)"
        series_ok=0; break
      fi
    done
    if [ "$series_ok" = 1 ]; then
      if d="$(diff -r "$A" "$B")"; then
        pass series "${#SERIES[@]} series patches in order == cumulative patch"
      else
        fail series "series and cumulative patch differ: $(head -n 8 <<<"$d" | oneline)"
      fi
    fi
  fi

  # context
  if [ "${#CTX_FILES[@]}" = 0 ]; then
    skip context "no upstream .mm source of the v$V window is listed in vendor/v$V/mps-context.lock"
  elif [ "$CTX_OK" = 0 ]; then
    ctx_missing context "scripts/fetch-mps-context.sh $V"
  else
    local C="$W/ctx" inc=() f
    mkdir -p "$C"
    for f in "${CTX_FILES[@]}"; do mkdir -p "$C/$(dirname "$f")"; cp "$CTX/$f" "$C/$f"; inc+=(--include="$f"); done
    if out="$(cd "$C" && git apply --check --verbose "${inc[@]}" "$PATCH" 2>&1)"; then
      local nh; nh="$(pt hunks "$PATCH" "${CTX_FILES[@]}")"
      pass context "all $nh hunks of ${#CTX_FILES[@]} .mm files apply to the upstream text ($(pt lock "$LOCK" repo)@$(pt lock "$LOCK" commit | cut -c1-8), renames reversed)"
    else
      fail context "$(grep -E '^error' <<<"$out" | head -n 3 | oneline)"
    fi
  fi

  # sources
  local VENDOR="$ROOT/vendor/pytorch-$V"
  if [ -d "$VENDOR/.git" ] || [ -f "$VENDOR/.git" ]; then
    if ! "$ROOT/scripts/vendor-pytorch.sh" --check "$V" >/dev/null 2>&1; then
      fail sources "vendor/pytorch-$V is not at the commit in vendor/v$V/pytorch.lock"
    elif (cd "$VENDOR" && git apply --check "$PATCH" 2>/dev/null); then
      pass sources "the whole patch applies to vendor/pytorch-$V"
    elif (cd "$VENDOR" && git apply --reverse --check "$PATCH" 2>/dev/null); then
      pass sources "vendor/pytorch-$V already carries the whole patch"
    else
      fail sources "$(cd "$VENDOR" && git apply --check "$PATCH" 2>&1 | head -n 3 | oneline)"
    fi
  else
    skip sources "no vendor/pytorch-$V (scripts/vendor-pytorch.sh $V clones it; several GB)"
  fi

  # binary
  if out="$(python3 "$ROOT/checks/mps/binary_check.py" "$PATCH" "$W/wheel/torch/lib/libtorch_cpu.dylib" \
              "$ROOT/checks/mps/binary-facts-v$V.txt" 2>&1)"; then
    pass binary ".mm context agrees with the v$V libtorch_cpu.dylib in the wheel ($out)"
  else
    fail binary "$(tail -n +2 <<<"$out" | head -n 5 | oneline)"
  fi

  # header-syntax
  local TORCH_INC
  TORCH_INC="$(find "$CACHE/venv-$V" -maxdepth 6 -type d -path '*/site-packages/torch/include' 2>/dev/null | sort | head -n 1 || true)"
  if ! command -v g++ >/dev/null; then
    fail header-syntax "g++ is not installed (apt-get install g++)"
  elif [ -z "$TORCH_INC" ] || [ ! -f "$TORCH_INC/c10/core/Allocator.h" ]; then
    skip header-syntax "no Linux torch $V include directory in $CACHE/venv-$V (TCH_STREAMS_TORCH=$V scripts/setup.sh makes it)"
  elif [ "$applied" = 0 ]; then
    skip header-syntax "the cumulative patch could not be applied to its base (see series)"
  else
    local defs=()
    # from 2.13 on IMPSAllocator derives from c10::DeviceAllocator (non-const recordStream)
    [ "$V" = 2.11.0 ] || defs=(-DTCH_STREAMS_DEVICE_ALLOCATOR)
    if out="$(g++ -std=c++17 -fsyntax-only -Wall -Wextra -D_GLIBCXX_USE_CXX11_ABI=1 "${defs[@]}" -I"$A/aten/src" \
                -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" "$ROOT/checks/mps/header_syntax.cpp" 2>&1)"; then
      pass header-syntax "patched MPSAllocatorInterface.h, MetalShaderLibrary.h (non-Objective-C form) and the portable headers compile against the c10 headers of Linux torch $V"
    else
      fail header-syntax "$(grep -E 'error|warning' <<<"$out" | head -n 3 | oneline)"
    fi
  fi

  # TSan checks
  if [ "$RUN_TSAN" = 0 ]; then
    skip pool-tsan "--no-tsan given"; skip reuse-tsan "--no-tsan given"; skip queue-model "--no-tsan given"
  elif ! command -v g++ >/dev/null; then
    fail pool-tsan "g++ is not installed"; fail reuse-tsan "g++ is not installed"; fail queue-model "g++ is not installed"
  elif [ "$applied" = 0 ]; then
    skip pool-tsan "the cumulative patch could not be applied (see series)"
    skip reuse-tsan "the cumulative patch could not be applied (see series)"
    skip queue-model "the cumulative patch could not be applied (see series)"
  else
    local INC="$W/inc"; mkdir -p "$INC/ATen/mps"
    cp "$A"/aten/src/ATen/mps/MPS{StreamPoolCore,BufferStreamUse,EventCore}.h "$INC/ATen/mps/" 2>/dev/null || true
    # The TSan checks run only the portable headers (and our test sources): when a version's
    # headers are byte-identical to an earlier version's in this run, its results stand for both.
    local key; key="$(cat "$INC"/ATen/mps/*.h | sha256sum | cut -c1-16)"
    if [ -f "$WORK/tsan-$key" ]; then
      while IFS= read -r line; do
        emit "${line/ v$(cat "$WORK/tsan-$key.version"):/ v$V:} (portable headers identical to v$(cat "$WORK/tsan-$key.version")'s, sha256 $key…: result of that run)"
      done < "$WORK/tsan-$key"
    else
      # tsan_checks runs in a subshell: its pass/fail lines reach $RESULTS through emit.
      tsan_checks "$INC" "$W" | tee "$WORK/tsan-$key"
      echo "$V" > "$WORK/tsan-$key.version"
    fi
  fi

  # The trees objc-syntax compiles and mps-emu is given, before ($OB) and after ($OA) the patch:
  # the base (wheel headers, context .mm files) with the compile-drop lines left out and the
  # stand-ins put in. A .mm file the patch touches that has no upstream text here (its pre-image
  # was rebuilt from the patch's own hunks) is left out of both once the patch has applied.
  # TREES_WHY says why there are none: "ctx" (context files missing, see ctx_missing), or a reason;
  # TREES_FAILED=1 when that reason is a failure of these trees themselves.
  local TORCH_INC_L="${TORCH_INC:-}" OB="$W/objc-base" OA="$W/objc-patched" dropped="" d_path d_lines s_ver s_path s_dir s_rc m stood=()
  local OBJC_FILES=("${CTX_FILES[@]}") TREES_WHY="" TREES_FAILED=0
  if [ "${#CTX_FILES[@]}" = 0 ]; then
    TREES_WHY="no upstream .mm source of the v$V window to compile (vendor/v$V/mps-context.lock)"
  elif [ "$CTX_OK" = 0 ]; then
    TREES_WHY=ctx
  elif [ -z "$TORCH_INC_L" ] || [ ! -f "$TORCH_INC_L/c10/core/Allocator.h" ]; then
    TREES_WHY="no Linux torch $V include directory in $CACHE/venv-$V (TCH_STREAMS_TORCH=$V scripts/setup.sh makes it)"
  elif [ "$series_ok" != 1 ]; then
    TREES_WHY="no patched tree to compile: the series check did not pass (see series v$V)"
  else
    rm -rf "$OB" "$OA"; cp -r "$BASE" "$OB"
    for d in "${STANDINS[@]}"; do
      read -r s_ver s_path <<<"$d"
      s_dir="$("$ROOT/scripts/fetch-mps-context.sh" --print-dir "$s_ver")"
      s_rc=0; "$ROOT/scripts/fetch-mps-context.sh" "$s_ver" >>"$W/fetch.log" 2>&1 || s_rc=$?
      if [ "$s_rc" = 0 ] && [ -f "$s_dir/$s_path" ]; then
        cp "$s_dir/$s_path" "$OB/$s_path"; OBJC_FILES+=("$s_path"); stood+=("$(basename "$s_path")")
      elif [ "$s_rc" = 3 ]; then
        STANDIN_OK=0
      else
        TREES_WHY="stand-in $s_path (v$s_ver window): scripts/fetch-mps-context.sh $s_ver exited $s_rc: $(oneline < "$W/fetch.log")"
        TREES_FAILED=1; break
      fi
    done
    if [ "$TREES_FAILED" = 0 ]; then
      for d in "${DROPS[@]}"; do
        read -r d_path d_lines <<<"$d"
        pt drop-lines "$BASE/$d_path" "$d_lines" > "$OB/$d_path"
        dropped+="; $(basename "$d_path"): upstream-copy lines $d_lines left out (vendor/v$V/mps-context.lock)"
      done
      cp -r "$OB" "$OA"
      if ! out="$(cd "$OA" && git apply "$PATCH" 2>&1)"; then
        TREES_WHY="the patch does not apply once the compile-drop lines are left out and the stand-ins put in: $(head -n 3 <<<"$out" | oneline)"
        TREES_FAILED=1
      else
        while IFS= read -r m; do
          printf '%s\n' "${OBJC_FILES[@]}" | grep -qxF "$m" || rm -f "$OB/$m" "$OA/$m"
        done < <(cd "$OB" && find . -name '*.mm' | sed 's#^\./##')
      fi
    fi
  fi

  # objc-syntax
  if [ "$TREES_WHY" = ctx ]; then
    ctx_missing objc-syntax "needs the context .mm files"
  elif [ "$TREES_FAILED" = 1 ]; then
    fail objc-syntax "$TREES_WHY"
  elif [ -n "$TREES_WHY" ]; then
    skip objc-syntax "$TREES_WHY"
  else
    [ "${#stood[@]}" -gt 0 ] && dropped+="; ${stood[*]}: the v${STANDINS[0]%% *} window's text as a stand-in, patched by v$V's patch"
    [ "$STANDIN_OK" = 1 ] || dropped+="; stand-ins not available here (a file of their window is neither vendored nor downloadable): left out"
    if out="$("$ROOT/checks/mps/objc-syntax.sh" "$V" "$OB" "$OA" "$W/wheel/torch/include" "$TORCH_INC_L" "${OBJC_FILES[@]}" 2>&1)"; then
      pass objc-syntax "$(tail -n 1 <<<"$out")$dropped"
    else
      fail objc-syntax "$(tail -n 1 <<<"$out"): $(head -n -1 <<<"$out" | tail -n 3 | oneline)"
    fi
  fi

  # mps-emu: checks/mps/emu/run.sh builds and runs the same trees against the emulated Metal device.
  # Contract: progress on stderr (passed through), the last stdout line is the message; exit 0 =
  # pass, 3 = skip, anything else = fail.
  local EMU="$ROOT/checks/mps/emu/run.sh" emu_rc=0 emu_msg
  if [ "$RUN_EMU" = 0 ]; then
    skip mps-emu "--no-emu given"
  elif [ ! -e "$EMU" ]; then
    skip mps-emu "checks/mps/emu/run.sh not present"
  elif [ ! -x "$EMU" ]; then
    fail mps-emu "checks/mps/emu/run.sh is not executable"
  elif [ "$TREES_WHY" = ctx ]; then
    ctx_missing mps-emu "needs the context .mm files"
  elif [ "$TREES_FAILED" = 1 ]; then
    fail mps-emu "no trees to build: $TREES_WHY"
  elif [ -n "$TREES_WHY" ]; then
    skip mps-emu "$TREES_WHY"
  else
    mkdir -p "$W/emu"
    echo "[check-patch] mps-emu v$V: checks/mps/emu/run.sh" >&2
    { "$EMU" --version "$V" --base "$OB" --patched "$OA" --wheel-include "$W/wheel/torch/include" \
        --torch-include "$TORCH_INC_L" --work "$W/emu" --cache "$CACHE/mps-emu" 2>&1 1>&3 3>&- | tee "$W/emu.err" >&2; } 3>"$W/emu.out" || emu_rc=$?
    emu_msg="$(tail -n 1 "$W/emu.out")"
    case "$emu_rc" in
      0)
        if [ -n "$emu_msg" ]; then pass mps-emu "$emu_msg"
        else fail mps-emu "run.sh exited 0 without a message (its last stdout line)"; fi ;;
      3) skip mps-emu "${emu_msg:-run.sh exited 3 without a message}" ;;
      *) fail mps-emu "exit $emu_rc: $(tail -n 3 "$W/emu.out" | oneline)$( [ -s "$W/emu.err" ] && echo "| stderr: $(tail -n 3 "$W/emu.err" | oneline)")" ;;
    esac
  fi
}

# tsan_checks INC WORKDIR: pool-tsan, reuse-tsan and queue-model on the portable headers in INC.
# Runs in a pipeline (a subshell): its lines are counted through emit's $RESULTS.
tsan_checks() {
  local INC="$1" W="$2"
  tsan_run pool-tsan "$ROOT/crates/tch-streams/tests/mps_pool/pool_core_stress.cpp" "$W/pool" "$INC"
  if [ "$TSAN_RC" = 0 ] && grep -q '^PASS pool_core_stress' <<<"$TSAN_OUT"; then
    pass pool-tsan "$(grep -m1 '^pool-core: exclusive' <<<"$TSAN_OUT" | cut -d' ' -f3-), no ThreadSanitizer report"
  else
    fail pool-tsan "exit $TSAN_RC: $(grep -E 'FAIL|CHECK FAILED|WARNING: ThreadSanitizer|error' <<<"$TSAN_OUT" | head -n 3 | oneline)"
  fi
  tsan_run reuse-tsan "$ROOT/crates/tch-streams/tests/mps_pool/buffer_reuse_stress.cpp" "$W/reuse" "$INC"
  if [ "$TSAN_RC" = 0 ] && grep -q '^PASS buffer_reuse_stress' <<<"$TSAN_OUT"; then
    pass reuse-tsan "$(grep -m1 '^buffer-reuse: stress' <<<"$TSAN_OUT" | cut -d' ' -f3-), no ThreadSanitizer report"
  else
    fail reuse-tsan "exit $TSAN_RC: $(grep -E 'FAIL|CHECK FAILED|WARNING: ThreadSanitizer|error' <<<"$TSAN_OUT" | head -n 3 | oneline)"
  fi
  queue_model "$INC" "$W"
}

# queue_model INC WORKDIR: the fixed design must pass; each mutation must be caught.
queue_model() {
  local inc="$1" w="$2" src="$ROOT/checks/mps/queue_model.cpp" m caught=() missed=()
  tsan_run queue-model "$src" "$w/qm" "$inc"
  if [ "$TSAN_RC" != 0 ] || ! grep -q '^PASS queue_model' <<<"$TSAN_OUT"; then
    fail queue-model "fixed design: exit $TSAN_RC: $(grep -E 'FAIL|VIOLATION|WARNING: ThreadSanitizer|error' <<<"$TSAN_OUT" | head -n 3 | oneline)"
    return
  fi
  local summary; summary="$(grep -m1 '^queue-model: summary' <<<"$TSAN_OUT" | cut -d' ' -f3-)"
  # Mutations put bugs 1, 2, 5 and 7 of issue #16 back, in the patch's own header (edited copy) or in
  # the model of the .mm lines that fixed them; each run must fail (a violation or a TSan report).
  for m in bug1-reset-and-reuse bug1-reuse-unsettled bug2-leak-prev-buffer bug5-wait-dispatches bug7-no-queue-frames; do
    local mi="$w/inc-$m"; rm -rf "$mi"; cp -r "$inc" "$mi"
    local flags=()
    case "$m" in
      bug1-reset-and-reuse)
        # What v2.11.0 did: a new holder starts the values again from 0 (MPSEventCore.h's onAcquire;
        # the model's reset() also zeroes signaledValue) and the pool hands out any free event.
        sed -i 's/^    acquired_at_ = target();$/    counter_.store(0, std::memory_order_release);  acquired_at_ = 0;/' "$mi/ATen/mps/MPSEventCore.h"
        sed -i 's/^    if (settled(\*it)) {$/    if (true) {/' "$mi/ATen/mps/MPSEventCore.h"
        flags=(-DQM_RESET_SIGNALED_ON_ACQUIRE) ;;
      bug1-reuse-unsettled)
        # MPSEventCore.h: values kept, but the pool hands out the first free event, settled or not.
        sed -i 's/^    if (settled(\*it)) {$/    if (true) {/' "$mi/ATen/mps/MPSEventCore.h" ;;
      bug2-leak-prev-buffer)
        flags=(-DQM_MUTATE_FLUSH_OVERWRITES_PREV) ;;
      bug5-wait-dispatches)
        flags=(-DQM_MUTATE_WAITON_ALWAYS_DISPATCHES) ;;
      bug7-no-queue-frames)
        flags=(-DQM_MUTATE_NO_FRAMES) ;;
    esac
    if cmp -s "$mi/ATen/mps/MPSEventCore.h" "$inc/ATen/mps/MPSEventCore.h" && [ "${#flags[@]}" = 0 ]; then
      missed+=("$m(mutation did not apply)"); continue
    fi
    tsan_run queue-model "$src" "$w/qm-$m" "$mi" "${flags[@]}"
    if [ "$TSAN_RC" = 127 ]; then missed+=("$m(compile failed: $(head -n 2 <<<"$TSAN_OUT" | oneline))")
    elif [ "$TSAN_RC" != 0 ] && grep -qE 'VIOLATION|WARNING: ThreadSanitizer' <<<"$TSAN_OUT"; then caught+=("$m")
    else missed+=("$m"); fi
  done
  if [ "${#missed[@]}" = 0 ]; then
    pass queue-model "$summary; no TSan report; mutations caught: ${caught[*]}"
  else
    fail queue-model "mutations not caught: ${missed[*]}"
  fi
}

for v in "${VERSIONS[@]}"; do
  check_version "$v"
done

# names KIND: "check vVERSION, ..." of the result lines of that kind
names() { sed -n "s/^$1 \([^ ]*\) \(v[0-9.]*\): .*/\1 \2/p" "$RESULTS" | paste -sd, - | sed 's/,/, /g'; }
n_pass="$(grep -c '^PASS ' "$RESULTS" || true)"
n_skip="$(grep -c '^SKIP ' "$RESULTS" || true)"
n_fail="$(grep -c '^FAIL ' "$RESULTS" || true)"
summary="check-patch: $n_pass passed, $n_skip skipped"
[ "$n_skip" = 0 ] || summary+=" ($(names SKIP))"
if [ "$n_fail" != 0 ]; then
  echo "$summary, $n_fail failed ($(names FAIL)): FAILED"
  exit 1
fi
if [ "$n_pass" = 0 ]; then
  echo "$summary: FAILED (no check passed)"
  exit 1
fi
echo "$summary"
