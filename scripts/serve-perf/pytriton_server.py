#!/usr/bin/env python3
"""Serves one TorchScript file with PyTriton (Triton's Python backend, dynamic batching), the way
a Python user would: torch.jit.load once, then each batch goes through the model in the infer
function. One input `input0`, one output `output0`, float32, the batch first.

usage: pytriton_server.py --model FILE.pt --name NAME --sample-shape 512 [--device cuda:0]
         [--max-batch 64] [--delay-us 200] [--instances 4] [--http-port 8100]
         [--grpc-port 8101] [--metrics-port 8102]

Prints "pytriton ready" once the model is bound, then serves until SIGINT/SIGTERM.
"""
import argparse

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--sample-shape", required=True, help="dims of one sample, e.g. 512 or 64,256")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--delay-us", type=int, default=200)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--http-port", type=int, default=8100)
    ap.add_argument("--grpc-port", type=int, default=8101)
    ap.add_argument("--metrics-port", type=int, default=8102)
    a = ap.parse_args()
    shape = tuple(int(d) for d in a.sample_shape.split(","))
    model = torch.jit.load(a.model, map_location=a.device).eval()

    def make_infer():
        @batch
        def infer(input0):
            with torch.inference_mode():
                y = model(torch.from_numpy(input0).to(a.device))
            return {"output0": y.cpu().numpy()}

        return infer

    config = TritonConfig(http_port=a.http_port, grpc_port=a.grpc_port, metrics_port=a.metrics_port)
    # Model instances start side by side and meet at a handshake socket; on a busy machine one can
    # knock before the first listens and the load fails. A fresh start then succeeds.
    for attempt in range(1, 4):
        try:
            # PyTriton guards Triton's statistics and repository endpoints with a token by
            # default; perf_analyzer reads the statistics, so the guard is lifted (loopback only).
            with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
                triton.bind(
                    model_name=a.name,
                    infer_func=[make_infer() for _ in range(a.instances)],
                    inputs=[Tensor(name="input0", dtype=np.float32, shape=shape)],
                    outputs=[Tensor(name="output0", dtype=np.float32, shape=shape)],
                    config=ModelConfig(max_batch_size=a.max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=a.delay_us)),
                    strict=False,
                )
                print("pytriton ready", flush=True)
                triton.serve()
            return
        except Exception as e:  # noqa: BLE001 - any start-up failure is retried, then raised
            if attempt == 3:
                raise
            print(f"pytriton start attempt {attempt} failed ({type(e).__name__}); retrying", flush=True)

if __name__ == "__main__":
    main()
