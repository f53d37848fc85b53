#!/usr/bin/env bash
# Serving comparison on a GPU: perf_analyzer (Triton's load generator) against `tch-streams
# serve` (gRPC and HTTP) and against the same TorchScript file served by PyTriton (Triton, Python
# backend, dynamic batching, torch.jit.load in the infer function); plus our in-process engine
# (`tch-streams run`, host inputs and outputs) at the same concurrency. Small MLP and
# transformer; concurrency 1, 4, 16, 64. Results: RUN_DIR/records.jsonl, summary.{json,csv,md,svg}.
#
#   scripts/serve-perf.sh pack [WHEELS_DIR] [OUT_DIR] [PY_VERSION]
#       where the network is: turn the downloaded wheels into the bundles a GPU machine without
#       network needs: OUT_DIR/pa.tgz (the perf_analyzer binary) and OUT_DIR/pytriton.tar.xz
#       (PyTriton without its unused stubs and libpython3.13, with its dependencies).
#       Defaults: ~/.cache/tch-streams/wheels/serve-gpu, .gpu/serve-perf, 3.12.
#   scripts/serve-perf.sh run --bin PATH [--bundles DIR] [--part ours|pytriton|all]
#       [--models small-mlp,transformer] (also: identity, no work: the protocol-and-client ceiling)
#       [--concurrency 1,4,16,64] [--device cuda:0] [--out RUN_DIR]
#       [--seconds 3] (the in-process runs, and perf_analyzer's window unless --window-ms)
#       [--window-ms MS] [--pa-args "more perf_analyzer flags, e.g. --async"]
#       [--engine-args "--workers 2 ..."] [--pytriton-delay-us 0] [--pytriton-instances 4]
#       [--python python3]
#       on the GPU machine: measure; appends to RUN_DIR/records.jsonl (run the parts in separate
#       invocations with the same --out when needed, then `report`).
#   scripts/serve-perf.sh report RUN_DIR      summary files and the markdown table
#
# Both sides run as a user would start them. Ours: the engine's defaults (batching calibrated at
# start-up, no wait beyond what is already queued) unless --engine-args says otherwise. PyTriton:
# dynamic batching up to 64 samples (no request here carries more than the concurrency, 64) with
# Triton's default queue delay of 0, the same policy as ours; --engine-args with --batch-max /
# --batch-wait-us, or --pytriton-delay-us, sets its batching too.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=scripts/serve-perf
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "serve-perf: $*" >&2; exit 1; }

# Wheels PyTriton needs beyond the GPU machine's python (torch), as pip names the files (NAME or
# NAME-VERSION). numpy 1.26: PyTriton 0.7 requires numpy < 2, and with numpy 2 its answers come
# back empty (0 bytes per output; found on CPU). tritonclient 2.60 (with grpcio < 1.68, protobuf
# 5) rather than the newest: later ones import ml_dtypes (25 MB) at start-up. PyTriton's own
# command-line tool (typer, rich, pydantic) is not needed to serve.
PYTRITON_WHEELS="nvidia_pytriton numpy-1.26.4 pyzmq sh tritonclient-2.60.0 grpcio-1.67.1 protobuf-5.29.5 typing_inspect mypy_extensions \
  wrapt typing_extensions importlib_metadata zipp geventhttpclient gevent greenlet zope_event zope_interface brotli \
  certifi urllib3 python_rapidjson aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl idna packaging"

pack() {
  local wheels="${1:-$HOME/.cache/tch-streams/wheels/serve-gpu}" out="${2:-.gpu/serve-perf}" py="${3:-3.12}"
  [ -d "$wheels" ] || die "no wheel directory $wheels (see README: Serve, GPU comparison)"
  mkdir -p "$out"
  local tmp; tmp=$(mktemp -d)
  local files=()
  for w in $PYTRITON_WHEELS; do
    local f
    case "$w" in
      *-[0-9]*) f=$(ls "$wheels"/"$w"-*.whl 2>/dev/null | head -1) ;;
      *) f=$(ls "$wheels"/"$w"-[0-9]*.whl 2>/dev/null | sort -V | tail -1) ;;
    esac
    [ -n "$f" ] || die "wheel $w missing in $wheels"
    files+=("$f")
  done
  local tag="cp${py/./}"
  python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --only-binary=:all: \
    --python-version "$py" --implementation cp --abi "$tag" --platform manylinux_2_38_x86_64 --platform manylinux_2_35_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target "$tmp/site" "${files[@]}"
  # Only the stub for this Python; the bundled libpython3.13 serves the 3.13 stub alone.
  find "$tmp/site/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 ! -name "$py" -exec rm -rf {} +
  rm -f "$tmp/site"/nvidia_pytriton.libs/libpython3-*.13.so*
  rm -rf "$tmp/site/bin"
  find "$tmp/site" -name __pycache__ -prune -exec rm -rf {} +
  # xz through Python's tarfile: smaller than gzip, and unpacked the same way on the GPU machine.
  python3 - "$tmp/site" "$out/pytriton.tar.xz" <<'PY'
