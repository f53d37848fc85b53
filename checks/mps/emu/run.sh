#!/usr/bin/env bash
# mps-emu: runs the real upstream ATen/mps sources of a release window, with our cumulative patch
# applied, on an emulated Metal device on Linux, under ThreadSanitizer and AddressSanitizer
# (README.md in this directory says what is real, what is emulated and what is stood in).
#
#   1. builds the emulator (runtime/build.sh) and the test programs (build-backend.sh) for both
#      sanitizers, from PATCHED_TREE;
#   2. runs the stress test (31 threads x 100 iterations, one pool stream each) under each;
#   3. runs the targeted tests (h1 h2 h3 m1 m2 m4 turn2-event-reuse turn2-leak-prev) under each;
#   4. for every mutations/v<VERSION>/*.patch: applies it to a copy of PATCHED_TREE (git apply),
#      rebuilds what changed, runs the test(s) its first line names ("# test: h1"; default: the
#      file name's first word) and expects them to FAIL (a value check, an emulator violation, a
#      sanitizer report, a deadline or the watchdog).
# Prints progress on stderr and the result's message as the last stdout line (check-patch prints it
# as "PASS|FAIL|SKIP mps-emu v<VERSION>: <message>"; stderr ends with that line too).
# Exit 0 pass, 1 fail, 3 skip (a file the version's window needs is missing; the line says which).
#
# Usage:
#   run.sh --version V --base BASE_TREE --patched PATCHED_TREE --wheel-include DIR
#          --torch-include DIR --work DIR                      (what scripts/check-patch.sh calls)
#   run.sh --from-repo --version V [--work DIR]                 (by hand: makes the trees itself,
#          with prepare-trees.sh, and takes the Linux torch from ${TCH_STREAMS_HOME:-~/.cache/
#          tch-streams}/venv-V)
# Options: --patch FILE  (with --from-repo) another cumulative patch for V, e.g. an earlier one:
#          git show HEAD~3:patches/v2.11.0/tch-streams-mps-v2.11.0.patch > /tmp/p; --patch /tmp/p;
#          --cache DIR  where built objects and emulator builds are kept (default WORK/cache; with
#          --from-repo ${TCH_STREAMS_HOME:-~/.cache/tch-streams}/mps-emu); both versions may share one;
#          --only "stress h1 ..."  run only these tests (and only the mutations naming them);
#          --no-mutations; --no-asan; --keep (leave WORK's logs; they are kept anyway when WORK
#          was given).
# BASE_TREE is accepted for symmetry with objc-syntax and only checked for presence: the tests run
# the patched code (the mutations are what shows that they can fail).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
START=$SECONDS
V="" BASE="" PATCHED="" WHEEL_INC="" TORCH_INC="" WORK="" FROM_REPO=0 ONLY="" MUTATIONS=1 ASAN=1 PATCH_FILE="" CACHE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --version) V="$2"; shift ;;
    --base) BASE="$2"; shift ;;
    --patched) PATCHED="$2"; shift ;;
    --wheel-include) WHEEL_INC="$2"; shift ;;
    --torch-include) TORCH_INC="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --from-repo) FROM_REPO=1 ;;
    --cache) CACHE="$2"; shift ;;
    --patch) PATCH_FILE="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
    --only) ONLY="$2"; shift ;;
    --no-mutations) MUTATIONS=0 ;;
    --no-asan) ASAN=0 ;;
    --keep) ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$V" in 2.11.0|2.13.0) ;; *) echo "run.sh: --version 2.11.0|2.13.0" >&2; exit 2 ;; esac
