//! [`BenchReport`]: our document, the peer's when it ran, and what is derived from them: the
//! efficiency metric, ours/peer and ours/limit ratios, and the text table.

use super::error::BenchError;
use super::modes::Mode;
use super::schema::{BenchDoc, PointResult, SCHEMA};
use serde_json::Value;
use std::fmt::Write as _;

/// The Python peer's document: typed for the tables and plots, and verbatim for the JSON we
/// write (so fields the peer adds are kept).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerDoc {
    /// The typed view.
    pub doc: BenchDoc,
    /// The document as the peer wrote it.
    pub raw: Value,
}

impl PeerDoc {
    /// Checks and types a peer document; `origin` names it in errors (a path, usually).
    pub fn from_value(raw: Value, origin: &str) -> Result<PeerDoc, BenchError> {
        let bad = |message: String| BenchError::Json { path: origin.to_string(), message };
        match raw.get("schema").and_then(Value::as_str) {
            Some(SCHEMA) => {}
            Some(other) => return Err(bad(format!("schema is '{other}', expected '{SCHEMA}'"))),
            None => return Err(bad(format!("no \"schema\" key; expected a '{SCHEMA}' document"))),
        }
        let doc: BenchDoc = serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
        Ok(PeerDoc { doc, raw })
    }
}

/// Everything one `bench` invocation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Our results (`tool` = `tch-streams`).
    pub ours: BenchDoc,
    /// The Python peer's, when it ran.
    pub peer: Option<PeerDoc>,
}

/// Best serving mode of ours vs best of the peer's, for one workload and thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRatio {
    /// Workload name.
    pub workload: String,
    /// Thread count T.
    pub threads: usize,
    /// Our best mode (limits excluded) and its median samples/s.
    pub ours: (String, f64),
    /// The peer's best mode (limits excluded) and its median samples/s.
    pub peer: (String, f64),
    /// ours / peer.
    pub ratio: f64,
}

/// Our best serving mode vs our batched limit, for one workload and thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRatio {
    /// Workload name.
    pub workload: String,
    /// Thread count T.
    pub threads: usize,
    /// Our best mode (limits excluded) and its median samples/s.
    pub ours: (String, f64),
    /// The limit compared with: `limit-host` when the serving modes had host I/O
    /// ([`DocConfig::host_io`](super::DocConfig::host_io)), else `limit` (the other one when
    /// only that one ran).
    pub limit_mode: String,
    /// That limit's median at the same T.
    pub limit: f64,
    /// ours / limit.
    pub ratio: f64,
}

/// `engine-spread` (workers over several devices) vs `engine` (one device), for one workload and
/// thread count: the multi-device scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct SpreadRatio {
    /// Workload name.
    pub workload: String,
    /// Thread count T.
    pub threads: usize,
    /// How many devices `engine-spread` used.
    pub devices: usize,
    /// `engine-spread` median samples/s.
    pub spread: f64,
    /// `engine` median samples/s at the same T.
    pub single: f64,
    /// spread / single.
    pub ratio: f64,
}

/// The best `engine-spread` median over T against the best `engine` median over T, for one
/// workload.
#[derive(Debug, Clone, PartialEq)]
pub struct SpreadPeak {
    /// Workload name.
    pub workload: String,
    /// `engine-spread`'s best point: (T, median samples/s).
    pub spread: (usize, f64),
    /// `engine`'s best point: (T, median samples/s).
    pub single: (usize, f64),
    /// spread / single.
    pub ratio: f64,
}

/// The `--tune` sweep's best point at one (workload, T), beside the engine's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneBest {
    /// Workload name.
    pub workload: String,
    /// Thread count T.
    pub threads: usize,
    /// The best tune point: its mode name (`tune:w4-batch-graphs`) and median samples/s.
    pub best: (String, f64),
    /// The defaults: `engine-graphs` where it ran (the default on CUDA), else `engine`.
    pub defaults: (String, f64),
    /// defaults / best.
    pub ratio: f64,
}

/// The seed project's scaling efficiency of a result: throughput(T) / (T × throughput(1)), on
/// medians of the same document, workload and mode; `None` without a T = 1 point.
pub fn efficiency(doc: &BenchDoc, r: &PointResult) -> Option<f64> {
    let one = doc.results.iter().find(|o| o.workload == r.workload && o.mode == r.mode && o.threads == 1)?;
    let base = one.samples_per_s.median * r.threads as f64;
    (base > 0.0).then(|| r.samples_per_s.median / base)
}

