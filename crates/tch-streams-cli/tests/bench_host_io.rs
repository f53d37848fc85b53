//! `bench --host-io`, the `limit-host` mode, device memory and real-model-shaped workloads, on
//! CPU: the flag is accepted and recorded in both tools' documents, limit-host is measured and
//! taken as the limit of host-I/O serving, the memory key is absent (no device allocator), and a
//! two-input int64 TorchScript model is fed through `--input`/`--int-range`; engine flags given
//! to bench reach its engine modes and are recorded. No timing thresholds.

mod cli_common;

use cli_common::{cli, fixture};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;
use tch_streams::models::Builtin;
use tch_streams_cli::bench::{self, BenchConfig, BenchReport, Mode, PeerRunner, Workload};

/// Runs `f` on another thread; fails the test if it takes longer than `secs` (a hang).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).unwrap_or_else(|_| panic!("watchdog: no result in {secs} s (a hang)"))
}

/// small-mlp, host I/O, threads 1 and 2, one short repetition each.
fn host_io_cfg() -> BenchConfig {
    let mut cfg = BenchConfig::quick(tch::Device::Cpu);
    cfg.workloads = vec![Workload::Builtin(Builtin::SmallMlp)];
    cfg.modes = vec![Mode::TchDefault, Mode::Engine, Mode::Limit, Mode::LimitHost];
    (cfg.threads, cfg.reps, cfg.warmup_s, cfg.duration_s) = (vec![1, 2], 2, 0.02, 0.05);
    cfg.host_io = true;
    cfg
}

/// The host-I/O sweep, run once for the tests of this file.
fn host_io_report() -> &'static BenchReport {
    static R: OnceLock<BenchReport> = OnceLock::new();
    R.get_or_init(|| within(300, || bench::run(&host_io_cfg()).expect("the host-I/O sweep runs on CPU")))
}

#[test]
fn host_io_runs_every_mode_records_the_flag_and_leaves_memory_out_on_cpu() {
    let report = host_io_report();
    let doc = &report.ours;
    assert!(doc.skipped.is_empty(), "{:?}", doc.skipped);
    assert!(doc.config.host_io);
    let mut got: Vec<(String, usize)> = doc.results.iter().map(|r| (r.mode.clone(), r.threads)).collect();
    got.sort();
    let mut want: Vec<(String, usize)> =
        ["tch-default", "engine", "limit", "limit-host"].iter().flat_map(|m| [1, 2].map(|t| (m.to_string(), t))).collect();
    want.sort();
    assert_eq!(got, want);
    for r in &doc.results {
        assert_eq!(r.runs.len(), 2, "{r:?}");
        assert!(r.runs.iter().all(|&v| v.is_finite() && v > 0.0), "{r:?}");
        assert!(r.memory.is_none(), "CPU has no device allocator to read: {r:?}");
        assert_eq!(r.batch, 1);
        assert_eq!(r.engine_config.is_some(), r.mode == "engine", "{r:?}");
    }
    // The JSON: the flag in the config, no memory key anywhere.
    let json = report.to_json();
    assert_eq!(json["config"]["host_io"], Value::Bool(true));
    for r in json["results"].as_array().expect("results") {
        assert!(r.get("memory").is_none(), "{r}");
    }
    // And it reads back as written.
    let back: bench::BenchDoc = serde_json::from_value(json).expect("typed read-back");
    assert!(back.config.host_io);
}

#[test]
fn with_host_io_the_limit_ratios_use_limit_host_and_without_it_limit() {
    let report = host_io_report();
    let median = |mode: &str, t: usize| {
        report.ours.results.iter().find(|r| r.mode == mode && r.threads == t).map(|r| r.samples_per_s.median).expect("point")
    };
    let ratios = report.limit_ratios();
    assert_eq!(ratios.len(), 2, "{ratios:?}");
    for l in &ratios {
        assert_eq!(l.limit_mode, "limit-host");
        assert_eq!(l.limit, median("limit-host", l.threads));
        assert!(!Mode::is_limit_name(&l.ours.0), "the serving side is never a limit: {l:?}");
        assert!((l.ratio - l.ours.1 / l.limit).abs() < 1e-12);
    }
    let text = report.render();
    assert!(text.contains("host I/O") && text.contains("vs limit-host"), "{text}");
    assert!(text.contains("mem GB"), "{text}");
    // The same results read as a device-I/O sweep compare with `limit`.
    let mut device = report.clone();
    device.ours.config.host_io = false;
    let ratios = device.limit_ratios();
    assert!(!ratios.is_empty() && ratios.iter().all(|l| l.limit_mode == "limit" && l.limit == median("limit", l.threads)), "{ratios:?}");
    // Only limit-host measured: it is the limit either way.
    device.ours.results.retain(|r| r.mode != "limit");
    assert!(device.limit_ratios().iter().all(|l| l.limit_mode == "limit-host"));
}

#[test]
fn the_peer_gets_the_flag() {
    let runner = PeerRunner { python: "python3".into(), script: PathBuf::from("peer/python_peer.py") };
    let with = runner.args(&host_io_cfg(), Path::new("p.json")).expect("args");
    assert_eq!(with.iter().filter(|a| *a == "--host-io").count(), 1, "{with:?}");
    let mut cfg = host_io_cfg();
    cfg.host_io = false;
    let without = runner.args(&cfg, Path::new("p.json")).expect("args");
    assert!(!without.iter().any(|a| a == "--host-io"), "{without:?}");
}

