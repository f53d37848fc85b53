#!/usr/bin/env python3
"""Python/PyTorch peer of the tch-streams benchmark harness.

Measures, in plain Python with PyTorch, the throughput a user would get from
the usual approaches to concurrent inference, and writes a JSON file
(schema "tch-streams-bench/1") that `tch-streams bench --with-python` reads
and shows next to the Rust numbers.

Workloads (float32, eval mode, torch.inference_mode() inside every thread,
since grad/inference mode is thread-local in PyTorch):
  small-mlp    Linear(512,1024) ReLU Linear(1024,1024) ReLU Linear(1024,512), input [1,512]
  large-mlp    Linear(2048,4096) ReLU Linear(4096,4096) ReLU Linear(4096,2048), input [64,2048]
  transformer  TransformerEncoderLayer(256, nhead=4, ff=1024, dropout=0, batch_first), input [1,64,256]
A "sample" is one element of dim 0 of the input (1, 64 and 1 per call).
All threads share one model instance; each thread has its own input tensor,
created on the device before any timing.

Modes, each measured for every thread count T:
  py-default  T Python threads call model(x) in a loop on the default stream.
  py-streams  as py-default, but each thread runs under its own torch.cuda.Stream.
  py-limit    the batched limit: one thread calls the model on T inputs
              concatenated along dim 0 (T x batch samples per call), inputs and
              answer on the device.
  py-limit-host  the batched limit of host-I/O serving: as py-limit, the input
              in pinned host memory (plain on CPU), copied in with
              non_blocking=True on a side stream, forward, copied out with
              non_blocking=True into pinned host buffers, stream synchronized.
  py-graphs   each thread captures its own CUDA graph of model(x) on its own
              stream (warm-up and capture done serially under a lock before
              any timing) and replays it in a loop.
  py-batcher  a serving thread per device, as a Python service would write it:
              the T client threads each keep --window requests in flight in
              its queue; the server takes everything queued (up to the
              workload's largest batch), concatenates it, runs the model on
              its own stream, synchronizes, and splits the result back.
  py-batcher-graphs  the same, padding each batch to a power-of-two bucket and
              replaying a CUDA graph captured per bucket before any timing.
py-streams, py-graphs and py-batcher-graphs need CUDA; elsewhere they are
listed under "skipped" with the reason, as is any point that fails at run time.

--host-io: the serving modes' inputs are made on the host and their answers
end there: py-default/py-streams copy the input to the device, run and copy
every output back (.to("cpu"), which synchronizes the thread's stream);
py-graphs copies into its static inputs and copies the static outputs back;
the batchers take host tensors, copy each batch in and its answer out. The
limits are the same either way. On CPU it changes nothing. The JSON config
records it as "host_io". On CUDA every result carries "memory": the device
memory reserved after the point was set up and its peak (bytes).

Protocol, per (workload, mode, T):
  1. The worker threads set up (stream, graph capture) and meet at a barrier.
  2. For each repetition:
     a. warm-up: all threads run for --warmup-s, then each synchronizes its
        stream and all meet at a barrier (so no queued work leaks into b);
     b. timed phase: t0 = perf_counter(), threads are released together and
        each counts completed calls until t0 + --duration-s, then
        synchronizes its stream; after the last thread is done the main
        thread synchronizes the device and takes t1. Elapsed = t1 - t0, so it
        includes the final synchronization and any overrun of the last call.
     c. samples/s = (sum of calls) x (samples per call) / elapsed.
  3. Median, min and max over the repetitions are reported, plus every run.
"""

import argparse
import collections
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from datetime import datetime, timezone

import torch

SCHEMA = "tch-streams-bench/1"
ALL_WORKLOADS = ("small-mlp", "large-mlp", "transformer")
ALL_MODES = ("py-default", "py-streams", "py-limit", "py-limit-host", "py-graphs", "py-batcher", "py-batcher-graphs")
LIMIT_MODES = ("py-limit", "py-limit-host")
BATCHER_MODES = ("py-batcher", "py-batcher-graphs")
CUDA_ONLY = {
    "py-streams": "CUDA streams need a CUDA device",
    "py-graphs": "CUDA graphs need a CUDA device",
    "py-batcher-graphs": "CUDA graphs need a CUDA device",
}
# Largest batch (samples) of the batcher modes per built-in workload; a TorchScript file gets
# 64 calls' worth.
MAX_BATCH = {"small-mlp": 512, "large-mlp": 1024, "transformer": 128}
FULL = {"threads": [1, 2, 4, 8, 16], "reps": 3, "warmup_s": 1.0, "duration_s": 2.0}
QUICK = {"threads": [1, 2], "reps": 3, "warmup_s": 0.1, "duration_s": 0.3}
GRAPH_WARMUP_CALLS = 3