/// The result with the highest median among the single-device serving modes (limits and
/// `engine-spread` excluded) of a doc at (w, T).
fn best<'a>(doc: &'a BenchDoc, workload: &str, threads: usize) -> Option<&'a PointResult> {
    let spread = Mode::EngineSpread.name();
    doc.results
        .iter()
        .filter(|r| r.workload == workload && r.threads == threads && !Mode::is_limit_name(&r.mode) && r.mode != spread)
        .max_by(|a, b| a.samples_per_s.median.total_cmp(&b.samples_per_s.median))
}

/// (workload, T) pairs of a doc, in first-seen workload order and ascending T.
fn points(doc: &BenchDoc) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for w in workloads(doc) {
        let mut ts: Vec<usize> = doc.results.iter().filter(|r| r.workload == w).map(|r| r.threads).collect();
        ts.sort_unstable();
        ts.dedup();
        out.extend(ts.into_iter().map(|t| (w.clone(), t)));
    }
    out
}

/// The distinct values of `field` over a doc's results, in first-seen order.
fn first_seen(doc: &BenchDoc, field: impl Fn(&PointResult) -> &String) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &doc.results {
        if !out.contains(field(r)) {
            out.push(field(r).clone());
        }
    }
    out
}

/// Workload names in first-seen order.
pub(crate) fn workloads(doc: &BenchDoc) -> Vec<String> {
    first_seen(doc, |r| &r.workload)
}

/// Mode names in first-seen order.
pub(crate) fn modes(doc: &BenchDoc) -> Vec<String> {
    first_seen(doc, |r| &r.mode)
}

impl BenchReport {
    /// Attaches the peer's document (replacing any earlier one).
    pub fn attach_peer(&mut self, peer: PeerDoc) {
        self.peer = Some(peer);
    }

    /// Our document, then the peer's when present.
    pub fn docs(&self) -> Vec<&BenchDoc> {
        std::iter::once(&self.ours).chain(self.peer.as_ref().map(|p| &p.doc)).collect()
    }

