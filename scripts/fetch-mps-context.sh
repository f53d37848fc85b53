#!/usr/bin/env bash
# Puts the upstream .mm files that vendor/v<VERSION>/mps-context.lock lists into
# ${TCH_STREAMS_HOME:-~/.cache/tch-streams}/mps-context/v<VERSION>/ (the directory the checks read),
# idempotently. Each file comes from vendor/v<VERSION>/upstream/<path> when it is vendored there
# (upstream text kept in this repository, renames already reversed: see vendor/README.md); only a
# listed file that is not vendored is downloaded at the lock's commit, with the lock's renames
# reversed (old:new, applied in order). Either way the result must have the lock's sha256. A file
# already in the cache with the right sha256 is kept.
#
# Usage: scripts/fetch-mps-context.sh VERSION      (2.11.0 or 2.13.0)
#        scripts/fetch-mps-context.sh --print-dir VERSION
# Environment: TCH_STREAMS_GITHUB_RAW  base URL instead of https://raw.githubusercontent.com for
#              files that are not vendored (a mirror; the sha256 check still applies).
# Exit status: 0 when every listed file is in the cache (also when the lock lists none); 3 when a
# file that is not vendored could not be downloaded (the host is unreachable from this machine: the
# checks that need the files then skip, saying so); 1 for anything else (a vendored or downloaded
# file whose sha256 differs from the lock's).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TCH_STREAMS_HOME:-$HOME/.cache/tch-streams}"
PRINT_DIR=0
if [ "${1:-}" = --print-dir ]; then PRINT_DIR=1; shift; fi
case "${1:-}" in
  2.11.0|2.13.0) VERSION="$1" ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "fetch-mps-context.sh: expected a version (2.11.0 or 2.13.0), got '${1:-}'" >&2; exit 2 ;;
esac
LOCK="$ROOT/vendor/v$VERSION/mps-context.lock"
DEST="$CACHE/mps-context/v$VERSION"
if [ "$PRINT_DIR" = 1 ]; then echo "$DEST"; exit 0; fi
[ -f "$LOCK" ] || { echo "[fetch-mps-context] missing $LOCK" >&2; exit 1; }

lock() { python3 "$ROOT/scripts/patchtools/patchtools.py" lock "$LOCK" "$1"; }  # the shared lock parser
repo="$(lock repo)"
commit="$(lock commit)"
mapfile -t renames < <(lock rename)
mapfile -t files < <(lock file)
[ "${#files[@]}" -gt 0 ] || exit 0
[[ "$commit" =~ ^[0-9a-f]{40}$ ]] || { echo "[fetch-mps-context] $LOCK: commit must be 40 hex digits" >&2; exit 1; }
BASE="${TCH_STREAMS_GITHUB_RAW:-https://raw.githubusercontent.com}"
sha() { sha256sum "$1" | cut -c1-64; }

failed=0
unreachable=0
for entry in "${files[@]}"; do
  path="${entry% *}"; want="${entry##* }"
  out="$DEST/$path"
  vendored="$ROOT/vendor/v$VERSION/upstream/$path"
  if [ -f "$vendored" ]; then
    # Vendored upstream text (renames already reversed): checked every time, never downloaded.
    got="$(sha "$vendored")"
    if [ "$got" != "$want" ]; then
      echo "[fetch-mps-context] vendor/v$VERSION/upstream/$path: sha256 $got, expected $want (vendor/v$VERSION/mps-context.lock); vendored files must stay byte-for-byte upstream" >&2
      failed=1; continue
    fi
    if ! cmp -s "$vendored" "$out"; then
      mkdir -p "$(dirname "$out")"
      tmp="$(mktemp "$(dirname "$out")/.vendored.XXXXXX")"
      cp "$vendored" "$tmp"; chmod 644 "$tmp"; mv "$tmp" "$out"
    fi
    continue
  fi
  if [ -f "$out" ] && [ "$(sha "$out")" = "$want" ]; then continue; fi
  mkdir -p "$(dirname "$out")"
  tmp="$(mktemp)"
  if ! curl -fsSL --retry 2 --max-time 60 "$BASE/$repo/$commit/$path" -o "$tmp"; then
    echo "[fetch-mps-context] could not download $repo@${commit:0:12}:$path from $BASE" >&2; rm -f "$tmp"; unreachable=1; continue
  fi
  for r in "${renames[@]}"; do
    sed -i "s/${r%%:*}/${r#*:}/g" "$tmp"
  done
  got="$(sha "$tmp")"
  if [ "$got" != "$want" ]; then
    echo "[fetch-mps-context] $path: sha256 $got after reversing the renames, expected $want" >&2
    rm -f "$tmp"; failed=1; continue
  fi
  chmod 644 "$tmp"
  mv "$tmp" "$out"
done
if [ "$failed" = 1 ]; then exit 1; fi
if [ "$unreachable" = 1 ]; then exit 3; fi
exit 0