def mlp(sizes):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers)


def build_workload(name):
    """Returns (model, per-thread input shape); dim 0 of the shape is the batch."""
    if name == "small-mlp":
        return mlp([512, 1024, 1024, 512]), (1, 512)
    if name == "large-mlp":
        return mlp([2048, 4096, 4096, 2048]), (64, 2048)
    if name == "transformer":
        layer = torch.nn.TransformerEncoderLayer(
            d_model=256, nhead=4, dim_feedforward=1024, dropout=0.0, batch_first=True)
        return layer, (1, 64, 256)
    raise ValueError(f"unknown workload {name!r}")


def resolve_device(spec):
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"error: --device {spec}: CUDA is not available in this torch build/machine")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            sys.exit(f"error: --device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            sys.exit("error: --device mps: MPS is not available")
        return torch.device("mps")
    if dev.type == "cpu":
        return torch.device("cpu")
    sys.exit(f"error: unsupported device {spec!r} (use cpu, cuda, cuda:N, mps or auto)")


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor()
    if not name or name in ("x86_64", "aarch64", "arm", "i386"):
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
    return name or "cpu"


def device_sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


class Request:
    __slots__ = ("xs", "rows", "out", "error", "done")

    def __init__(self, xs, rows):
        self.xs, self.rows, self.out, self.error = xs, rows, None, None
        self.done = threading.Event()


class Batcher:
    """One serving thread for a device: gathers what is queued, runs it as one batch, splits."""

    def __init__(self, model, dev, example, max_batch, graphs, host_io=False):
        self.model, self.dev, self.graphs, self.host_io = model, dev, graphs, host_io
        self.rows = example[0].shape[0]
        self.max_batch = max(max_batch, self.rows)
        self.queue = collections.deque()
        self.cv = threading.Condition()
        self.closed = False
        self.error = None
        self.ready = threading.Event()
        self.example = example
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def submit(self, xs):
        r = Request(xs, self.rows)
        with self.cv:
            if self.error is not None:
                raise self.error
            self.queue.append(r)
            self.cv.notify()
        return r

    def close(self):
        with self.cv:
            self.closed = True
            self.cv.notify()
        self.thread.join()

    def _buckets(self):
        sizes, b = [], self.rows
        while b < self.max_batch:
            sizes.append(b)
            b *= 2
        sizes.append(self.max_batch)
        return sizes

    def _capture(self, stream):
        """Per bucket: static inputs, a graph, its static output (warm-up and capture first)."""
        graphs = {}
        for b in self._buckets():
            static = [x[:1].to(self.dev).expand((b,) + tuple(x.shape[1:])).contiguous() for x in self.example]
            for _ in range(GRAPH_WARMUP_CALLS):
                self.model(*static)
            stream.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream):
                out = self.model(*static)
            stream.synchronize()
            graphs[b] = (g, static, out)
        return graphs

    def _serve(self):
        try:
            with torch.inference_mode():
                stream = None
                if self.dev.type == "cuda":
                    torch.cuda.set_device(self.dev)
                    stream = torch.cuda.Stream(self.dev)
                ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
                with ctx:
                    graphs = self._capture(stream) if self.graphs else None
                    self.ready.set()
                    self._loop(graphs, stream)
        except BaseException as e:  # noqa: BLE001 - reported to the clients
            with self.cv:
                self.error = e
                pending = list(self.queue)
                self.queue.clear()
            self.ready.set()
            for r in pending:
                r.error = e
                r.done.set()

    def _loop(self, graphs, stream):
        while True:
            with self.cv:
                while not self.queue and not self.closed:
                    self.cv.wait()
                if not self.queue:
                    return
                batch, n = [], 0
                while self.queue and n + self.queue[0].rows <= self.max_batch:
                    r = self.queue.popleft()
                    batch.append(r)
                    n += r.rows
            parts = [torch.cat([r.xs[k] for r in batch]) if len(batch) > 1 else batch[0].xs[k]
                     for k in range(len(batch[0].xs))]
            if self.host_io:
                parts = [p.to(self.dev) for p in parts]  # pageable host memory to the device
            if graphs is not None:
                bucket = next(b for b in sorted(graphs) if b >= n)
                g, static, out = graphs[bucket]
                for s_in, x in zip(static, parts):
                    s_in[:n].copy_(x)
                g.replay()
                ys = [t[:n].clone() for t in tensors_of(out)]
            else:
                ys = tensors_of(self.model(*parts))
            if self.host_io:
                ys = [y.to("cpu") for y in ys]  # waits for the stream: the answers are final
            if stream is not None:
                stream.synchronize()
            elif self.dev.type == "mps":
                torch.mps.synchronize()
            sizes = [r.rows for r in batch]
            split = [torch.split(y, sizes) for y in ys]
            for j, r in enumerate(batch):
                r.out = [parts_of_y[j] for parts_of_y in split]
                r.done.set()


