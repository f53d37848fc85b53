#!/usr/bin/env python3
"""One request to a server before it is measured, so that a wrong answer fails there, not later.

usage: smoke.py http MODEL SHAPE     JSON over HTTP to 127.0.0.1:8000 (standard library only: runs
                                     on the machine's python, for `tch-streams serve`)
       smoke.py grpc MODEL SHAPE     tritonclient over gRPC to 127.0.0.1:8101 (runs in PyTriton's
                                     venv, which has numpy and tritonclient)
SHAPE is one sample's shape, e.g. 512 or 64,256; the request has batch 1. Exits non-zero when the
answer's shape is not the request's.
"""
import json
import sys
import urllib.request


def http(model, shape):
    n = 1
    for d in shape:
        n *= d
    body = json.dumps({"inputs": [{"name": "input0", "datatype": "FP32", "shape": shape, "data": [1.0] * n}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:8000/v2/models/{model}/infer", body)
    r = json.load(urllib.request.urlopen(req, timeout=60))
    assert r["outputs"][0]["shape"] == shape, r["outputs"][0]["shape"]
    print(f"  smoke request: output0 {shape}")


def grpc(model, shape):
    import numpy as np
    import tritonclient.grpc as g

    x = g.InferInput("input0", shape, "FP32")
    x.set_data_from_numpy(np.ones(shape, np.float32))
    y = g.InferenceServerClient("127.0.0.1:8101").infer(model, [x]).as_numpy("output0")
    assert list(y.shape) == shape, y.shape
    print(f"  smoke request: output0 {list(y.shape)} {y.dtype}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("http", "grpc"):
        sys.exit(__doc__.strip())
    kind, model = sys.argv[1], sys.argv[2]
    shape = [1] + [int(d) for d in sys.argv[3].split(",")]
    {"http": http, "grpc": grpc}[kind](model, shape)