log() { echo "[mps-emu v$V] $*" >&2; }
elapsed() { local s=$((SECONDS - START)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
# The last stdout line is the message alone: check-patch prints it after "PASS|FAIL|SKIP mps-emu
# v<VERSION>: " (so does stderr here, for runs by hand).
finish() { # STATUS(pass|fail|skip) MESSAGE
  local msg="$2"
  [ "$1" = skip ] || msg+=" ($(elapsed))"
  echo "$(tr a-z A-Z <<<"$1") mps-emu v$V: $msg" >&2
  echo "$msg"
  case "$1" in pass) exit 0 ;; skip) exit 3 ;; *) exit 1 ;; esac
}

if [ -z "$WORK" ]; then WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

if [ "$FROM_REPO" = 1 ]; then
  log "preparing the trees from this repository (prepare-trees.sh)"
  WHEEL_INC="$("$HERE/prepare-trees.sh" "$V" "$WORK/trees" $PATCH_FILE | tail -n 1)" \
    || finish fail "prepare-trees.sh could not make the v$V trees (does the patch apply?)"
  BASE="$WORK/trees/base" PATCHED="$WORK/trees/patched"
  [ -n "$CACHE" ] || CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}/mps-emu"
  if [ -z "$TORCH_INC" ]; then
    TORCH_INC="$(find "${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}/venv-$V" -maxdepth 6 -type d \
      -path '*/site-packages/torch/include' 2>/dev/null | sort | head -n 1 || true)"
  fi
fi
[ -n "$CACHE" ] || CACHE="$WORK/cache"
mkdir -p "$CACHE"; CACHE="$(cd "$CACHE" && pwd)"
[ -n "$BASE" ] && [ -n "$PATCHED" ] && [ -n "$WHEEL_INC" ] && [ -n "$TORCH_INC" ] \
  || { echo "run.sh: --base, --patched, --wheel-include and --torch-include are required (or --from-repo)" >&2; exit 2; }
[ -f "$TORCH_INC/c10/core/Allocator.h" ] || finish skip "no Linux torch $V headers in $TORCH_INC (TCH_STREAMS_TORCH=$V scripts/setup.sh makes the venv)"
[ -f "$TORCH_INC/../lib/libtorch_cpu.so" ] || finish skip "no libtorch_cpu.so beside $TORCH_INC (../lib)"

# What the emulator builds with: Debian's clang, GCC's Objective-C runtime, the blocks runtime.
# Installed with apt-get when missing (as check-patch installs clang); a skip names what is missing.
ensure_packages() {
  local need=() gccv
  command -v clang++ >/dev/null || command -v clang++-14 >/dev/null || need+=(clang)
  gccv="$(gcc -dumpversion 2>/dev/null | cut -d. -f1 || true)"
  [ -n "$gccv" ] && [ -e "$(gcc -print-file-name=libobjc.so)" ] || need+=("libobjc-${gccv:-12}-dev")
  [ -e /usr/include/Block.h ] || need+=(libblocksruntime-dev)
  [ "${#need[@]}" = 0 ] && return 0
  if command -v apt-get >/dev/null; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    log "installing Debian packages: ${need[*]}"
    { $sudo apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
      || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "${need[@]}" >/dev/null 2>&1; }; } || true
  fi
  { command -v clang++ || command -v clang++-14; } >/dev/null && [ -e "$(gcc -print-file-name=libobjc.so)" ] \
    && [ -e /usr/include/Block.h ] \
    || finish skip "the emulator needs Debian's ${need[*]} (apt-get install ${need[*]}), which could not be installed here"
}
ensure_packages

# What each version's window has: upstream files compiled patched, and our stand-ins.
case "$V" in
  2.11.0)
    SOURCES="MPSStream.mm MPSEvent.mm MPSGuardImpl.mm MPSHooks.mm MPSAllocator.mm"
    STANDINS="device.mm profiler.mm generator.mm"
    STOOD="MPSDevice.mm, MPSProfiler.mm, MPSGeneratorImpl.mm (stand-ins of ours; not needed by the stream layer)"
    MINOR=11 ;;
  2.13.0)
    SOURCES="MPSStream.mm MPSEvent.mm MPSGuardImpl.mm"
    STANDINS="device.mm profiler.mm generator.mm allocator.mm"
    STOOD="MPSAllocator.mm, MPSHooks.mm: no v2.13-window text, stand-ins (allocator: ours; hooks: not linked); MPSEvent.mm, MPSGuardImpl.mm: v2.11-window text; MPSDevice.mm, MPSProfiler.mm, MPSGeneratorImpl.mm: stand-ins of ours"
    MINOR=13 ;;