def tensors_of(out):
    """The tensors of a model's output: a tensor, or a tuple/list/dict of them (in order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values()]
    return list(out)


class BatchClient:
    """A client thread's side: keeps `window` requests in flight."""

    def __init__(self, batcher, xs, window):
        self.batcher, self.xs, self.window = batcher, xs, window
        self.pending = collections.deque()

    def _complete_oldest(self):
        r = self.pending.popleft()
        r.done.wait()
        if r.error is not None:
            raise r.error

    def step(self):
        self.pending.append(self.batcher.submit(self.xs))
        if len(self.pending) >= self.window:
            self._complete_oldest()

    def settle(self):
        while self.pending:
            self._complete_oldest()


class Point:
    """Runs one (workload, mode, T) measurement with its own worker threads."""

    def __init__(self, model, inputs, mode, dev, reps, warmup_s, duration_s, max_batch=256, window=8,
                 host_io=False):
        self.model, self.mode, self.dev = model, mode, dev
        self.window = window
        # Inputs on the host, answers to the host: the serving modes with --host-io.
        self.host_io = host_io and mode not in LIMIT_MODES
        self.batcher = None
        if mode in BATCHER_MODES:
            self.batcher = Batcher(model, dev, inputs[0], max_batch, mode == "py-batcher-graphs",
                                   self.host_io)
        self.reps, self.warmup_s, self.duration_s = reps, warmup_s, duration_s
        # inputs[i] is thread i's call: the model's positional inputs, batch first.
        batch = inputs[0][0].shape[0]
        if mode in LIMIT_MODES:
            self.inputs = [[torch.cat(parts, dim=0) for parts in zip(*inputs)]]
            self.samples_per_call = batch * len(inputs)
            if mode == "py-limit-host" and dev.type == "cuda":
                self.inputs = [[x.pin_memory() for x in self.inputs[0]]]
        else:
            self.inputs = inputs
            self.samples_per_call = batch
        device_sync(dev)  # inputs are ready before any worker uses them
        n = len(self.inputs)
        self.barrier = threading.Barrier(n + 1, timeout=warmup_s + duration_s + 600.0)
        self.capture_lock = threading.Lock()
        self.counts = [0] * n
        self.deadline = 0.0
        self.errors = []
        self.keep = []  # graphs and their static outputs, alive until the point ends

    def run(self):
        """Returns the samples/s of every repetition."""
        threads = [threading.Thread(target=self._worker, args=(i,), daemon=True)
                   for i in range(len(self.inputs))]
        for t in threads:
            t.start()
        b, runs = self.barrier, []
        try:
            b.wait()  # all workers set up
            for _ in range(self.reps):
                self.deadline = time.perf_counter() + self.warmup_s
                b.wait()  # warm-up starts
                b.wait()  # warm-up over, every stream idle
                t0 = time.perf_counter()
                self.deadline = t0 + self.duration_s
                b.wait()  # timed phase starts
                b.wait()  # every worker done and synchronized
                device_sync(self.dev)
                elapsed = time.perf_counter() - t0
                runs.append(sum(self.counts) * self.samples_per_call / elapsed)
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join()
        if self.batcher is not None:
            self.batcher.close()
        self.keep.clear()
        if self.errors:
            raise self.errors[0]
        if len(runs) != self.reps:
            raise RuntimeError("a barrier broke (timeout) before the point completed")
        return runs

    def _worker(self, i):
        try:
            with torch.inference_mode():
                stream = None
                if self.dev.type == "cuda":
                    torch.cuda.set_device(self.dev)
                    if self.mode in ("py-streams", "py-graphs", "py-limit-host"):
                        stream = torch.cuda.Stream(self.dev)
                ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
                with ctx:
                    if self.batcher is not None:
                        client = BatchClient(self.batcher, self.inputs[i], self.window)
                        self._loop(i, client.step, client.settle)
                    else:
                        self._loop(i, self._prepare(i, stream), self._sync_fn())
        except threading.BrokenBarrierError:
            pass  # another thread failed; its error is reported
        except BaseException as e:  # noqa: BLE001 - reported by run()
            self.errors.append(e)
            self.barrier.abort()

    def _prepare(self, i, stream):
        model, xs, dev = self.model, self.inputs[i], self.dev
        if self.mode == "py-limit-host":
            return self._pinned_step(xs, stream)
        if self.mode != "py-graphs":
            if not self.host_io:
                return lambda: model(*xs)

            def host_step():
                ys = tensors_of(model(*[x.to(dev) for x in xs]))
                return [y.to("cpu") for y in ys]  # waits for the stream: the answer is final
            return host_step
        # Current stream is already `stream`, a side stream: warm up there, then
        # capture. Serialized, since concurrent captures are unsafe. With host I/O the
        # graph's static inputs are device copies of the thread's host inputs.
        static = [x.to(dev) for x in xs] if self.host_io else xs
        with self.capture_lock:
            stream.wait_stream(torch.cuda.default_stream(self.dev))
            for _ in range(GRAPH_WARMUP_CALLS):
                model(*static)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                out = model(*static)
            stream.synchronize()
        self.keep.append((graph, out, static))
        if not self.host_io:
            return graph.replay
        outs = tensors_of(out)

        def host_replay():
            for s_in, x in zip(static, xs):
                s_in.copy_(x)
            graph.replay()
            return [y.to("cpu") for y in outs]
        return host_replay

    def _pinned_step(self, xs, stream):
        """py-limit-host: copy in asynchronously, run, copy out asynchronously into pinned
        buffers (made at the first call), synchronize the stream."""
        model, dev, bufs = self.model, self.dev, []
        if dev.type != "cuda":
            return lambda: model(*xs)  # CPU: the input is already where it runs

        def step():
            ys = tensors_of(model(*[x.to(dev, non_blocking=True) for x in xs]))
            if not bufs:
                bufs.extend(torch.empty(y.shape, dtype=y.dtype, device="cpu").pin_memory() for y in ys)
            for b, y in zip(bufs, ys):
                b.copy_(y, non_blocking=True)
            stream.synchronize()
        return step

    def _sync_fn(self):
        if self.dev.type == "cuda":
            return lambda: torch.cuda.current_stream(self.dev).synchronize()
        if self.dev.type == "mps":
            return torch.mps.synchronize
        return lambda: None

    def _loop(self, i, step, sync):
        b, clock = self.barrier, time.perf_counter
        b.wait()  # set up
        for _ in range(self.reps):
            b.wait()  # warm-up starts
            deadline = self.deadline
            step()
            while clock() < deadline:
                step()
            sync()
            b.wait()  # warm-up over
            b.wait()  # timed phase starts
            deadline, calls = self.deadline, 1
            step()
            while clock() < deadline:
                step()
                calls += 1
            sync()
            self.counts[i] = calls
            b.wait()  # timed phase over


