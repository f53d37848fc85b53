#!/usr/bin/env bash
# One command: set up, build, start `tch-streams serve` on the best device (CUDA if present, else
# MPS, else CPU) with the built-in small MLP, send it one request over HTTP and one over gRPC
# with NVIDIA's tritonclient, print the answers and the request counters, then stop the server
# with SIGTERM (it drains and exits 0).
# Arguments go to `tch-streams serve` (e.g. --model m.pt --input 1x16:float32 --name m; the
# request is then made from the model's metadata). Ports: SERVE_DEMO_PORTS="8000 8001 8002"
# (default: any free ports).
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

python3 - "$HTTP" "$GRPC" "$MODEL" <<'PY'
import sys
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

http_addr, grpc_addr, model = sys.argv[1:4]
h = httpclient.InferenceServerClient(http_addr)
g = grpcclient.InferenceServerClient(grpc_addr)
meta = h.get_model_metadata(model)
print(f"model {model}: inputs {meta['inputs']}")
rng = np.random.default_rng(0)
arrays = []
for t in meta["inputs"]:
    shape = [1] + [int(d) for d in t["shape"][1:]]
    dtype = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
             "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": bool}.get(t["datatype"], np.float32)
    a = rng.integers(0, 100, size=shape) if np.issubdtype(dtype, np.integer) else rng.standard_normal(shape)
    arrays.append(a.astype(dtype) if dtype is not bool else a > 0)
for client, mod, proto in [(h, httpclient, "HTTP"), (g, grpcclient, "gRPC")]:
    inputs = []
    for t, a in zip(meta["inputs"], arrays):
        i = mod.InferInput(t["name"], list(a.shape), t["datatype"])
        i.set_data_from_numpy(a)
        inputs.append(i)
    result = client.infer(model, inputs)
    for o in meta["outputs"]:
        y = result.as_numpy(o["name"])
        print(f"{proto:4} {o['name']}: shape {list(y.shape)} {y.dtype}, first values {y.reshape(-1)[:4]}")
PY
echo
curl -s "http://$METRICS/metrics" 2>/dev/null | grep '^tch_streams_requests_total' || true
kill -TERM "$PID"
wait "$PID"
echo "server exit code $?"
