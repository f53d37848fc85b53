#!/usr/bin/env python3
"""Serving comparison on a GPU: perf_analyzer (Triton's load generator) against `tch-streams
serve` (gRPC and HTTP) and against the same TorchScript file served by PyTriton (Triton, Python
backend, dynamic batching, torch.jit.load in the infer function); plus our in-process engine
(`tch-streams run`, host inputs and outputs) at the same concurrency. Small MLP and
transformer; concurrency 1, 4, 16, 64. Results: RUN_DIR/records.jsonl, summary.{json,csv,md,svg}.

  scripts/serve-perf.sh pack [WHEELS_DIR] [OUT_DIR] [PY_VERSION]
      where the network is: turn the downloaded wheels into the bundles a GPU machine without
      network needs: OUT_DIR/pa.tgz (the perf_analyzer binary) and OUT_DIR/pytriton.tar.xz
      (PyTriton without its unused stubs and libpython3.13, with its dependencies).
      Defaults: ~/.cache/tch-streams/wheels/serve-gpu, .gpu/serve-perf, 3.12.
  scripts/serve-perf.sh run --bin PATH [--bundles DIR] [--part ours|pytriton|all]
      [--models small-mlp,transformer] (also: identity, no work: the protocol-and-client ceiling)
      [--concurrency 1,4,16,64] [--device cuda:0] [--out RUN_DIR]
      [--seconds 3] (the in-process runs, and perf_analyzer's window unless --window-ms)
      [--window-ms MS] [--pa-args "more perf_analyzer flags, e.g. --async"]
      [--engine-args "--workers 2 ..."] [--pytriton-delay-us 0] [--pytriton-instances 4]
      [--python python3]
      on the GPU machine: measure; appends to RUN_DIR/records.jsonl (run the parts in separate
      invocations with the same --out when needed, then `report`).
  scripts/serve-perf.sh report RUN_DIR      summary files and the markdown table

Both sides run as a user would start them. Ours: the engine's defaults (batching calibrated at
start-up, no wait beyond what is already queued) unless --engine-args says otherwise. PyTriton:
dynamic batching up to 64 samples (no request here carries more than the concurrency, 64) with
Triton's default queue delay of 0, the same policy as ours; --engine-args with --batch-max /
--batch-wait-us, or --pytriton-delay-us, sets its batching too.
"""
import glob
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import records  # noqa: E402

# Wheels PyTriton needs beyond the GPU machine's python (torch), as pip names the files (NAME or
# NAME-VERSION). numpy 1.26: PyTriton 0.7 requires numpy < 2, and with numpy 2 its answers come
# back empty (0 bytes per output; found on CPU). tritonclient 2.60 (with grpcio < 1.68, protobuf
# 5) rather than the newest: later ones import ml_dtypes (25 MB) at start-up. PyTriton's own
# command-line tool (typer, rich, pydantic) is not needed to serve.
PYTRITON_WHEELS = """nvidia_pytriton numpy-1.26.4 pyzmq sh tritonclient-2.60.0 grpcio-1.67.1 protobuf-5.29.5 typing_inspect
  mypy_extensions wrapt typing_extensions importlib_metadata zipp geventhttpclient gevent greenlet zope_event
  zope_interface brotli certifi urllib3 python_rapidjson aiohttp aiohappyeyeballs aiosignal attrs frozenlist
  multidict propcache yarl idna packaging""".split()