def csv_list(text, allowed=None):
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def thread_list(text):
    try:
        values = [int(s) for s in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("thread counts must be >= 1")
    return values


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def input_spec(text):
    """SHAPE[:DTYPE] -> (shape tuple, torch dtype), as `tch-streams --input` reads it."""
    shape, _, dtype = text.partition(":")
    dtype = dtype.strip().lower() or "float32"
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(f"bad dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {shape!r}: expected sizes joined by 'x'") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {shape!r}: every size must be >= 1")
    return dims, DTYPES[dtype]


def int_range(text):
    lo, sep, hi = text.partition("..")
    try:
        lo, hi = int(lo), int(hi)
    except ValueError:
        lo = hi = 0
    if not sep or lo >= hi:
        raise argparse.ArgumentTypeError(f"bad range {text!r}: expected LO..HI with LO < HI")
    return lo, hi


def make_inputs(specs, lo_hi, dev):
    """One call's inputs: floats standard normal, integers uniform in LO..HI, bools fair coins."""
    out = []
    for shape, dtype in specs:
        if dtype == torch.bool:
            out.append(torch.rand(shape, device=dev) > 0.5)
        elif dtype in (torch.int64, torch.int32):
            out.append(torch.randint(lo_hi[0], lo_hi[1], shape, device=dev, dtype=dtype))
        else:
            out.append(torch.randn(shape, device=dev).to(dtype))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Python/PyTorch peer of the tch-streams benchmark: measures inference "
                    "throughput (samples/s) of the usual Python approaches and writes JSON "
                    f"(schema {SCHEMA}) for `tch-streams bench --with-python`.",
        epilog="Protocol: per (workload, mode, threads) point, threads meet at a barrier, "
               "run a warm-up, synchronize, then a timed phase whose elapsed time includes "
               "the final device synchronization; repeated --reps times (median/min/max).",
    )
    p.add_argument("--device", default="auto",
                   help="cpu | cuda | cuda:N | mps | auto: cuda if available, else cpu "
                        "(default auto)")
    p.add_argument("--workloads", type=lambda s: csv_list(s, ALL_WORKLOADS),
                   default=list(ALL_WORKLOADS),
                   help=f"comma-separated, from {','.join(ALL_WORKLOADS)} (default all)")
    p.add_argument("--modes", type=lambda s: csv_list(s, ALL_MODES),
                   default=list(ALL_MODES),
                   help=f"comma-separated, from {','.join(ALL_MODES)} (default all; "
                        "py-streams and py-graphs need CUDA and are skipped elsewhere)")
    p.add_argument("--threads", type=thread_list, default=None,
                   help=f"comma-separated thread counts (default {FULL['threads']}, "
                        f"--quick {QUICK['threads']})")
    p.add_argument("--reps", type=int, default=None,
                   help=f"repetitions per point (default {FULL['reps']})")
    p.add_argument("--warmup-s", type=float, default=None,
                   help=f"warm-up seconds per repetition (default {FULL['warmup_s']}, "
                        f"--quick {QUICK['warmup_s']})")
    p.add_argument("--duration-s", type=float, default=None,
                   help=f"timed seconds per repetition (default {FULL['duration_s']}, "
                        f"--quick {QUICK['duration_s']})")
    p.add_argument("--model", default=None, metavar="FILE.pt",
                   help="a TorchScript file to measure instead of the built-in workloads; "
                        "its inputs come from --input (workload name: the file's stem)")
    p.add_argument("--input", action="append", type=input_spec, default=[], metavar="SHAPE:DTYPE",
                   help="one input of --model per call, batch first, in forward's order, e.g. "
                        "1x128:int64 (dtypes: " + ", ".join(DTYPES) + "; default float32)")
    p.add_argument("--input-file", action="append", default=[], metavar="FILE.npy",
                   help="real data for one input of --model (samples along dim 0), in forward's "
                        "order; every call sends the whole array (instead of --input)")
    p.add_argument("--int-range", type=int_range, default=(0, 100), metavar="LO..HI",
                   help="integer inputs are filled uniformly from LO..HI, HI excluded (default 0..100)")
    p.add_argument("--window", type=int, default=8,
                   help="requests each client keeps in flight in the batcher modes (default 8, as the engine's clients)")
    p.add_argument("--out", default="results/peer.json", help="JSON output path, parent dirs created (default results/peer.json)")
    p.add_argument("--host-io", action="store_true",
                   help="the serving modes take their inputs from host memory and deliver their "
                        "answers to it (copies timed); recorded as \"host_io\" in the JSON config")
    p.add_argument("--quick", action="store_true",
                   help="short CPU smoke run; explicit flags override its values")
    args = p.parse_args(argv)
    args.data = None
    if args.input_file:
        if args.model is None or args.input:
            p.error("--input-file needs --model and replaces --input")
        import numpy as np
        args.data = [torch.from_numpy(np.load(f)) for f in args.input_file]
        args.input = [(tuple(t.shape), t.dtype) for t in args.data]
    if args.model is not None:
        if not args.input:
            p.error("--model needs its inputs: --input SHAPE:DTYPE per argument of forward")
        if len({shape[0] for shape, _ in args.input}) != 1:
            p.error("every --input needs the same batch size (dim 0)")
        args.workloads = [os.path.splitext(os.path.basename(args.model))[0]]
    elif args.input:
        p.error("--input needs --model")
    base = QUICK if args.quick else FULL
    for key in base:
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.reps < 1 or args.warmup_s < 0 or args.duration_s <= 0:
        p.error("need --reps >= 1, --warmup-s >= 0 and --duration-s > 0")
    return args


