//! The `tch-streams-bench/1` JSON document, shared with `crates/tch-streams-cli/peer/python_peer.py`: one type per
//! object, field names exactly as the peer writes them.

use super::memory::DeviceMemory;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `schema` value both tools write.
pub const SCHEMA: &str = "tch-streams-bench/1";
/// The `tool` value of our documents.
pub const TOOL: &str = "tch-streams";
/// The `tool` value of the Python peer's documents.
pub const PEER_TOOL: &str = "python-peer";

/// One tool's results for one run.
///
/// ```
/// let doc: tch_streams_cli::bench::BenchDoc = serde_json::from_str(r#"{
///   "schema": "tch-streams-bench/1", "tool": "python-peer", "date": "2026-01-01T00:00:00Z",
///   "device": "cpu", "device_name": "cpu", "torch_version": "2.11.0",
///   "config": {"threads": [1], "reps": 3, "warmup_s": 0.1, "duration_s": 0.3},
///   "results": [{"workload": "small-mlp", "mode": "py-default", "threads": 1, "batch": 1,
///                "samples_per_s": {"median": 2.0, "min": 1.0, "max": 3.0}, "runs": [1.0, 2.0, 3.0]}],
///   "skipped": []}"#)?;
/// assert_eq!(doc.results[0].samples_per_s.median, 2.0);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchDoc {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// [`TOOL`] or [`PEER_TOOL`].
    pub tool: String,
    /// When the run started, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
    /// `cpu`, `mps` or `cuda:N`.
    pub device: String,
    /// The GPU's name, or the CPU model.
    pub device_name: String,
    /// The libtorch / PyTorch version that ran.
    pub torch_version: String,
    /// The sweep as configured.
    pub config: DocConfig,
    /// One entry per measured (workload, mode, threads).
    pub results: Vec<PointResult>,
    /// Modes not run, and points that failed, with the reason.
    pub skipped: Vec<Skipped>,
    /// The `--tune` sweep: the engine on hand-set configurations, mode named
    /// `tune:w<workers>-<batch|nobatch>-<graphs|nographs>` (ours only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tune: Vec<PointResult>,
}

/// The sweep parameters recorded in a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocConfig {
    /// Thread counts measured.
    pub threads: Vec<usize>,
    /// Repetitions per point.
    pub reps: usize,
    /// Warm-up seconds per repetition.
    pub warmup_s: f64,
    /// Timed seconds per repetition.
    pub duration_s: f64,
    /// The devices `engine-spread` ran over (ours only; absent when it did not run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread_devices: Vec<String>,
    /// `--host-io`: the serving modes took their inputs from the host and delivered their
    /// answers to it (always written; documents from before it read as false).
    #[serde(default)]
    pub host_io: bool,
    /// Engine flags the engine modes ran with beyond `--device` (`--workers 8 --batch-max 0`);
    /// absent: the engine's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_flags: Option<String>,
}

/// One measured point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    /// Workload name (`small-mlp`, `large-mlp`, `transformer`, or a TorchScript file's stem).
    pub workload: String,
    /// Mode name (ours: `tch-default`, `tch-streams`, `engine`, `engine-graphs`, `engine-spread`,
    /// `limit`, `limit-host`).
    pub mode: String,
    /// Thread count T.
    pub threads: usize,
    /// Samples (dim-0 rows) in one thread's input; for the limit modes too.
    pub batch: i64,
    /// Throughput over the repetitions.
    pub samples_per_s: Stats,
    /// Samples/s of every repetition, in order.
    pub runs: Vec<f64>,
    /// Per-request latency over the timed phases (engine points only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    /// The engine's configuration as it resolved it (engine points only), e.g.
    /// `4 worker(s), batching dynamic (max 1024 samples, wait 0 us), ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_config: Option<String>,
    /// Device memory of the point's engine (engine points on CUDA only; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<DeviceMemory>,
}

/// Latency percentiles of one point, microseconds: from a request's submission to the moment
/// its client saw the answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Latency {
    /// Percentiles of `us` (nearest rank); `None` when empty.
    ///
    /// ```
    /// let l = tch_streams_cli::bench::Latency::of(&mut (1..=100).map(f64::from).collect::<Vec<_>>()).unwrap();
    /// assert_eq!((l.p50, l.p99), (50.0, 99.0));
    /// ```
    pub fn of(us: &mut [f64]) -> Option<Latency> {
        if us.is_empty() {
            return None;
        }
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
        Some(Latency { p50: at(0.50), p99: at(0.99) })
    }
}

/// Median, min and max of the repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest repetition.
    pub min: f64,
    /// Largest repetition.
    pub max: f64,
}

impl Stats {
    /// Summarises `runs`; `None` when it is empty.
    ///
    /// ```
    /// let s = tch_streams_cli::bench::Stats::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
    /// assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
    /// ```
    pub fn of(runs: &[f64]) -> Option<Stats> {
        if runs.is_empty() {
            return None;
        }
        let mut v = runs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stats { median, min: v[0], max: v[n - 1] })
    }
}

/// A mode not run for a workload, or a point that failed (reason `threads=T: failed: ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Workload name.
    pub workload: String,
    /// Mode name.
    pub mode: String,
    /// Why.
    pub reason: String,
    /// The point got stuck: requests still unanswered at its deadline (its time plus
    /// [`BenchConfig::point_grace_s`](super::BenchConfig::point_grace_s)); in the JSON only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stuck: bool,
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (the `date` field).
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian).
pub(crate) fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), counting in 400-year eras of 146 097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // shift the epoch to 0000-03-01, so leap days end each year
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year (March-based), 0..365
    let mp = (5 * doy + 2) / 153; // month index from March, 0..11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