import os, sys, tarfile
src, dst = sys.argv[1:3]
with tarfile.open(dst, "w:xz", preset=9) as t:
    for name in sorted(os.listdir(src)):
        t.add(os.path.join(src, name), arcname=name)
PY
  local pa; pa=$(ls "$wheels"/perf_analyzer-*.whl | head -1)
  mkdir -p "$tmp/pa"
  python3 -m zipfile -e "$pa" "$tmp/pa"
  chmod +x "$tmp/pa/perf_analyzer/bin/perf_analyzer"
  tar -C "$tmp/pa/perf_analyzer/bin" -czf "$out/pa.tgz" perf_analyzer
  rm -rf "$tmp"
  ls -l "$out"
  du -cb "$out"/pa.tgz "$out"/pytriton.tar.xz | tail -1
}

# ---- run ----
BIN="" BUNDLES=.gpu/serve-perf PART=all MODELS=small-mlp,transformer CONCURRENCY=1,4,16,64 DEVICE=cuda:0
OUT="" SECONDS_PER=3 WINDOW_MS="" PA_ARGS="" ENGINE_ARGS="" INSTANCES=4 PT_DELAY=0 PYTHON=python3
WORK="" SITE=""

shape_of() { case "$1" in small-mlp|identity) echo 512 ;; transformer) echo 64,256 ;; *) die "unknown model $1" ;; esac; }

record() { echo "$1" >>"$OUT/records.jsonl"; echo "  $1"; }

