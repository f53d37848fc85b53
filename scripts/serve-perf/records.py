"""The records of the serving comparison (one JSON object per line of RUN_DIR/records.jsonl), made
from what each measurement leaves behind. Standard library only; serve_perf.py writes them and
report.py reads them.
"""
import csv
import json
import os
import re


def perf_analyzer_record(csv_path, model, target, concurrency, rc, log_path, peak_kb):
    """One perf_analyzer measurement: its CSV row (-f), else its own summary lines in LOG_PATH, else
    an error record with the end of the log. RC is its exit status, PEAK_KB its peak resident size."""
    rec = {"model": model, "target": target, "concurrency": int(concurrency), "tool": "perf_analyzer",
           "client_peak_rss_mib": int(peak_kb) // 1024}
    text = open(log_path, errors="replace").read() if os.path.exists(log_path) else ""
    try:
        with open(csv_path) as f:
            row = next(csv.DictReader(f))
        rec.update(infer_per_s=float(row["Inferences/Second"]), p50_us=float(row["p50 latency"]),
                   p90_us=float(row["p90 latency"]), p95_us=float(row["p95 latency"]), p99_us=float(row["p99 latency"]))
        if row.get("Avg latency"):  # not every perf_analyzer version writes it
            rec["avg_us"] = float(row["Avg latency"])
    except Exception as e:
        parsed = from_summary_lines(text)
        if parsed:
            rec.update(parsed)
            rec["note"] = f"read from perf_analyzer's summary lines (its CSV: {e})"
        else:
            rec["error"] = f"perf_analyzer exit {rc}: {e}; " + text[-400:]
    if str(rc) != "0" and "error" not in rec:
        rec["warning"] = f"perf_analyzer exit {rc} (see {os.path.basename(log_path)})"
    return rec


def from_summary_lines(text):
    """perf_analyzer's own summary lines: 'Concurrency: C, throughput: X infer/sec', 'pNN latency:
    N usec'; None unless throughput, p50 and p99 are all there."""
    out = {}
    m = re.findall(r"throughput: ([0-9.]+) infer/sec", text)
    if m:
        out["infer_per_s"] = float(m[-1])
    for q in ("50", "90", "95", "99"):
        m = re.findall(rf"p{q} latency: ([0-9]+) usec", text)
        if m:
            out[f"p{q}_us"] = float(m[-1])
    m = re.findall(r"Avg latency: ([0-9]+) usec", text)
    if m:
        out["avg_us"] = float(m[-1])
    return out if "infer_per_s" in out and "p50_us" in out and "p99_us" in out else None


def engine_record(json_path, model, concurrency):
    """One in-process run: the JSON that `tch-streams run --json` wrote."""
    with open(json_path) as f:
        d = json.load(f)
    s = d["stats"]
    return {"model": model, "target": "engine", "concurrency": int(concurrency), "tool": "tch-streams run",
            "infer_per_s": d["requests_per_s"], "p50_us": s["latency_us_p50"], "p95_us": s["latency_us_p95"],
            "p99_us": s["latency_us_p99"]}


def engine_failure(model, concurrency):
    return {"model": model, "target": "engine", "concurrency": int(concurrency),
            "error": f"tch-streams run failed: see logs/{model}-engine-c{concurrency}.log"}
