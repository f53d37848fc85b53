//! The CSV table: one row per (tool, workload, mode, threads), ours first, then the peer's.

use super::report::{efficiency, BenchReport};

/// The header line (without newline).
pub const CSV_HEADER: &str = "tool,workload,mode,threads,batch,median,min,max,efficiency,p50_us,p99_us";

/// Renders `report` as CSV (RFC 4180 quoting). Throughputs are samples/s written exactly as in
/// the JSON; `efficiency` is empty without a T = 1 point of the same mode; the latency columns
/// are empty except for engine points. Our `--tune` points follow our results (modes `tune:…`).
///
/// ```
/// use tch_streams_cli::bench::{to_csv, BenchDoc, BenchReport, CSV_HEADER};
/// let ours: BenchDoc = serde_json::from_str(r#"{"schema": "tch-streams-bench/1", "tool": "tch-streams",
///   "date": "2026-01-01T00:00:00Z", "device": "cpu", "device_name": "cpu", "torch_version": "2.11.0",
///   "config": {"threads": [1, 2], "reps": 1, "warmup_s": 0.0, "duration_s": 1.0},
///   "results": [
///     {"workload": "small-mlp", "mode": "tch-default", "threads": 1, "batch": 1,
///      "samples_per_s": {"median": 100.0, "min": 100.0, "max": 100.0}, "runs": [100.0]},
///     {"workload": "small-mlp", "mode": "tch-default", "threads": 2, "batch": 1,
///      "samples_per_s": {"median": 150.0, "min": 150.0, "max": 150.0}, "runs": [150.0]}],
///   "skipped": []}"#)?;
/// let csv = to_csv(&BenchReport { ours, peer: None });
/// let lines: Vec<&str> = csv.lines().collect();
/// assert_eq!(lines[0], CSV_HEADER);
/// assert_eq!(lines[2], "tch-streams,small-mlp,tch-default,2,1,150,150,150,0.7500,,");
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn to_csv(report: &BenchReport) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for doc in report.docs() {
        for r in doc.results.iter().chain(&doc.tune) {
            let s = r.samples_per_s;
            let eff = efficiency(doc, r).map_or(String::new(), |e| format!("{e:.4}"));
            let fields = [
                field(&doc.tool),
                field(&r.workload),
                field(&r.mode),
                r.threads.to_string(),
                r.batch.to_string(),
                s.median.to_string(),
                s.min.to_string(),
                s.max.to_string(),
                eff,
                r.latency_us.map_or(String::new(), |l| l.p50.to_string()),
                r.latency_us.map_or(String::new(), |l| l.p99.to_string()),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
    }
    out
}

/// Quotes a field holding a comma, quote or line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
