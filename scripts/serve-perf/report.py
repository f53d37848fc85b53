#!/usr/bin/env python3
"""Summarises a serving comparison run: every measurement (records.jsonl, one JSON object per
line: model, target, concurrency, infer_per_s, p50_us, p99_us, ...) into summary.json,
summary.csv, a markdown table (stdout and summary.md) and summary.svg (throughput and p99
against concurrency, one panel per model). No third-party packages needed.

usage: report.py RUN_DIR
"""
import csv
import json
import math
import os
import sys

TARGETS = ["ours-grpc", "ours-http", "engine", "pytriton-grpc", "pytriton-http"]
COLOURS = {"ours-grpc": "#1f77b4", "ours-http": "#17becf", "engine": "#2ca02c", "pytriton-grpc": "#d62728", "pytriton-http": "#ff7f0e"}


def load(run_dir):
    rows = []
    with open(os.path.join(run_dir, "records.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    # The last measurement of each (model, target, concurrency) wins (a rerun replaces it).
    latest = {}
    for r in rows:
        latest[(r["model"], r["target"], r["concurrency"])] = r
    return [latest[k] for k in sorted(latest, key=lambda k: (k[0], TARGETS.index(k[1]) if k[1] in TARGETS else 99, k[2]))]


def table(rows):
    models = sorted({r["model"] for r in rows})
    out = []
    for m in models:
        concs = sorted({r["concurrency"] for r in rows if r["model"] == m})
        get = {(r["target"], r["concurrency"]): r for r in rows if r["model"] == m}
        out.append(f"\n**{m}** (inferences/s, p50 / p99 ms)\n")
        # The identity model does no work: its figures are what the protocol, the server and the
        # client cost on this host, the most any model can reach through that client.
        ceiling = {(r["target"], r["concurrency"]): r for r in rows if r["model"] == "identity"}
        out.append("| concurrency | " + " | ".join(TARGETS) + " | ours-grpc / pytriton-grpc | ours-grpc / engine | ours-grpc / identity-grpc |")
        out.append("|---" * (len(TARGETS) + 4) + "|")
        for c in concs:
            cells = []
            for t in TARGETS:
                r = get.get((t, c))
                if r is None or r.get("error"):
                    cells.append("failed" if r else "-")
                else:
                    cells.append(f"{r['infer_per_s']:,.0f} ({r['p50_us'] / 1000:.2f} / {r['p99_us'] / 1000:.2f})")

            def ratio(a, b, of=None):
                ra, rb = get.get((a, c)), (of or get).get((b, c))
                if not ra or not rb or ra.get("error") or rb.get("error") or not rb["infer_per_s"]:
                    return "-"
                return f"{ra['infer_per_s'] / rb['infer_per_s']:.2f}x"

            out.append(f"| {c} | " + " | ".join(cells) + f" | {ratio('ours-grpc', 'pytriton-grpc')} | {ratio('ours-grpc', 'engine')}"
                       f" | {ratio('ours-grpc', 'ours-grpc', ceiling) if m != 'identity' else '-'} |")
    return "\n".join(out) + "\n"


def svg(rows, path):
    models = sorted({r["model"] for r in rows})
    w, h, pad = 460, 300, 55
    panels = [(m, key) for m in models for key in ("infer_per_s", "p99_us")]
    width, height = w * 2, h * len(models) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, (m, key) in enumerate(panels):
        ox, oy = (i % 2) * w, (i // 2) * h
        data = [r for r in rows if r["model"] == m and not r.get("error")]
        if not data:
            continue
        concs = sorted({r["concurrency"] for r in data})
        ys = [r[key] / (1000.0 if key == "p99_us" else 1.0) for r in data]
        ymax = max(ys) * 1.1 or 1.0
        lx = lambda c: ox + pad + (math.log2(c) - math.log2(concs[0])) / max(1e-9, math.log2(concs[-1]) - math.log2(concs[0])) * (w - 2 * pad)
        ly = lambda v: oy + h - pad + 10 - v / ymax * (h - 2 * pad)
        title = f"{m}: {'inferences/s' if key == 'infer_per_s' else 'p99 latency (ms)'} vs concurrency"
        parts.append(f'<text x="{ox + pad}" y="{oy + 20}" font-size="13">{title}</text>')
        parts.append(f'<line x1="{ox + pad}" y1="{ly(0)}" x2="{ox + w - pad}" y2="{ly(0)}" stroke="black"/>')
        parts.append(f'<line x1="{ox + pad}" y1="{ly(0)}" x2="{ox + pad}" y2="{ly(ymax)}" stroke="black"/>')
        for c in concs:
            parts.append(f'<text x="{lx(c)}" y="{ly(0) + 14}" text-anchor="middle">{c}</text>')
        for k in range(5):
            v = ymax * k / 4
            parts.append(f'<text x="{ox + pad - 4}" y="{ly(v) + 4}" text-anchor="end">{v:,.0f}</text>')
        for j, t in enumerate(TARGETS):
            pts = sorted((r["concurrency"], r[key] / (1000.0 if key == "p99_us" else 1.0)) for r in data if r["target"] == t)
            if not pts:
                continue
            line = " ".join(f"{lx(c):.1f},{ly(v):.1f}" for c, v in pts)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{COLOURS[t]}" stroke-width="2"/>')
            parts.append(f'<text x="{ox + w - pad + 2}" y="{oy + 40 + 13 * j}" fill="{COLOURS[t]}">{t}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run_dir = sys.argv[1]
    rows = load(run_dir)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    keys = ["model", "target", "concurrency", "infer_per_s", "p50_us", "p90_us", "p95_us", "p99_us", "avg_us", "error"]
    with open(os.path.join(run_dir, "summary.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)
    md = table(rows)
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(md)
    svg(rows, os.path.join(run_dir, "summary.svg"))
    print(md)


if __name__ == "__main__":
    main()
