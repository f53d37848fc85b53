#!/usr/bin/env bash
# One command: set up, build, start `tch-streams serve` on the best device (CUDA if present, else
# MPS, else CPU) with the built-in small MLP, send it one request over HTTP and one over gRPC
# with NVIDIA's tritonclient, print the answers and the request counters, then stop the server
# with SIGTERM (it drains and exits 0).
# Arguments go to `tch-streams serve` (e.g. --model m.pt --input 1x16:float32 --name m; the
# request is then made from the model's metadata). Ports: SERVE_DEMO_PORTS="8000 8001 8002"
# (default: any free ports).
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
build_tch_streams
read -r HTTP_PORT GRPC_PORT METRICS_PORT <<<"${SERVE_DEMO_PORTS:-0 0 0}"
MODEL_ARGS=("$@")
[ ${#MODEL_ARGS[@]} -gt 0 ] || MODEL_ARGS=(--builtin small-mlp)

OUT=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$OUT"' EXIT
"$BIN" serve --device auto --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
  "${MODEL_ARGS[@]}" >"$OUT/stdout" 2>"$OUT/stderr" &
PID=$!
for _ in $(seq 600); do
  grep -q '^listening ' "$OUT/stdout" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/stderr" >&2; echo "serve-demo: the server exited" >&2; exit 1; }
  sleep 0.1
done
LINE=$(grep '^listening ' "$OUT/stdout") || { cat "$OUT/stderr" >&2; echo "serve-demo: the server did not start within 60 s" >&2; exit 1; }
cat "$OUT/stderr"
echo "$LINE"
HTTP=$(sed 's/.*http=\([^ ]*\).*/\1/' <<<"$LINE")
GRPC=$(sed 's/.*grpc=\([^ ]*\).*/\1/' <<<"$LINE")
METRICS=$(sed 's/.*metrics=\([^ ]*\).*/\1/' <<<"$LINE")

MODEL=$(sed -n 's/^model \([^:]*\):.*/\1/p' "$OUT/stderr" | head -1)

python3 scripts/serve_demo_client.py "$HTTP" "$GRPC" "$MODEL"
echo
curl -s "http://$METRICS/metrics" 2>/dev/null | grep '^tch_streams_requests_total' || true
kill -TERM "$PID"
wait "$PID"
echo "server exit code $?"