    /// The JSON we write: our document, plus a top-level `"peer"` holding the peer's verbatim,
    /// and `"spread_ratios"` when `engine-spread` ran.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.ours).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            if let Some(peer) = &self.peer {
                map.insert("peer".into(), peer.raw.clone());
            }
            let spread = self.spread_ratios();
            if !spread.is_empty() {
                let rows = spread
                    .iter()
                    .map(|r| {
                        serde_json::json!({"workload": r.workload, "threads": r.threads, "devices": r.devices,
                                           "spread": r.spread, "single": r.single, "ratio": r.ratio})
                    })
                    .collect();
                map.insert("spread_ratios".into(), Value::Array(rows));
                let peaks = self
                    .spread_peaks()
                    .into_iter()
                    .map(|p| {
                        serde_json::json!({"workload": p.workload, "spread": {"threads": p.spread.0, "median": p.spread.1},
                                           "single": {"threads": p.single.0, "median": p.single.1}, "ratio": p.ratio})
                    })
                    .collect();
                map.insert("spread_peaks".into(), Value::Array(peaks));
            }
            let tune = self.tune_best();
            if !tune.is_empty() {
                let rows = tune
                    .iter()
                    .map(|b| {
                        serde_json::json!({"workload": b.workload, "threads": b.threads,
                                           "best": {"mode": b.best.0, "median": b.best.1},
                                           "defaults": {"mode": b.defaults.0, "median": b.defaults.1}, "ratio": b.ratio})
                    })
                    .collect();
                map.insert("tune_best".into(), Value::Array(rows));
            }
        }
        v
    }

    /// Per workload with both modes: each side at the load it serves best (at equal T, the
    /// spread engine gives each device only its share of the clients).
    pub fn spread_peaks(&self) -> Vec<SpreadPeak> {
        let peak = |w: &str, m: Mode| {
            self.ours
                .results
                .iter()
                .filter(|r| r.workload == w && r.mode == m.name())
                .max_by(|a, b| a.samples_per_s.median.total_cmp(&b.samples_per_s.median))
                .map(|r| (r.threads, r.samples_per_s.median))
        };
        workloads(&self.ours)
            .into_iter()
            .filter_map(|w| {
                let (s, o) = (peak(&w, Mode::EngineSpread)?, peak(&w, Mode::Engine)?);
                (o.1 > 0.0).then(|| SpreadPeak { workload: w.clone(), spread: s, single: o, ratio: s.1 / o.1 })
            })
            .collect()
    }

    /// `engine-spread` / `engine` at every (workload, T) where both ran.
    pub fn spread_ratios(&self) -> Vec<SpreadRatio> {
        let devices = self.ours.config.spread_devices.len();
        let find = |w: &str, t: usize, m: Mode| {
            self.ours.results.iter().find(|r| r.workload == w && r.threads == t && r.mode == m.name())
        };
        points(&self.ours)
            .into_iter()
            .filter_map(|(w, t)| {
                let (s, o) = (find(&w, t, Mode::EngineSpread)?, find(&w, t, Mode::Engine)?);
                let (sm, om) = (s.samples_per_s.median, o.samples_per_s.median);
                (om > 0.0).then(|| SpreadRatio { workload: w.clone(), threads: t, devices, spread: sm, single: om, ratio: sm / om })
            })
            .collect()
    }

    /// Per (workload, T) of the tune sweep: its best point against the defaults at that T.
    pub fn tune_best(&self) -> Vec<TuneBest> {
        let mut keys: Vec<(String, usize)> = Vec::new();
        for r in &self.ours.tune {
            if !keys.contains(&(r.workload.clone(), r.threads)) {
                keys.push((r.workload.clone(), r.threads));
            }
        }
        keys.into_iter()
            .filter_map(|(w, t)| {
                let best = self
                    .ours
                    .tune
                    .iter()
                    .filter(|r| r.workload == w && r.threads == t)
                    .max_by(|a, b| a.samples_per_s.median.total_cmp(&b.samples_per_s.median))?;
                let find = |m: Mode| self.ours.results.iter().find(|r| r.workload == w && r.threads == t && r.mode == m.name());
                let d = find(Mode::EngineGraphs).or_else(|| find(Mode::Engine))?;
                let (bm, dm) = (best.samples_per_s.median, d.samples_per_s.median);
                (bm > 0.0).then(|| TuneBest {
                    workload: w.clone(),
                    threads: t,
                    best: (best.mode.clone(), bm),
                    defaults: (d.mode.clone(), dm),
                    ratio: dm / bm,
                })
            })
            .collect()
    }

    /// Ours/peer at every (workload, T) both measured: best serving mode of each side.
    pub fn peer_ratios(&self) -> Vec<PeerRatio> {
        let Some(peer) = &self.peer else { return Vec::new() };
        points(&self.ours)
            .into_iter()
            .filter_map(|(w, t)| {
                let (o, p) = (best(&self.ours, &w, t)?, best(&peer.doc, &w, t)?);
                let (om, pm) = (o.samples_per_s.median, p.samples_per_s.median);
                (pm > 0.0).then(|| PeerRatio {
                    workload: w.clone(),
                    threads: t,
                    ours: (o.mode.clone(), om),
                    peer: (p.mode.clone(), pm),
                    ratio: om / pm,
                })
            })
            .collect()
    }

    /// Ours/limit at every (workload, T) with both a serving mode and a limit: `limit-host` when
    /// the serving modes had host I/O, else `limit` (either falls back on the other).
    pub fn limit_ratios(&self) -> Vec<LimitRatio> {
        let order = if self.ours.config.host_io { [Mode::LimitHost, Mode::Limit] } else { [Mode::Limit, Mode::LimitHost] };
        points(&self.ours)
            .into_iter()
            .filter_map(|(w, t)| {
                let o = best(&self.ours, &w, t)?;
                let l = order
                    .iter()
                    .find_map(|m| self.ours.results.iter().find(|r| r.workload == w && r.threads == t && r.mode == m.name()))?;
                let lm = l.samples_per_s.median;
                (lm > 0.0).then(|| LimitRatio {
                    workload: w.clone(),
                    threads: t,
                    ours: (o.mode.clone(), o.samples_per_s.median),
                    limit_mode: l.mode.clone(),
                    limit: lm,
                    ratio: o.samples_per_s.median / lm,
                })
            })
            .collect()
    }

    /// The human-readable summary: header, results with efficiency, ratios, skips.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for d in self.docs() {
            let _ = writeln!(
                s,
                "{}: torch {} on {} ({}), {}; threads {:?}, {} reps, warm-up {} s, timed {} s{}",
                d.tool,
                d.torch_version,
                d.device,
                d.device_name,
                d.date,
                d.config.threads,
                d.config.reps,
                d.config.warmup_s,
                d.config.duration_s,
                if d.config.host_io { "; host I/O (inputs from and answers to the host)" } else { "" }
            );
        }
        let head = format!(
            "{:<14} {:<12} {:<14} {:>3} {:>13} {:>13} {:>13} {:>6} {:>17} {:>13}",
            "workload", "tool", "mode", "T", "median", "min", "max", "eff", "p50/p99 us", "mem GB"
        );
        let _ = writeln!(s, "\n{head}\n{}", "-".repeat(head.len()));
        let mut all_workloads = workloads(&self.ours);
        for d in self.docs() {
            for w in workloads(d) {
                if !all_workloads.contains(&w) {
                    all_workloads.push(w);
                }
            }
        }
        for w in &all_workloads {
            for d in self.docs() {
                for m in modes(d) {
                    let mut rows: Vec<&PointResult> = d.results.iter().filter(|r| &r.workload == w && r.mode == m).collect();
                    rows.sort_by_key(|r| r.threads);
                    for r in rows {
                        let st = r.samples_per_s;
                        let eff = efficiency(d, r).map_or("-".into(), |e| format!("{e:.2}"));
                        let lat = r.latency_us.map_or("-".into(), |l| format!("{:.0}/{:.0}", l.p50, l.p99));
                        let mem = r.memory.map_or("-".into(), |m| format!("{:.2}/{:.2}", m.after_build_gb(), m.peak_gb()));
                        let _ = writeln!(
                            s,
                            "{:<14} {:<12} {:<14} {:>3} {:>13.1} {:>13.1} {:>13.1} {:>6} {:>17} {:>13}",
                            w, d.tool, m, r.threads, st.median, st.min, st.max, eff, lat, mem
                        );
                    }
                }
            }
        }
        let _ = writeln!(s, "(samples/s over the repetitions; eff = throughput(T) / (T x throughput(1)) of the same mode;");
        let _ = writeln!(s, " mem GB = device memory reserved after the engine's build / at its peak, engine points on CUDA)");
        if self.peer.is_some() {
            let _ = writeln!(s, "\nours / peer (best serving mode of each side; limits excluded):");
            let ratios = self.peer_ratios();
            if ratios.is_empty() {
                let _ = writeln!(s, "  (no workload and thread count measured by both)");
            }
            for r in ratios {
                let _ = writeln!(
                    s,
                    "  {:<14} T={:<3} {:>6.2}x   {} {:.1} vs {} {:.1}",
                    r.workload, r.threads, r.ratio, r.ours.0, r.ours.1, r.peer.0, r.peer.1
                );
            }
        }
        let limits = self.limit_ratios();
        if !limits.is_empty() {
            let _ = writeln!(s, "\nours / limit (best serving mode vs one batched call of T x batch samples):");
            for r in limits {
                let _ = writeln!(
                    s,
                    "  {:<14} T={:<3} {:>6.2}   {} {:.1} vs {} {:.1}",
                    r.workload, r.threads, r.ratio, r.ours.0, r.ours.1, r.limit_mode, r.limit
                );
            }
        }
        let tune = self.tune_best();
        if !tune.is_empty() {
            let _ = writeln!(s, "\ndefaults / best --tune point ({} configurations per workload and T):", self.ours.tune.len() / tune.len().max(1));
            for b in tune {
                let _ = writeln!(
                    s,
                    "  {:<14} T={:<3} {:>6.2}   {} {:.1} vs {} {:.1}",
                    b.workload, b.threads, b.ratio, b.defaults.0, b.defaults.1, b.best.0, b.best.1
                );
            }
        }
        let spread = self.spread_ratios();
        if !spread.is_empty() {
            let on = self.ours.config.spread_devices.join(",");
            let _ = writeln!(s, "\nengine-spread / engine (workers over {on} vs on {} alone):", self.ours.device);
            for r in spread {
                let _ = writeln!(s, "  {:<14} T={:<3} {:>6.2}x   {:.1} vs {:.1}", r.workload, r.threads, r.ratio, r.spread, r.single);
            }
            for p in self.spread_peaks() {
                let _ = writeln!(
                    s,
                    "  {:<14} peak  {:>6.2}x   {:.1} (T={}) vs {:.1} (T={})",
                    p.workload, p.ratio, p.spread.1, p.spread.0, p.single.1, p.single.0
                );
            }
        }
        let skipped: Vec<_> = self.docs().into_iter().flat_map(|d| d.skipped.iter().map(move |k| (d.tool.as_str(), k))).collect();
        if !skipped.is_empty() {
            let _ = writeln!(s, "\nskipped:");
            for (tool, k) in skipped {
                let _ = writeln!(s, "  [{tool}] {} {}: {}", k.workload, k.mode, k.reason);
            }
        }
        s
    }
}
