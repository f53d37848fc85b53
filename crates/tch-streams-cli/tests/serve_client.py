#!/usr/bin/env python3
"""Drives `tch-streams serve` with NVIDIA's tritonclient, as a user would; the Rust tests in
serve_*.rs run it and check what it prints (one JSON document on stdout).

usage: serve_client.py COMMAND HTTP_ADDR GRPC_ADDR [OUT_DIR]

  metadata   health, server/model metadata, model config and readiness over both protocols
  infer      seeded random requests (batch 3) to small-mlp and two_inputs over HTTP (binary and
             JSON tensors) and gRPC; writes each request's inputs and answer's outputs to
             OUT_DIR as .npy files for the Rust side to compare with running the model directly
  grpc-errors  every bad gRPC request (unknown model, wrong datatype, shape, byte count, too
             large), each followed by a good one; prints the status codes and messages
  compressed one small-mlp request over HTTP with tritonclient's request compression (none,
             gzip, deflate), JSON tensors; prints each answer's values
"""
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import grpc

MODELS = {
    # name: [(input name, datatype, sample shape)]
    "small-mlp": [("input0", "FP32", [512])],
    "two_inputs": [("input0", "INT64", [16]), ("input1", "FP32", [16])],
}
NUMPY = {"FP32": np.float32, "INT64": np.int64}


def make_inputs(model, batch, rng):
    arrays = []
    for _, dtype, shape in MODELS[model]:
        if dtype == "INT64":
            arrays.append(rng.integers(0, 100, size=[batch] + shape, dtype=np.int64))
        else:
            arrays.append(rng.standard_normal([batch] + shape).astype(np.float32))
    return arrays


def metadata(http_addr, grpc_addr):
    h = httpclient.InferenceServerClient(http_addr)
    g = grpcclient.InferenceServerClient(grpc_addr)
    out = {
        "http_live": h.is_server_live(),
        "http_ready": h.is_server_ready(),
        "http_server": h.get_server_metadata(),
        "http_models": {m: h.get_model_metadata(m) for m in MODELS},
        "http_config": {m: h.get_model_config(m) for m in MODELS},
        "http_model_ready": {m: h.is_model_ready(m) for m in MODELS},
        "grpc_live": g.is_server_live(),
        "grpc_ready": g.is_server_ready(),
        "grpc_server": g.get_server_metadata(as_json=True),
        "grpc_models": {m: g.get_model_metadata(m, as_json=True) for m in MODELS},
        "grpc_config": {m: g.get_model_config(m, as_json=True) for m in MODELS},
        "grpc_model_ready": {m: g.is_model_ready(m) for m in MODELS},
    }
    try:
        h.get_model_metadata("no-such-model")
        out["http_unknown"] = "answered"
    except InferenceServerException as e:
        out["http_unknown"] = e.message()
    return out


def infer(http_addr, grpc_addr, out_dir):
    rng = np.random.default_rng(7)
    h = httpclient.InferenceServerClient(http_addr)
    g = grpcclient.InferenceServerClient(grpc_addr)
    done = []
    for model, specs in MODELS.items():
        for how in ["http-binary", "http-json", "grpc"]:
            arrays = make_inputs(model, 3, rng)
            if how.startswith("http"):
                binary = how == "http-binary"
                inputs = []
                for (name, dtype, _), a in zip(specs, arrays):
                    i = httpclient.InferInput(name, list(a.shape), dtype)
                    i.set_data_from_numpy(a, binary_data=binary)
                    inputs.append(i)
                meta = h.get_model_metadata(model)
                outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]]
                result = h.infer(model, inputs, outputs=outputs, request_id="req-" + how)
                names = [o["name"] for o in meta["outputs"]]
                rid = result.get_response()["id"]
            else:
                inputs = []
                for (name, dtype, _), a in zip(specs, arrays):
                    i = grpcclient.InferInput(name, list(a.shape), dtype)
                    i.set_data_from_numpy(a)
                    inputs.append(i)
                meta = g.get_model_metadata(model, as_json=True)
                names = [o["name"] for o in meta["outputs"]]
                result = g.infer(model, inputs, request_id="req-grpc")
                rid = result.get_response(as_json=True)["id"]
            for k, a in enumerate(arrays):
                np.save(f"{out_dir}/{model}-{how}-in{k}.npy", a)
            shapes = {}
            for n in names:
                y = result.as_numpy(n)
                np.save(f"{out_dir}/{model}-{how}-{n}.npy", y)
                shapes[n] = [list(y.shape), str(y.dtype)]
            done.append({"model": model, "how": how, "id": rid, "inputs": len(arrays), "outputs": shapes})
    return done