# perf_analyzer at one concurrency; its CSV becomes one record.
measure() {
  local model="$1" target="$2" proto="$3" addr="$4" c="$5"
  local csv="$OUT/logs/$model-$target-c$c.csv"
  local log="$OUT/logs/$model-$target-c$c.log"
  local rc=0 pa_pid peak=0 kb interval=${WINDOW_MS:-$((SECONDS_PER * 1000))} attempt
  # One client thread per request in flight (--max-threads, default 16). perf_analyzer 2.60 keeps
  # every request and answer of a measurement: its memory grows by about their size per request
  # (with 64 KB tensors and a fast server, tens of GiB within a minute, with either server). A cap
  # on its address space makes it fail fast instead of taking the machine with it, and its peak
  # resident size is recorded. A window too noisy to be stable is measured once more with
  # windows twice as long, as perf_analyzer itself advises.
  for attempt in 1 2; do
    rc=0
    ( ulimit -v $((48 << 20)); exec timeout 150 "$WORK/pa/perf_analyzer" -m "$model" -u "$addr" -i "$proto" -b 1 --concurrency-range "$c:$c" \
      --max-threads $((c > 16 ? c : 16)) --measurement-interval "$interval" --max-trials 6 --stability-percentage 25 -f "$csv" $PA_ARGS ) >"$log" 2>&1 &
    pa_pid=$!
    while kill -0 "$pa_pid" 2>/dev/null; do
      # (ps fails when the client has just exited: not an error here)
      kb=$(ps -o rss= --ppid "$pa_pid" 2>/dev/null | sort -n | tail -1 | tr -d ' ') || kb=""
      [ -n "$kb" ] && [ "$kb" -gt "$peak" ] && peak=$kb
      sleep 0.5
    done
    wait "$pa_pid" || rc=$?
    grep -q "Failed to obtain stable measurement" "$log" || break
    interval=$((interval * 2))
    echo "  ($model $target c$c: not stable; once more with ${interval} ms windows)"
  done
  echo "perf_analyzer peak RSS: $((peak / 1024)) MiB; window ${interval} ms" >>"$log"
  "$PYTHON" - "$csv" "$model" "$target" "$c" "$rc" "$log" "$peak" <<'PY' >>"$OUT/records.jsonl"
import csv, json, os, re, sys
path, model, target, c, rc, log, peak_kb = sys.argv[1:8]
rec = {"model": model, "target": target, "concurrency": int(c), "tool": "perf_analyzer", "client_peak_rss_mib": int(peak_kb) // 1024}
text = open(log, errors="replace").read() if os.path.exists(log) else ""
def from_text(t):
    """perf_analyzer's own summary lines: 'Concurrency: C, throughput: X infer/sec', 'pNN latency: N usec'."""
    out = {}
    m = re.findall(r"throughput: ([0-9.]+) infer/sec", t)
    if m:
        out["infer_per_s"] = float(m[-1])
    for q in ("50", "90", "95", "99"):
        m = re.findall(rf"p{q} latency: ([0-9]+) usec", t)
        if m:
            out[f"p{q}_us"] = float(m[-1])
    m = re.findall(r"Avg latency: ([0-9]+) usec", t)
    if m:
        out["avg_us"] = float(m[-1])
    return out if "infer_per_s" in out and "p50_us" in out and "p99_us" in out else None
try:
    row = next(csv.DictReader(open(path)))
    rec.update(infer_per_s=float(row["Inferences/Second"]), p50_us=float(row["p50 latency"]), p90_us=float(row["p90 latency"]),
               p95_us=float(row["p95 latency"]), p99_us=float(row["p99 latency"]))
    if row.get("Avg latency"):  # not every perf_analyzer version writes it
        rec["avg_us"] = float(row["Avg latency"])
except Exception as e:
    parsed = from_text(text)
    if parsed:
        rec.update(parsed)
        rec["note"] = f"read from perf_analyzer's summary lines (its CSV: {e})"
    else:
        rec["error"] = f"perf_analyzer exit {rc}: {e}; " + text[-400:]
if rc != "0" and "error" not in rec:
    rec["warning"] = f"perf_analyzer exit {rc} (see {os.path.basename(log)})"
print(json.dumps(rec))
PY
  tail -1 "$OUT/records.jsonl" | sed 's/^/  /'
}

wait_for() {  # FILE PATTERN PID SECONDS
  local i
  for i in $(seq $(($4 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { tail -20 "$1" >&2; return 1; }
    sleep 0.1
  done
  tail -20 "$1" >&2
  return 1
}

part_ours() {
  local model="$1"
  local pt="$WORK/models/$model.pt" shape
  shape=$(shape_of "$model")
  local input="1x${shape//,/x}:float32"
  IFS=, read -ra concs <<<"$CONCURRENCY"
  echo "== $model: in-process engine (tch-streams run, host inputs and outputs)"
  for c in "${concs[@]}"; do
    # shellcheck disable=SC2086
    if "$BIN" run --device "$DEVICE" --model "$pt" --input "$input" --host-inputs --cpu-output --clients "$c" --inflight 1 \
        --duration "$SECONDS_PER" --json $ENGINE_ARGS >"$OUT/logs/$model-engine-c$c.json" 2>"$OUT/logs/$model-engine-c$c.log"; then
      record "$("$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["stats"]; print(json.dumps({"model": sys.argv[2], "target": "engine", "concurrency": int(sys.argv[3]), "tool": "tch-streams run", "infer_per_s": d["requests_per_s"], "p50_us": s["latency_us_p50"], "p95_us": s["latency_us_p95"], "p99_us": s["latency_us_p99"]}))' "$OUT/logs/$model-engine-c$c.json" "$model" "$c")"
    else
      record "{\"model\": \"$model\", \"target\": \"engine\", \"concurrency\": $c, \"error\": \"tch-streams run failed: see logs/$model-engine-c$c.log\"}"
    fi
  done
  echo "== $model: tch-streams serve"
  # shellcheck disable=SC2086
  "$BIN" serve --device "$DEVICE" --model "$pt" --input "$input" --name "$model" --http-port 8000 --grpc-port 8001 \
    --metrics-port 8002 $ENGINE_ARGS >"$OUT/logs/$model-serve.out" 2>"$OUT/logs/$model-serve.err" &
  local pid=$!
  wait_for "$OUT/logs/$model-serve.out" '^listening ' "$pid" 180 || { cat "$OUT/logs/$model-serve.err" >&2; die "tch-streams serve did not start"; }
  # One JSON request first (standard library only): a wrong answer fails here, not later.
  "$PYTHON" - "$model" "$shape" <<'PY' || die "tch-streams serve answered the smoke request wrongly"
import json, sys, urllib.request
model, shape = sys.argv[1], [1] + [int(d) for d in sys.argv[2].split(",")]
n = 1
for d in shape:
    n *= d
body = json.dumps({"inputs": [{"name": "input0", "datatype": "FP32", "shape": shape, "data": [1.0] * n}]}).encode()
r = json.load(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:8000/v2/models/{model}/infer", body), timeout=60))
assert r["outputs"][0]["shape"] == shape, r["outputs"][0]["shape"]
print(f"  smoke request: output0 {shape}")
PY
  for c in "${concs[@]}"; do measure "$model" ours-grpc grpc 127.0.0.1:8001 "$c"; done
  for c in "${concs[@]}"; do measure "$model" ours-http http 127.0.0.1:8000 "$c"; done
  curl -s 127.0.0.1:8002/metrics >"$OUT/logs/$model-serve.metrics" 2>/dev/null || true
  kill -TERM "$pid"
  wait "$pid" || echo "  (serve exited $?)"
  tail -1 "$OUT/logs/$model-serve.err" | sed 's/^/  /'
}

part_pytriton() {
  local model="$1"
  local pt="$WORK/models/$model.pt" shape
  shape=$(shape_of "$model")
  IFS=, read -ra concs <<<"$CONCURRENCY"
  local max_batch=64 delay="$PT_DELAY"
  # The same batching as ours when --engine-args says --batch-max/--batch-wait-us.
  [[ "$ENGINE_ARGS" =~ --batch-max[[:space:]]+([0-9]+) ]] && max_batch="${BASH_REMATCH[1]}"
  [[ "$ENGINE_ARGS" =~ --batch-wait-us[[:space:]]+([0-9]+) ]] && delay="${BASH_REMATCH[1]}"
  echo "== $model: PyTriton (max_batch_size $max_batch, queue delay $delay us, $INSTANCES instance(s))"
  # PyTriton copies tritonserver into a workspace, away from the libraries its rpath names.
  # Its own session (setsid): stopping it stops tritonserver and the stubs with it.
  LD_LIBRARY_PATH="$SITE/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    setsid "$WORK/venv/bin/python" "$HERE/pytriton_server.py" --model "$pt" --name "$model" --sample-shape "$shape" \
    --device "$DEVICE" --max-batch "$max_batch" --delay-us "$delay" --instances "$INSTANCES" \
    --http-port 8100 --grpc-port 8101 --metrics-port 8102 >"$OUT/logs/$model-pytriton.log" 2>&1 &
  local pid=$!
  wait_for "$OUT/logs/$model-pytriton.log" 'pytriton ready' "$pid" 300 || die "PyTriton did not start (log: $OUT/logs/$model-pytriton.log)"
  # One request through tritonclient first: a server that answers wrongly fails here, not later.
  "$WORK/venv/bin/python" - "$model" "$shape" <<'PY' || die "PyTriton answered the smoke request wrongly (log: $OUT/logs/$model-pytriton.log)"
import sys
import numpy as np
import tritonclient.grpc as g
model, shape = sys.argv[1], [1] + [int(d) for d in sys.argv[2].split(",")]
x = g.InferInput("input0", shape, "FP32")
x.set_data_from_numpy(np.ones(shape, np.float32))
y = g.InferenceServerClient("127.0.0.1:8101").infer(model, [x]).as_numpy("output0")
assert list(y.shape) == shape, y.shape
print(f"  smoke request: output0 {list(y.shape)} {y.dtype}")
PY
  for c in "${concs[@]}"; do measure "$model" pytriton-grpc grpc 127.0.0.1:8101 "$c"; done
  for c in "${concs[@]}"; do measure "$model" pytriton-http http 127.0.0.1:8100 "$c"; done
  # The whole session: PyTriton, tritonserver, the stubs (nothing may keep the ports).
  local t0=$SECONDS
  kill -INT -- -"$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- -"$pid" 2>/dev/null && echo "  (PyTriton's session killed after $((SECONDS - t0)) s)"
  wait "$pid" 2>/dev/null || true
}

run() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --bin) BIN="$2"; shift 2 ;;
      --bundles) BUNDLES="$2"; shift 2 ;;
      --part) PART="$2"; shift 2 ;;
      --models) MODELS="$2"; shift 2 ;;
      --concurrency) CONCURRENCY="$2"; shift 2 ;;
      --device) DEVICE="$2"; shift 2 ;;
      --out) OUT="$2"; shift 2 ;;
      --seconds) SECONDS_PER="$2"; shift 2 ;;
      --window-ms) WINDOW_MS="$2"; shift 2 ;;
      --pa-args) PA_ARGS="$2"; shift 2 ;;
      --engine-args) ENGINE_ARGS="$2"; shift 2 ;;
      --pytriton-instances) INSTANCES="$2"; shift 2 ;;
      --pytriton-delay-us) PT_DELAY="$2"; shift 2 ;;
      --python) PYTHON="$2"; shift 2 ;;
      *) die "unknown argument $1 (try --help)" ;;
    esac
  done
  case "$PART" in ours|pytriton|all) ;; *) die "--part ours|pytriton|all" ;; esac
  [ "$PART" = pytriton ] || { [ -n "$BIN" ] && [ -x "$BIN" ]; } || die "--bin PATH: the tch-streams binary to measure"
  OUT="${OUT:-results/serve-$(date -u +%Y-%m-%dT%H%M%SZ)}"
  mkdir -p "$OUT/logs"
  WORK=$(mktemp -d /tmp/serve-perf.XXXX)
  trap 'jobs -p | xargs -r kill 2>/dev/null; rm -rf "$WORK"' EXIT
  mkdir -p "$WORK/pa"
  tar -C "$WORK/pa" -xzf "$BUNDLES/pa.tgz"
  "$PYTHON" "$HERE/models.py" "$WORK/models" "$DEVICE" >/dev/null
  {
    echo "date $(date -u +%FT%TZ)"; echo "device $DEVICE"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
    "$PYTHON" -c 'import torch; print("torch", torch.__version__)'
    echo "engine args: ${ENGINE_ARGS:-(the defaults)}; pytriton instances: $INSTANCES, queue delay $PT_DELAY us; in-process run: $SECONDS_PER s; perf_analyzer window: ${WINDOW_MS:-$((SECONDS_PER * 1000))} ms${PA_ARGS:+; perf_analyzer flags: $PA_ARGS}"
    [ -n "$BIN" ] && "$BIN" --version
  } >>"$OUT/env.txt" 2>&1
  if [ "$PART" != ours ]; then
    # A venv of our own over the machine's python: PyTriton's Python-backend stub finds its
    # packages through the `python3` first on PATH (PyTriton puts this venv's bin there), so they
    # must live in the venv, not on PYTHONPATH. A .pth adds the machine's torch (numpy 1.26 from
    # the bundle comes first: PyTriton needs numpy < 2).
    # The stub loads the system's libpython3.X: base the venv on the system interpreter of that
    # version when there is one, so the standard library matches the library that runs it.
    local ver base
    ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    base="$PYTHON"
    for cand in "/usr/bin/python$ver" "/usr/local/bin/python$ver"; do
      [ -x "$cand" ] && { base="$cand"; break; }
    done
    "$base" -m venv --without-pip "$WORK/venv"
    SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLES/pytriton.tar.xz" "$SITE"
    "$PYTHON" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()] if p))' >"$SITE/host-python.pth"
    "$WORK/venv/bin/python" -c 'import pytriton, zmq, tritonclient.grpc, torch, numpy; print("pytriton ready to import; numpy", numpy.__version__)'
  fi
  IFS=, read -ra models <<<"$MODELS"
  for m in "${models[@]}"; do
    [ "$PART" = pytriton ] || part_ours "$m"
    [ "$PART" = ours ] || part_pytriton "$m"
  done
  "$PYTHON" "$HERE/report.py" "$OUT"
  echo "results in $OUT"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  report) shift; [ $# = 1 ] || die "report RUN_DIR"; python3 "$HERE/report.py" "$1" ;;
  -h|--help|"") usage ;;
  *) die "unknown command $1 (try --help)" ;;
esac