PLATFORMS = ["manylinux_2_38_x86_64", "manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]
SHAPES = {"small-mlp": "512", "identity": "512", "transformer": "64,256"}


class Die(Exception):
    """serve-perf: MESSAGE on stderr, exit 1."""


def call(cmd, **kw):
    """Runs CMD and returns its exit status; 127 when it is not installed (e.g. no nvidia-smi)."""
    try:
        return subprocess.run(cmd, **kw).returncode
    except FileNotFoundError:
        return 127


def sh(cmd, **kw):
    """Runs CMD; a non-zero exit ends serve-perf with that status (as `set -e` did)."""
    rc = subprocess.run(cmd, **kw).returncode
    if rc != 0:
        raise SystemExit(rc)


# ---- pack ----

def version_key(path):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", os.path.basename(path))]


def find_wheel(wheels, name):
    """NAME-VERSION: the first such file; NAME: its newest version."""
    if re.search(r"-[0-9]", name):
        found = sorted(glob.glob(os.path.join(glob.escape(wheels), name + "-*.whl")))
        return found[0] if found else None
    found = sorted(glob.glob(os.path.join(glob.escape(wheels), name + "-[0-9]*.whl")), key=version_key)
    return found[-1] if found else None


def pack(args):
    wheels = args[0] if len(args) > 0 and args[0] else os.path.expanduser("~/.cache/tch-streams/wheels/serve-gpu")
    out = args[1] if len(args) > 1 and args[1] else ".gpu/serve-perf"
    py = args[2] if len(args) > 2 and args[2] else "3.12"
    if not os.path.isdir(wheels):
        raise Die(f"no wheel directory {wheels} (see README: Serve, GPU comparison)")
    os.makedirs(out, exist_ok=True)
    files = []
    for w in PYTRITON_WHEELS:
        f = find_wheel(wheels, w)
        if not f:
            raise Die(f"wheel {w} missing in {wheels}")
        files.append(f)
    with tempfile.TemporaryDirectory() as tmp:
        site = os.path.join(tmp, "site")
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        sh([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
            "--only-binary=:all:", "--python-version", py, "--implementation", "cp", "--abi", "cp" + py.replace(".", "", 1)]
           + plat + ["--target", site] + files)
        # Only the stub for this Python; the bundled libpython3.13 serves the 3.13 stub alone.
        stubs = os.path.join(site, "pytriton", "tritonserver", "python_backend_stubs")
        for name in os.listdir(stubs):
            if name != py:
                shutil.rmtree(os.path.join(stubs, name), ignore_errors=True)
        for lib in glob.glob(os.path.join(site, "nvidia_pytriton.libs", "libpython3-*.13.so*")):
            os.remove(lib)
        shutil.rmtree(os.path.join(site, "bin"), ignore_errors=True)
        for d, subdirs, _ in os.walk(site):
            if "__pycache__" in subdirs:
                shutil.rmtree(os.path.join(d, "__pycache__"))
                subdirs.remove("__pycache__")
        # xz: smaller than gzip, and unpacked the same way on the GPU machine.
        with tarfile.open(os.path.join(out, "pytriton.tar.xz"), "w:xz", preset=9) as t:
            for name in sorted(os.listdir(site)):
                t.add(os.path.join(site, name), arcname=name)
        pa = sorted(glob.glob(os.path.join(glob.escape(wheels), "perf_analyzer-*.whl")))
        if not pa:
            raise Die(f"no perf_analyzer wheel in {wheels}")
        zipfile.ZipFile(pa[0]).extractall(os.path.join(tmp, "pa"))
        bindir = os.path.join(tmp, "pa", "perf_analyzer", "bin")
        os.chmod(os.path.join(bindir, "perf_analyzer"), 0o755)
        sh(["tar", "-C", bindir, "-czf", os.path.join(out, "pa.tgz"), "perf_analyzer"])
    sh(["ls", "-l", out])
    sizes = sum(os.path.getsize(os.path.join(out, f)) for f in ("pa.tgz", "pytriton.tar.xz"))
    print(f"{sizes}\ttotal", flush=True)


# ---- run ----

class Run:
    """The options of `run` (defaults as documented above) and what one invocation started."""

    FLAGS = {"--bin": "bin", "--bundles": "bundles", "--part": "part", "--models": "models",
             "--concurrency": "concurrency", "--device": "device", "--out": "out", "--seconds": "seconds",
             "--window-ms": "window_ms", "--pa-args": "pa_args", "--engine-args": "engine_args",
             "--pytriton-instances": "instances", "--pytriton-delay-us": "pt_delay", "--python": "python"}

    def __init__(self, argv):
        self.bin, self.bundles, self.part, self.models = "", ".gpu/serve-perf", "all", "small-mlp,transformer"
        self.concurrency, self.device, self.out, self.seconds = "1,4,16,64", "cuda:0", "", "3"
        self.window_ms, self.pa_args, self.engine_args = "", "", ""
        self.instances, self.pt_delay, self.python = "4", "0", "python3"
        while argv:
            if argv[0] not in self.FLAGS:
                raise Die(f"unknown argument {argv[0]} (try --help)")
            if len(argv) < 2:
                raise Die(f"{argv[0]} needs a value (try --help)")
            setattr(self, self.FLAGS[argv[0]], argv[1])
            argv = argv[2:]
        if self.part not in ("ours", "pytriton", "all"):
            raise Die("--part ours|pytriton|all")
        if self.part != "pytriton" and not (self.bin and os.access(self.bin, os.X_OK)):
            raise Die("--bin PATH: the tch-streams binary to measure")
        self.out = self.out or "results/serve-" + time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        self.window = int(self.window_ms) if self.window_ms else int(self.seconds) * 1000
        self.work = self.site = ""
        self.children = []

    def logs(self, name):
        return os.path.join(self.out, "logs", name)

    def record(self, rec):
        line = json.dumps(rec)
        with open(os.path.join(self.out, "records.jsonl"), "a") as f:
            f.write(line + "\n")
        print("  " + line, flush=True)

    def start(self, cmd, out, err, **kw):
        p = subprocess.Popen(cmd, stdout=out, stderr=err, **kw)
        self.children.append(p)
        return p

    def measure(self, model, target, proto, addr, c):
        """perf_analyzer at one concurrency; its CSV becomes one record."""
        csv_path, log = self.logs(f"{model}-{target}-c{c}.csv"), self.logs(f"{model}-{target}-c{c}.log")
        interval, peak, rc = self.window, 0, 0
        # One client thread per request in flight (--max-threads, default 16). perf_analyzer 2.60 keeps
        # every request and answer of a measurement: its memory grows by about their size per request
        # (with 64 KB tensors and a fast server, tens of GiB within a minute, with either server). A cap
        # on its address space makes it fail fast instead of taking the machine with it, and its peak
        # resident size is recorded. A window too noisy to be stable is measured once more with
        # windows twice as long, as perf_analyzer itself advises.
        for _ in range(2):
            cmd = ["timeout", "150", os.path.join(self.work, "pa", "perf_analyzer"), "-m", model, "-u", addr, "-i", proto,
                   "-b", "1", "--concurrency-range", f"{c}:{c}", "--max-threads", str(max(c, 16)),
                   "--measurement-interval", str(interval), "--max-trials", "6", "--stability-percentage", "25",
                   "-f", csv_path] + self.pa_args.split()
            with open(log, "w") as f:
                p = self.start(cmd, f, subprocess.STDOUT, preexec_fn=lambda: resource.setrlimit(
                    resource.RLIMIT_AS, (48 << 30, 48 << 30)))
            while p.poll() is None:
                ps = subprocess.run(["ps", "-o", "rss=", "--ppid", str(p.pid)], capture_output=True, text=True).stdout
                peak = max([peak] + [int(k) for k in ps.split()])
                time.sleep(0.5)
            rc = p.returncode
            with open(log, errors="replace") as f:
                if "Failed to obtain stable measurement" not in f.read():
                    break
            interval *= 2
            print(f"  ({model} {target} c{c}: not stable; once more with {interval} ms windows)", flush=True)
        with open(log, "a") as f:
            f.write(f"perf_analyzer peak RSS: {peak // 1024} MiB; window {interval} ms\n")
        self.record(records.perf_analyzer_record(csv_path, model, target, c, rc, log, peak))

    def wait_for(self, path, pattern, proc, seconds):
        """Waits until a line of PATH matches PATTERN; False (its last 20 lines on stderr) when PROC
        exits first or SECONDS pass."""
        for _ in range(seconds * 10):
            if os.path.exists(path) and re.search(pattern, open(path, errors="replace").read(), re.M):
                return True
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        tail(path, 20, sys.stderr)
        return False

    def part_ours(self, model, concs):
        pt, shape = os.path.join(self.work, "models", model + ".pt"), SHAPES[model]
        inp = "1x" + shape.replace(",", "x") + ":float32"
        print(f"== {model}: in-process engine (tch-streams run, host inputs and outputs)", flush=True)
        for c in concs:
            js = self.logs(f"{model}-engine-c{c}.json")
            with open(js, "w") as o, open(self.logs(f"{model}-engine-c{c}.log"), "w") as e:
                rc = subprocess.run([self.bin, "run", "--device", self.device, "--model", pt, "--input", inp, "--host-inputs",
                                     "--cpu-output", "--clients", str(c), "--inflight", "1", "--duration", self.seconds,
                                     "--json"] + self.engine_args.split(), stdout=o, stderr=e).returncode
            self.record(records.engine_record(js, model, c) if rc == 0 else records.engine_failure(model, c))
        print(f"== {model}: tch-streams serve", flush=True)
        out, err = self.logs(f"{model}-serve.out"), self.logs(f"{model}-serve.err")
        with open(out, "w") as o, open(err, "w") as e:
            p = self.start([self.bin, "serve", "--device", self.device, "--model", pt, "--input", inp, "--name", model,
                            "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"] + self.engine_args.split(), o, e)
        if not self.wait_for(out, r"^listening ", p, 180):
            sys.stderr.write(open(err, errors="replace").read())
            raise Die("tch-streams serve did not start")
        if subprocess.run([self.python, os.path.join(HERE, "smoke.py"), "http", model, shape]).returncode != 0:
            raise Die("tch-streams serve answered the smoke request wrongly")
        for c in concs:
            self.measure(model, "ours-grpc", "grpc", "127.0.0.1:8001", c)
        for c in concs:
            self.measure(model, "ours-http", "http", "127.0.0.1:8000", c)
        with open(self.logs(f"{model}-serve.metrics"), "w") as m:
            call(["curl", "-s", "127.0.0.1:8002/metrics"], stdout=m, stderr=subprocess.DEVNULL)
        p.send_signal(signal.SIGTERM)
        if p.wait() != 0:
            print(f"  (serve exited {p.returncode if p.returncode >= 0 else 128 - p.returncode})", flush=True)
        tail(err, 1, sys.stdout, prefix="  ")

    def part_pytriton(self, model, concs):
        pt, shape = os.path.join(self.work, "models", model + ".pt"), SHAPES[model]
        max_batch, delay = "64", self.pt_delay
        # The same batching as ours when --engine-args says --batch-max/--batch-wait-us.
        m = re.search(r"--batch-max\s+([0-9]+)", self.engine_args)
        max_batch = m.group(1) if m else max_batch
        m = re.search(r"--batch-wait-us\s+([0-9]+)", self.engine_args)
        delay = m.group(1) if m else delay
        print(f"== {model}: PyTriton (max_batch_size {max_batch}, queue delay {delay} us, {self.instances} instance(s))", flush=True)
        # PyTriton copies tritonserver into a workspace, away from the libraries its rpath names.
        # Its own session: stopping it stops tritonserver and the stubs with it.
        env = dict(os.environ)
        libs = os.path.join(self.site, "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = libs + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        venv_py, log = os.path.join(self.work, "venv", "bin", "python"), self.logs(f"{model}-pytriton.log")
        with open(log, "w") as f:
            p = self.start([venv_py, os.path.join(HERE, "pytriton_server.py"), "--model", pt, "--name", model,
                            "--sample-shape", shape, "--device", self.device, "--max-batch", max_batch, "--delay-us", delay,
                            "--instances", self.instances, "--http-port", "8100", "--grpc-port", "8101",
                            "--metrics-port", "8102"], f, subprocess.STDOUT, env=env, start_new_session=True)
        if not self.wait_for(log, r"pytriton ready", p, 300):
            raise Die(f"PyTriton did not start (log: {log})")
        if subprocess.run([venv_py, os.path.join(HERE, "smoke.py"), "grpc", model, shape]).returncode != 0:
            raise Die(f"PyTriton answered the smoke request wrongly (log: {log})")
        for c in concs:
            self.measure(model, "pytriton-grpc", "grpc", "127.0.0.1:8101", c)
        for c in concs:
            self.measure(model, "pytriton-http", "http", "127.0.0.1:8100", c)
        # The whole session: PyTriton, tritonserver, the stubs (nothing may keep the ports).
        t0 = time.monotonic()
        signal_group(p.pid, signal.SIGINT)
        for _ in range(150):
            if p.poll() is not None:
                break
            time.sleep(0.1)
        if signal_group(p.pid, signal.SIGKILL):
            print(f"  (PyTriton's session killed after {int(time.monotonic() - t0)} s)", flush=True)
        p.wait()

    def prepare(self):
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="serve-perf.", dir="/tmp")
        os.makedirs(os.path.join(self.work, "pa"))
        sh(["tar", "-C", os.path.join(self.work, "pa"), "-xzf", os.path.join(self.bundles, "pa.tgz")])
        sh([self.python, os.path.join(HERE, "models.py"), os.path.join(self.work, "models"), self.device], stdout=subprocess.DEVNULL)
        with open(os.path.join(self.out, "env.txt"), "a") as env:
            def line(text):
                env.write(text + "\n")
                env.flush()
            line("date " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            line("device " + self.device)
            call(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           stdout=env, stderr=subprocess.DEVNULL)
            subprocess.run([self.python, "-c", 'import torch; print("torch", torch.__version__)'], stdout=env, stderr=env)
            line(f"engine args: {self.engine_args or '(the defaults)'}; pytriton instances: {self.instances}, queue delay "
                 f"{self.pt_delay} us; in-process run: {self.seconds} s; perf_analyzer window: {self.window} ms"
                 + (f"; perf_analyzer flags: {self.pa_args}" if self.pa_args else ""))
            if self.bin:
                subprocess.run([self.bin, "--version"], stdout=env, stderr=env)
        if self.part != "ours":
            self.pytriton_venv()

    def pytriton_venv(self):
        """A venv of our own over the machine's python: PyTriton's Python-backend stub finds its
        packages through the `python3` first on PATH (PyTriton puts this venv's bin there), so they
        must live in the venv, not on PYTHONPATH. A .pth adds the machine's torch (numpy 1.26 from
        the bundle comes first: PyTriton needs numpy < 2). The stub loads the system's libpython3.X:
        the venv is based on the system interpreter of that version when there is one, so the
        standard library matches the library that runs it."""
        ver = subprocess.run([self.python, "-c", 'import sys; print("%d.%d" % sys.version_info[:2])'],
                             capture_output=True, text=True, check=True).stdout.strip()
        base = next((c for c in (f"/usr/bin/python{ver}", f"/usr/local/bin/python{ver}") if os.access(c, os.X_OK)), self.python)
        venv = os.path.join(self.work, "venv")
        sh([base, "-m", "venv", "--without-pip", venv])
        vpy = os.path.join(venv, "bin", "python")
        self.site = subprocess.run([vpy, "-c", 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                   capture_output=True, text=True, check=True).stdout.strip()
        sh([self.python, "-c", "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])",
            os.path.join(self.bundles, "pytriton.tar.xz"), self.site])
        with open(os.path.join(self.site, "host-python.pth"), "w") as pth:
            sh([self.python, "-c", 'import site; print("\\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()] if p))'],
               stdout=pth)
        sh([vpy, "-c", 'import pytriton, zmq, tritonclient.grpc, torch, numpy; print("pytriton ready to import; numpy", numpy.__version__)'])

    def main(self):
        try:
            self.prepare()
            concs = [int(c) for c in self.concurrency.split(",") if c]
            for m in filter(None, self.models.split(",")):
                if m not in SHAPES:
                    raise Die(f"unknown model {m}")
                if self.part != "pytriton":
                    self.part_ours(m, concs)
                if self.part != "ours":
                    self.part_pytriton(m, concs)
            sh([self.python, os.path.join(HERE, "report.py"), self.out])
            print(f"results in {self.out}", flush=True)
        finally:
            for p in self.children:
                if p.poll() is None:
                    p.kill()
            if self.work:
                shutil.rmtree(self.work, ignore_errors=True)


def signal_group(pid, sig):
    """Signals the process group PID leads; False when it has no process left."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def tail(path, n, out, prefix=""):
    try:
        lines = open(path, errors="replace").read().splitlines()[-n:]
    except OSError:
        return
    out.write("".join(prefix + l + "\n" for l in lines))
    out.flush()


def main(argv):
    os.chdir(ROOT)
    cmd, args = (argv[0] if argv else ""), argv[1:]
    try:
        if cmd == "pack":
            pack(args)
        elif cmd == "run":
            Run(args).main()
        elif cmd == "report":
            if len(args) != 1:
                raise Die("report RUN_DIR")
            return subprocess.run(["python3", os.path.join(HERE, "report.py"), args[0]]).returncode
        elif cmd in ("-h", "--help", ""):
            print(__doc__.strip("\n"))
        else:
            raise Die(f"unknown command {cmd} (try --help)")
    except Die as e:
        print(f"serve-perf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
