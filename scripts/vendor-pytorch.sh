#!/usr/bin/env bash
# Fetches the PyTorch source that our MPS stream-pool patch for VERSION applies to, idempotently:
# a shallow clone (with submodules) of the tag named in vendor/v<VERSION>/pytorch.lock into
# vendor/pytorch-<VERSION>, checked against the lock's commit. vendor/pytorch-* is git-ignored.
#
# Usage (VERSION: 2.11.0 or 2.13.0; default 2.11.0):
#   scripts/vendor-pytorch.sh [VERSION]           clone when missing, then verify (quick when done)
#   scripts/vendor-pytorch.sh --check [VERSION]   verify an existing checkout only; no network
#   scripts/vendor-pytorch.sh --dest D [VERSION]  use directory D instead of vendor/pytorch-<VERSION>
#   scripts/vendor-pytorch.sh --help
#
# Environment:
#   TCH_STREAMS_PYTORCH_URL   clone from this URL (a mirror) instead of the lock's url; the
#                             commit check still applies, so a mirror cannot change what you get.
#
# Exit status: 0 when the checkout is at the locked commit, 1 on a mismatch or a failed clone,
# 2 on bad arguments. A mismatching checkout is never deleted: move it away yourself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=2.11.0
DEST=""
CHECK_ONLY=0

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --check) CHECK_ONLY=1 ;;
    --dest)
      [ $# -ge 2 ] || { echo "vendor-pytorch.sh: --dest needs a directory" >&2; exit 2; }
      DEST="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    2.11.0|2.13.0) VERSION="$1" ;;
    *) echo "vendor-pytorch.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

LOCK="$ROOT/vendor/v$VERSION/pytorch.lock"
DEST="${DEST:-$ROOT/vendor/pytorch-$VERSION}"

log() { echo "[vendor-pytorch] $*" >&2; }
die() { echo "[vendor-pytorch] ERROR: $*" >&2; exit 1; }

# Reads KEY=VALUE from the lock (scripts/patchtools/patchtools.py, the lock parser the scripts share).
lock_value() {
  local key="$1" value
  value="$(python3 "$ROOT/scripts/patchtools/patchtools.py" lock "$LOCK" "$key" | head -n 1)"
  [ -n "$value" ] || die "$LOCK has no '${key}=' line"
  printf '%s\n' "$value"
}

[ -f "$LOCK" ] || die "missing $LOCK"
URL="${TCH_STREAMS_PYTORCH_URL:-$(lock_value url)}"
TAG="$(lock_value tag)"
COMMIT="$(lock_value commit)"
[[ "$COMMIT" =~ ^[0-9a-f]{40}$ ]] || die "lock commit '$COMMIT' is not a 40-hex commit id"

# Succeeds when DEST is a git checkout whose HEAD is the locked commit.
verify() {
  local head
  head="$(git -C "$DEST" rev-parse HEAD 2>/dev/null)" || die "$DEST exists but is not a git checkout"
  if [ "$head" != "$COMMIT" ]; then
    die "$DEST is at $head, but vendor/v$VERSION/pytorch.lock wants $TAG = $COMMIT.
Move that directory away (it is never deleted for you) and run this script again."
  fi
  if [ -f "$DEST/.gitmodules" ] && git -C "$DEST" submodule status --recursive 2>/dev/null | grep -q '^-'; then
    die "$DEST is at the locked commit but some submodules are not checked out:
  git -C '$DEST' submodule update --init --recursive --depth 1"
  fi
  log "OK: $DEST is $TAG ($COMMIT)"
}

if [ -e "$DEST" ]; then
  verify
  exit 0
fi
if [ "$CHECK_ONLY" = 1 ]; then
  die "$DEST does not exist; run scripts/vendor-pytorch.sh without --check to clone it"
fi

command -v git >/dev/null || die "git is not installed"
mkdir -p "$(dirname "$DEST")"
# Clone into a sibling temp dir and rename at the end, so an interrupted clone never leaves a
# half-made vendor/pytorch that a later run would mistake for a finished one.
TMP="$(mktemp -d "$(dirname "$DEST")/.pytorch-clone.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
log "cloning $URL at $TAG (shallow, with submodules; several GB, takes a while)"
if ! git -c advice.detachedHead=false clone --depth 1 --branch "$TAG" --recurse-submodules --shallow-submodules \
     "$URL" "$TMP/pytorch"; then
  die "git clone of $URL failed (network?). Set TCH_STREAMS_PYTORCH_URL to a mirror, or clone
$TAG yourself into $DEST (with --recurse-submodules) and rerun with --check."
fi
got="$(git -C "$TMP/pytorch" rev-parse HEAD)"
[ "$got" = "$COMMIT" ] || die "tag $TAG at $URL is commit $got, but the lock says $COMMIT; refusing it"
mv "$TMP/pytorch" "$DEST"
verify