def print_table(results, skipped):
    head = f"{'workload':<12} {'mode':<17} {'threads':>7} {'median':>12} {'min':>12} {'max':>12}"
    print(head)
    print("-" * len(head))
    for r in results:
        s = r["samples_per_s"]
        print(f"{r['workload']:<12} {r['mode']:<17} {r['threads']:>7} "
              f"{s['median']:>12.1f} {s['min']:>12.1f} {s['max']:>12.1f}")
    print("(samples/s)")
    for s in skipped:
        print(f"skipped: {s['workload']} {s['mode']}: {s['reason']}")
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    dev = resolve_device(args.device)
    torch.manual_seed(0)
    cfg = {"threads": args.threads, "reps": args.reps,
           "warmup_s": args.warmup_s, "duration_s": args.duration_s, "host_io": args.host_io}
    print(f"python-peer: torch {torch.__version__} on {dev} ({device_name(dev)}), "
          f"intra-op threads {torch.get_num_threads()}, config {cfg}", file=sys.stderr)
    results, skipped = [], []
    modes = []
    for mode in args.modes:
        if dev.type != "cuda" and mode in CUDA_ONLY:
            skipped.extend({"workload": w, "mode": mode, "reason": CUDA_ONLY[mode]}
                           for w in args.workloads)
            print(f"skip {mode}: {CUDA_ONLY[mode]}", file=sys.stderr)
        else:
            modes.append(mode)
    total, done = len(args.workloads) * len(modes) * len(args.threads), 0
    for workload in args.workloads:
        if args.model is not None:
            model = torch.jit.load(args.model, map_location=dev).eval()
            specs = args.input
        else:
            model, shape = build_workload(workload)
            model = model.to(device=dev, dtype=torch.float32).eval()
            specs = [(shape, torch.float32)]
        batch = specs[0][0][0]
        for mode in modes:
            for t in args.threads:
                done += 1
                # Host inputs for py-limit-host, and for the serving modes with --host-io.
                on_host = mode == "py-limit-host" or (args.host_io and mode != "py-limit")
                where = torch.device("cpu") if on_host else dev
                if args.data is not None:
                    inputs = [[d.to(where) for d in args.data] for _ in range(t)]
                else:
                    inputs = [make_inputs(specs, args.int_range, where) for _ in range(t)]
                memory = None
                try:
                    max_batch = MAX_BATCH.get(workload, 64 * batch)
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(dev)
                    point = Point(model, inputs, mode, dev, args.reps, args.warmup_s,
                                  args.duration_s, max_batch, args.window, args.host_io)
                    if dev.type == "cuda":
                        built = (torch.cuda.memory_reserved(dev), torch.cuda.memory_allocated(dev))
                    runs = point.run()
                    if dev.type == "cuda":
                        memory = {"after_build_bytes": built[0], "after_build_allocated_bytes": built[1],
                                  "peak_bytes": torch.cuda.max_memory_reserved(dev),
                                  "peak_allocated_bytes": torch.cuda.max_memory_allocated(dev)}
                    del point
                except Exception as e:  # noqa: BLE001 - recorded, not dropped
                    reason = f"threads={t}: failed: {type(e).__name__}: {e}".splitlines()[0]
                    skipped.append({"workload": workload, "mode": mode, "reason": reason})
                    print(f"[{done}/{total}] {workload} {mode} T={t}: {reason}", file=sys.stderr)
                    continue
                finally:
                    del inputs
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                stats = {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}
                result = {"workload": workload, "mode": mode, "threads": t,
                          "batch": batch, "samples_per_s": stats, "runs": runs}
                if memory is not None:
                    result["memory"] = memory
                results.append(result)
                print(f"[{done}/{total}] {workload} {mode} T={t}: median {stats['median']:.1f} "
                      f"samples/s (min {stats['min']:.1f}, max {stats['max']:.1f})",
                      file=sys.stderr, flush=True)
        del model
    doc = {
        "schema": SCHEMA,
        "tool": "python-peer",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": str(dev),
        "device_name": device_name(dev),
        "torch_version": torch.__version__,
        "config": cfg,
        "results": results,
        "skipped": skipped,
    }
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print_table(results, skipped)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