def raw_request(model, tensors, raw):
    r = service_pb2.ModelInferRequest(model_name=model)
    for name, dtype, shape in tensors:
        t = r.inputs.add()
        t.name, t.datatype = name, dtype
        t.shape.extend(shape)
    r.raw_input_contents.extend(raw)
    return r


def grpc_errors(grpc_addr):
    channel = grpc.insecure_channel(grpc_addr, options=[("grpc.max_send_message_length", 64 << 20)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    good_x = np.ones([1, 512], np.float32)
    good = raw_request("small-mlp", [("input0", "FP32", [1, 512])], [good_x.tobytes()])
    cases = {
        "unknown_model": raw_request("nope", [("input0", "FP32", [1, 512])], [good_x.tobytes()]),
        "wrong_datatype": raw_request("small-mlp", [("input0", "FP64", [1, 512])], [np.ones([1, 512]).tobytes()]),
        "wrong_shape": raw_request("small-mlp", [("input0", "FP32", [1, 511])], [np.ones([1, 511], np.float32).tobytes()]),
        "wrong_byte_size": raw_request("small-mlp", [("input0", "FP32", [1, 512])], [good_x.tobytes()[:-4]]),
        "unknown_input": raw_request("small-mlp", [("x", "FP32", [1, 512])], [good_x.tobytes()]),
        "missing_input": raw_request("two_inputs", [("input0", "INT64", [1, 16])], [np.zeros([1, 16], np.int64).tobytes()]),
        "too_large": raw_request("small-mlp", [("input0", "FP32", [1024, 512])], [np.zeros([1024, 512], np.float32).tobytes()]),
    }
    out = {}
    for case, req in cases.items():
        try:
            stub.ModelInfer(req, timeout=30)
            out[case] = {"code": "OK"}
        except grpc.RpcError as e:
            out[case] = {"code": e.code().name, "message": e.details()}
        answer = stub.ModelInfer(good, timeout=30)
        y = np.frombuffer(answer.raw_output_contents[0], np.float32)
        out[case]["then_good"] = [answer.outputs[0].datatype, list(answer.outputs[0].shape), int(y.size)]
    return out


def compressed(http_addr):
    h = httpclient.InferenceServerClient(http_addr)
    x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(1, 512)
    out = {}
    for algorithm in [None, "gzip", "deflate"]:
        i = httpclient.InferInput("input0", [1, 512], "FP32")
        i.set_data_from_numpy(x, binary_data=False)
        result = h.infer("small-mlp", [i], request_compression_algorithm=algorithm)
        out[algorithm or "none"] = result.as_numpy("output0").tolist()
    return out


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    cmd, http_addr, grpc_addr = sys.argv[1:4]
    if cmd == "metadata":
        doc = metadata(http_addr, grpc_addr)
    elif cmd == "infer":
        doc = infer(http_addr, grpc_addr, sys.argv[4])
    elif cmd == "grpc-errors":
        doc = grpc_errors(grpc_addr)
    elif cmd == "compressed":
        doc = compressed(http_addr)
    else:
        sys.exit(__doc__)
    print(json.dumps(doc, default=str))


if __name__ == "__main__":
    main()