/// The peer itself, when `python3` (the venv's, after scripts/setup.sh) imports torch: its
/// document records the flag and measures py-limit-host; on CPU no point carries memory.
#[test]
fn the_peer_records_host_io_and_measures_py_limit_host() {
    let runner = PeerRunner::new("python3").expect("the peer script");
    if let Err(why) = runner.check_torch() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = host_io_cfg();
    (cfg.threads, cfg.reps) = (vec![1, 2], 1);
    let peer = runner.run(&cfg, &dir.path().join("peer.json"), Duration::from_secs(300)).expect("the peer runs");
    assert_eq!(peer.raw["config"]["host_io"], Value::Bool(true), "{}", peer.raw);
    assert!(peer.doc.config.host_io);
    let limit_host: Vec<f64> =
        peer.doc.results.iter().filter(|r| r.mode == "py-limit-host").map(|r| r.samples_per_s.median).collect();
    assert_eq!(limit_host.len(), 2, "{}", peer.raw);
    assert!(limit_host.iter().all(|&v| v > 0.0), "{limit_host:?}");
    for mode in ["py-default", "py-limit", "py-batcher"] {
        assert!(peer.doc.results.iter().any(|r| r.mode == mode && r.samples_per_s.median > 0.0), "{mode}: {}", peer.raw);
    }
    for r in peer.raw["results"].as_array().unwrap() {
        assert!(r.get("memory").is_none(), "{r}");
    }
    // Merged: the peer's limits are limits, and the ours/peer ratio compares serving modes.
    let mut report = host_io_report().clone();
    report.attach_peer(peer);
    for r in report.peer_ratios() {
        assert!(!Mode::is_limit_name(&r.peer.0) && !Mode::is_limit_name(&r.ours.0), "{r:?}");
    }
}

#[test]
fn bench_feeds_a_two_input_int64_model_with_host_io() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = cli(
        &[
            "bench", "--device", "cpu", "--model", &fixture("two_int64.pt"), "--input", "2x16:int64", "--input", "2x16:int64",
            "--int-range", "0..100", "--host-io", "--modes", "tch-default,engine,limit,limit-host", "--threads", "1,2",
            "--reps", "1", "--warmup-s", "0.02", "--duration-s", "0.05", "--out", out_dir.to_str().unwrap(),
        ],
        300,
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("host I/O") && stdout.contains("vs limit-host"), "{stdout}");
    let json = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "json")).expect("a JSON report");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(doc["config"]["host_io"], Value::Bool(true));
    assert!(doc["config"].get("engine_flags").is_none(), "no engine flag given: {doc}");
    assert_eq!(doc["skipped"], serde_json::json!([]), "{doc}");
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 8, "{doc}");
    for r in results {
        assert_eq!(r["workload"], "two_int64");
        assert_eq!(r["batch"], 2, "each call sends 2 samples: {r}");
        assert!(r["samples_per_s"]["median"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r.get("memory").is_none(), "{r}");
    }
}

#[test]
fn help_names_the_new_mode_and_flag_and_run_leaves_memory_out_on_cpu() {
    let help = cli(&["bench", "--help"], 60);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("limit-host") && text.contains("--host-io"), "{text}");
    let out = cli(&["run", "--device", "cpu", "--builtin", "small-mlp", "--requests", "20", "--clients", "2", "--json"], 120);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["completed"], 20, "{doc}");
    assert!(doc.get("memory").is_none(), "CPU has no device allocator: {doc}");
    let out = cli(&["run", "--device", "cpu", "--builtin", "small-mlp", "--requests", "20", "--clients", "2"], 120);
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("memory "), "no memory line on CPU");
}

#[test]
fn engine_flags_reach_the_engine_modes_and_are_recorded_and_graph_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = cli(
        &[
            "bench", "--device", "cpu", "--workloads", "small-mlp", "--modes", "engine", "--threads", "1", "--reps", "1",
            "--warmup-s", "0.02", "--duration-s", "0.05", "--workers", "1", "--batch-max", "0", "--out", out_dir.to_str().unwrap(),
        ],
        300,
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let json = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "json")).expect("a JSON report");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(doc["config"]["engine_flags"], "--workers 1 --batch-max 0", "{doc}");
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{doc}");
    assert_eq!(results[0]["mode"], "engine");
    assert!(results[0]["samples_per_s"]["median"].as_f64().unwrap() > 0.0, "{doc}");

    let refused = cli(&["bench", "--device", "cpu", "--workloads", "small-mlp", "--no-cuda-graphs", "--out", out_dir.to_str().unwrap()], 60);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bench decides CUDA graphs per mode"), "{stderr}");
    let out_of_range = cli(&["bench", "--device", "cpu", "--workers", "0", "--out", out_dir.to_str().unwrap()], 60);
    let stderr = String::from_utf8_lossy(&out_of_range.stderr);
    assert!(stderr.contains("--workers 0 is out of range: expected 1..=1024"), "{stderr}");
}