esac
missing=()
for f in $SOURCES; do
  [ -f "$PATCHED/aten/src/ATen/mps/$f" ] || missing+=("$f")
  [ -f "$BASE/aten/src/ATen/mps/$f" ] || missing+=("$f (base tree)")
done
[ "${#missing[@]}" = 0 ] || finish skip "the v$V trees lack aten/src/ATen/mps/${missing[*]} (the window's upstream text: vendor/v$V/upstream/)"
for f in $STANDINS; do [ -f "$HERE/standins/$f" ] || finish fail "no stand-in checks/mps/emu/standins/$f"; done

SANS=(tsan); [ "$ASAN" = 1 ] && SANS+=(asan)
# the allocator tests (h2 h3 m4 m5 event-ids) need upstream's MPSAllocator.mm: v2.11.0 only
case "$V" in
  2.11.0) TARGETED=(h1 h2 h3 m1 m2 m3 m4 m5 event-two-waiters event-ids turn2-event-reuse turn2-leak-prev) ;;
  *) TARGETED=(h1 m1 m2 m3 event-two-waiters turn2-event-reuse turn2-leak-prev) ;;
esac
in_list() { local x="$1" y; shift; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }
# shellcheck disable=SC2086
wanted() { [ -z "$ONLY" ] || in_list "$1" $ONLY; }

# --- the emulator, per sanitizer (rebuilt when runtime/ changes) ---------------------------------
build_runtime() { # SAN -> prints its directory
  local san="$1" dir="$CACHE/runtime-$1" key
  key="$(find "$HERE/runtime" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)"
  if [ ! -f "$dir/.key" ] || [ "$(cat "$dir/.key")" != "$key" ]; then
    log "building the emulator ($san)"
    rm -rf "$dir"; mkdir -p "$dir"
    "$HERE/runtime/build.sh" "$dir" "$san" > "$dir.build.log" 2>&1 || { cat "$dir.build.log" >&2; return 1; }
    echo "$key" > "$dir/.key"
  fi
  echo "$dir"
}
declare -A RT
for san in "${SANS[@]}"; do
  RT[$san]="$(build_runtime "$san")" || finish fail "the emulator did not build ($san): checks/mps/emu/runtime/build.sh"
done

# build TREE SAN OUTDIR: the test programs for a tree
build() {
  "$HERE/build-backend.sh" --tree "$1" --sources "$SOURCES" --standins "$STANDINS" \
    --wheel-include "$WHEEL_INC" --torch-include "$TORCH_INC" --runtime "${RT[$2]}" --sanitizer "$2" \
    --cache "$CACHE" --out "$3" --define "MPSEMU_TORCH_MINOR=$MINOR" 2> "$3.build.log" \
    || { cat "$3.build.log" >&2; return 1; }
}

