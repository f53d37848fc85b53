#!/usr/bin/env python3
"""Checks report.py on a made-up run: the last record of a (model, target, concurrency) wins,
failures show as "failed", the ratio columns divide the right cells (ours against PyTriton, the
engine, and the identity model at the same concurrency), and the CSV and SVG are written.
Standard library only; exits non-zero on the first wrong value.

usage: test_report.py
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def rec(model, target, c, rate, **extra):
    r = {"model": model, "target": target, "concurrency": c, "infer_per_s": rate, "p50_us": 1000.0, "p99_us": 2500.0}
    r.update(extra)
    return r


def main():
    records = [
        rec("small-mlp", "ours-grpc", 16, 1.0),  # replaced by the rerun below
        rec("small-mlp", "ours-grpc", 16, 3000.0),
        rec("small-mlp", "ours-http", 16, 4000.0),
        rec("small-mlp", "engine", 16, 12000.0),
        rec("small-mlp", "pytriton-grpc", 16, 200.0),
        rec("small-mlp", "pytriton-http", 16, 0.0, error="perf_analyzer exit 134"),
        rec("identity", "ours-grpc", 16, 6000.0),
        rec("transformer", "ours-grpc", 64, 0.0, error="perf_analyzer exit 137"),
        rec("transformer", "engine", 64, 5000.0),
    ]
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "records.jsonl"), "w") as f:
            f.write("\n".join(json.dumps(r) for r in records) + "\n")
        out = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), d], capture_output=True, text=True, check=True).stdout
        lines = {(l.split("|")[1].strip(), m): l for m, block in _blocks(out) for l in block}
        small = [c.strip() for c in lines[("16", "small-mlp")].split("|")[1:-1]]
        # concurrency, 5 targets, then ours/pytriton, ours/engine, ours/identity
        expect(small[1], "3,000 (1.00 / 2.50)", "the rerun replaces the first record")
        expect(small[5], "failed", "an error shows as failed")
        expect(small[6], "15.00x", "ours-grpc / pytriton-grpc = 3000 / 200")
        expect(small[7], "0.25x", "ours-grpc / engine = 3000 / 12000")
        expect(small[8], "0.50x", "ours-grpc / identity-grpc = 3000 / 6000")
        tf = [c.strip() for c in lines[("64", "transformer")].split("|")[1:-1]]
        expect(tf[1], "failed", "the transformer's failed point")
        expect(tf[7], "-", "no ratio against a failed point")
        ident = [c.strip() for c in lines[("16", "identity")].split("|")[1:-1]]
        expect(ident[8], "-", "the identity model is not compared with itself")
        with open(os.path.join(d, "summary.csv")) as f:
            rows = list(csv.DictReader(f))
        expect(len(rows), 8, "one CSV row per (model, target, concurrency)")
        grpc16 = [r for r in rows if (r["model"], r["target"], r["concurrency"]) == ("small-mlp", "ours-grpc", "16")]
        expect(float(grpc16[0]["infer_per_s"]), 3000.0, "the CSV holds the rerun")
        with open(os.path.join(d, "summary.svg")) as f:
            svg = f.read()
        expect(svg.count("<polyline") > 0, True, "the plot has a line for the measured points")
    print("test_report: ok")


def _blocks(md):
    """(model, table rows) for each model's table in report.py's markdown."""
    model, rows = None, []
    for line in md.splitlines():
        if line.startswith("**"):
            if model:
                yield model, rows
            model, rows = line.split("**")[1], []
        elif line.startswith("| ") and not line.startswith("| concurrency"):
            rows.append(line)
    if model:
        yield model, rows


def expect(got, want, what):
    if got != want:
        sys.exit(f"test_report: {what}: got {got!r}, expected {want!r}")


if __name__ == "__main__":
    main()
