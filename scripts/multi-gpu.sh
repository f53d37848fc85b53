#!/usr/bin/env bash
# The multi-GPU check: the engine stress test with workers spread over every visible GPU (results
# equal to serial, each worker's stream on its own device, printed), inputs served on the GPU
# they lie on (and waited for across GPUs when that GPU has no workers), then `tch-streams bench`
# for the large MLP (batch 64) on one GPU and on all of them in one run, T = 4..64 clients
# (engine vs engine-spread, and the one-GPU limit; the report and JSON give engine-spread/engine
# per T and at each side's peak).
#
# Usage: scripts/multi-gpu.sh [--out DIR] [--prebuilt DIR]
#   --out DIR       where the bench writes its JSON, CSV and PNG (default: results)
#   --prebuilt DIR  use DIR/engine_gpu and DIR/tch-streams instead of building them with cargo
#                   (for a GPU machine without a Rust toolchain; build them elsewhere against
#                   the same libtorch)
# Needs two or more CUDA GPUs; with one it stops and says so.
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
OUT=results
PREBUILT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift ;;
    --prebuilt) PREBUILT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "multi-gpu.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

GPUS="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l || true)"
if [ "${GPUS:-0}" -lt 2 ]; then
  echo "multi-gpu.sh: found ${GPUS:-0} CUDA GPU(s); this check needs two or more" >&2
  exit 3
fi
DEVICES="$(seq -s, -f 'cuda:%g' 0 $((GPUS - 1)))"

if [ -n "$PREBUILT" ]; then
  TESTS="$PREBUILT/engine_gpu"
  BIN="$PREBUILT/tch-streams"
else
  build_tch_streams
  TESTS="$(cargo test --release --no-run --message-format=json --test engine_gpu 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable"): print(m["executable"])' | tail -n 1)"
fi

echo "== engine stress over $DEVICES"
"$TESTS" --include-ignored --nocapture --test-threads 1 \
  workers_spread_over_a_device_list inputs_are_served_where_they_lie_and_waited_for_across_devices

echo "== bench: large-mlp, engine on cuda:0 vs engine-spread over $DEVICES"
"$BIN" bench --device "$DEVICES" --workloads large-mlp --modes engine,engine-spread,limit \
  --threads 4,8,16,32,64 --reps 3 --out "$OUT"