# run_test SAN BINDIR NAME LOG: sets T_OK (1/0), T_WHY (one line), T_RESULT (the RESULT line)
run_test() {
  local san="$1" dir="$2" name="$3" out="$4" rc=0 limit=180 cmd t0=$SECONDS
  if [ "$name" = stress ]; then cmd=("$dir/stress"); limit=420; else cmd=("$dir/targeted" "$name"); fi
  local envs=(TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0 second_deadlock_stack=1"
              ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 exitcode=67 detect_odr_violation=0")
  env "${envs[@]}" timeout -k 10 "$limit" "${cmd[@]}" > "$out" 2>&1 || rc=$?
  if grep -q "unexpected memory mapping" "$out"; then # TSan and a high-entropy mmap layout
    rc=0; env "${envs[@]}" timeout -k 10 "$limit" setarch "$(uname -m)" -R "${cmd[@]}" > "$out" 2>&1 || rc=$?
  fi
  T_RESULT="$(grep '^RESULT ' "$out" | tail -n 1 || true)"
  T_SECS=$((SECONDS - t0))
  T_OK=0
  if [ "$rc" = 0 ] && grep -q "^RESULT $name pass" <<<"$T_RESULT" \
     && ! grep -qE 'WARNING: ThreadSanitizer|ERROR: AddressSanitizer|mpsemu: VIOLATION' "$out"; then
    T_OK=1; T_WHY=""; return
  fi
  T_WHY="$( { grep -m1 -E '^(FAIL |SUMMARY: (Thread|Address)Sanitizer|mpsemu: VIOLATION)' "$out" \
              || grep -m1 -E 'WARNING: ThreadSanitizer|ERROR: AddressSanitizer' "$out" || true; } | cut -c1-300)"
  case "$rc" in
    124|137) T_WHY="killed by timeout after ${limit} s${T_WHY:+; $T_WHY}" ;;
    0) [ -n "$T_WHY" ] || T_WHY="no passing RESULT line" ;;
    *) T_WHY="exit $rc${T_WHY:+: $T_WHY}" ;;
  esac
}

# --- the patched tree ----------------------------------------------------------------------------
failures=()
declare -A BIN PASSED # PASSED[test/san]=1 when the test passed on the patched tree
for san in "${SANS[@]}"; do
  BIN[$san]="$WORK/bin-$san"; mkdir -p "${BIN[$san]}"
  log "building the patched tree's test programs ($san)"
  t0=$SECONDS
  build "$PATCHED" "$san" "${BIN[$san]}" || finish fail "the patched v$V sources did not build ($san); see the compiler output above"
  log "built ($san, $((SECONDS - t0))s)"
done

stress_summary="" stress_builds=()
if wanted stress; then
  for san in "${SANS[@]}"; do
    log "stress ($san)"
    run_test "$san" "${BIN[$san]}" stress "$WORK/stress-$san.log"
    if [ "$T_OK" = 1 ]; then
      [ -n "$stress_summary" ] || stress_summary="$(sed 's/^RESULT stress pass //' <<<"$T_RESULT")"
      PASSED[stress/$san]=1
      stress_builds+=("$san=clean")
      log "stress ($san): $T_RESULT (${T_SECS}s)"
    else
      failures+=("stress ($san): $T_WHY")
      stress_builds+=("$san=FAILED")
      log "stress ($san) failed: $T_WHY (log: $WORK/stress-$san.log)"
    fi
  done
fi

passed_targeted=()
for t in "${TARGETED[@]}"; do
  wanted "$t" || continue
  ok=1
  for san in "${SANS[@]}"; do
    run_test "$san" "${BIN[$san]}" "$t" "$WORK/$t-$san.log"
    if [ "$T_OK" = 1 ]; then
      PASSED[$t/$san]=1
      log "$t ($san): pass (${T_SECS}s)"
    else
      ok=0; failures+=("$t ($san): $T_WHY")
      log "$t ($san) failed: $T_WHY (log: $WORK/$t-$san.log)"
    fi
  done
  [ "$ok" = 1 ] && passed_targeted+=("$t")
done

