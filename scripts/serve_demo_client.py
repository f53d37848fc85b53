#!/usr/bin/env python3
"""The client of scripts/serve-demo.sh: one inference request over HTTP and one over gRPC with
NVIDIA's tritonclient, made from the model's metadata (random inputs of batch 1); prints the inputs,
then each output's shape, type and first values.

usage: serve_demo_client.py HTTP_ADDR GRPC_ADDR MODEL
"""
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