# --- mutations -----------------------------------------------------------------------------------
# Which build sees a bug first: AddressSanitizer for use-after-free, ThreadSanitizer otherwise.
preferred_san() { case "$1" in h2*) echo asan ;; *) echo tsan ;; esac; }
caught=() missed=()
MUTDIR="$HERE/mutations/v$V"
if [ "$MUTATIONS" = 1 ] && [ -d "$MUTDIR" ]; then
  for m in "$MUTDIR"/*.patch; do
    [ -f "$m" ] || continue
    name="$(basename "$m" .patch)"
    tests="$(sed -n '1s/^# *test: *//p' "$m")"
    [ -n "$tests" ] || tests="${name%%-*}"
    [ "$name" != "${name#turn2-}" ] && [ -z "$(sed -n '1s/^# *test: *//p' "$m")" ] && tests="$name"
    sel="" unknown=""
    for t in $tests; do
      if ! in_list "$t" stress "${TARGETED[@]}"; then unknown+="$t "; continue; fi
      wanted "$t" && sel+="$t "
    done
    if [ -n "$unknown" ]; then
      missed+=("$name(names no test of ours: ${unknown% })"); log "mutation $name names no test of ours: $unknown"; continue
    fi
    [ -n "$sel" ] || continue
    tree="$WORK/mutations/$name/tree" m0=$SECONDS
    rm -rf "$WORK/mutations/$name"; mkdir -p "$WORK/mutations/$name"; cp -r "$PATCHED" "$tree"
    if ! out="$(cd "$tree" && GIT_CEILING_DIRECTORIES="$(dirname "$tree")" git apply "$m" 2>&1)" \
       || [ -z "$(cd "$tree" && diff -rq "$PATCHED" . 2>/dev/null)" ]; then
      missed+=("$name(does not apply: $(head -n 1 <<<"$out"))"); log "mutation $name does not apply: $out"; continue
    fi
    hit="" tried=0
    for t in $sel; do
      p="$(preferred_san "$t")"; order=("$p"); for s in "${SANS[@]}"; do [ "$s" = "$p" ] || order+=("$s"); done
      for san in "${order[@]}"; do
        [ -n "${RT[$san]:-}" ] || continue
        # a failure means something only when the test passes without the mutation
        [ "${PASSED[$t/$san]:-}" = 1 ] || continue
        tried=$((tried + 1))
        bin="$WORK/mutations/$name/bin-$san"; mkdir -p "$bin"
        if [ ! -x "$bin/targeted" ]; then
          build "$tree" "$san" "$bin" || { hit="build-failed"; break 2; }
        fi
        run_test "$san" "$bin" "$t" "$WORK/mutations/$name/$t-$san.log"
        if [ "$T_OK" = 0 ]; then hit="$t/$san: $T_WHY"; break 2; fi
      done
    done
    if [ "$hit" = build-failed ]; then
      missed+=("$name(the mutated tree does not build)"); log "mutation $name: the mutated tree does not build"
    elif [ -n "$hit" ]; then
      caught+=("$name"); log "mutation $name caught ($((SECONDS - m0))s): $hit"
    elif [ "$tried" = 0 ]; then
      missed+=("$name(its tests fail without it: ${sel% })"); log "mutation $name not run: its tests do not pass on the patched tree"
    else
      missed+=("$name(passed: $(tr ' ' ',' <<<"${sel% }"))"); log "mutation $name NOT caught: its tests passed"
    fi
  done
fi
[ "${#missed[@]}" = 0 ] || failures+=("mutations not caught: ${missed[*]}")

# --- the line ------------------------------------------------------------------------------------
msg=""
if wanted stress; then msg+="${stress_summary:-stress failed} ${stress_builds[*]}; "; fi
msg+="targeted passed: ${passed_targeted[*]:-none}; "
if [ "$MUTATIONS" = 1 ]; then
  if [ -d "$MUTDIR" ]; then msg+="mutations caught: ${caught[*]:-none}; "; else msg+="mutations: none in checks/mps/emu/mutations/v$V; "; fi
fi
[ "$ASAN" = 1 ] || msg+="no AddressSanitizer run (--no-asan); "
msg+="stood in: $STOOD"
if [ "${#failures[@]}" = 0 ]; then
  finish pass "$msg"
fi
finish fail "$(printf '%s; ' "${failures[@]}" | cut -c1-1500)| $msg"
