//! The benchmark harness on CPU (what CI runs): one tiny sweep, checked through the files it
//! writes (JSON schema and values, CSV rows, PNG header), the merge with a synthetic Python-peer
//! document, configuration errors, and the CLI end to end. No timing thresholds: values are
//! checked for consistency (medians inside min–max, ratios equal to the medians' quotients).

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch_streams_cli::inputs::{InputArg, IntRange};
use tch_streams_cli::bench::{
    self, read_peer, BenchConfig, BenchError, BenchReport, Mode, Outputs, PeerRunner, Stats, Workload, CSV_HEADER,
};
use tch_streams::models::Builtin;

/// One workload, threads 1 and 2, three short repetitions, on CPU.
fn tiny() -> BenchConfig {
    let mut cfg = BenchConfig::quick(tch::Device::Cpu);
    cfg.workloads = vec![Workload::Builtin(Builtin::SmallMlp)];
    cfg.threads = vec![1, 2];
    cfg.reps = 3;
    cfg.warmup_s = 0.05;
    cfg.duration_s = 0.1;
    cfg
}

struct Written {
    report: BenchReport,
    files: Outputs,
    json: Value,
    csv: String,
    _dir: tempfile::TempDir,
}

/// The tiny sweep, run once for all tests of this file, and its files.
fn written() -> &'static Written {
    static W: OnceLock<Written> = OnceLock::new();
    W.get_or_init(|| {
        let report = bench::run(&tiny()).expect("the tiny sweep runs on CPU");
        let dir = tempfile::tempdir().expect("temp dir");
        let files = bench::write_outputs(&report, dir.path()).expect("outputs written");
        let json = serde_json::from_str(&std::fs::read_to_string(&files.json).expect("json file")).expect("valid JSON");
        let csv = std::fs::read_to_string(&files.csv).expect("csv file");
        Written { report, files, json, csv, _dir: dir }
    })
}

/// The modes a CPU build without cuda-graphs runs.
const CPU_MODES: [&str; 4] = ["tch-default", "engine", "limit", "limit-host"];

#[test]
fn json_follows_the_schema() {
    let j = &written().json;
    assert_eq!(j["schema"], "tch-streams-bench/1");
    assert_eq!(j["tool"], "tch-streams");
    assert_eq!(j["device"], "cpu");
    let date = j["date"].as_str().expect("date is a string");
    assert_eq!(date.len(), 20, "date {date} is YYYY-MM-DDTHH:MM:SSZ");
    assert_eq!((&date[4..5], &date[10..11], &date[19..20]), ("-", "T", "Z"));
    assert!(!j["device_name"].as_str().expect("device_name is a string").is_empty());
    let built = tch_streams::runtime::BuildRecord::current().torch_version;
    assert_eq!(j["torch_version"].as_str().expect("torch_version is a string"), built);
    assert_eq!(j["config"], json!({"threads": [1, 2], "reps": 3, "warmup_s": 0.05, "duration_s": 0.1, "host_io": false}));
    assert!(j["results"].is_array() && j["skipped"].is_array());
    assert!(j.get("peer").is_none(), "no peer ran, so no peer key");
    for r in j["results"].as_array().unwrap() {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = BTreeSet::from(["workload", "mode", "threads", "batch", "samples_per_s", "runs"]);
        if r["mode"].as_str().is_some_and(|m| m.starts_with("engine")) {
            // Engine points also carry their latency and the configuration the engine chose.
            want.extend(["latency_us", "engine_config"]);
            assert!(r["latency_us"]["p50"].as_f64().unwrap() <= r["latency_us"]["p99"].as_f64().unwrap(), "{r}");
            assert!(r["engine_config"].as_str().unwrap().contains("worker(s), batching"), "{r}");
        }
        assert_eq!(keys, want);
        assert!(r["threads"].is_u64() && r["batch"].is_i64());
        for k in ["median", "min", "max"] {
            assert!(r["samples_per_s"][k].is_f64(), "{k} is a number: {r}");
        }
    }
}

#[test]
fn one_result_per_applicable_point_with_consistent_statistics() {
    let doc = &written().report.ours;
    let got: BTreeSet<(String, String, usize)> =
        doc.results.iter().map(|r| (r.workload.clone(), r.mode.clone(), r.threads)).collect();
    let want: BTreeSet<(String, String, usize)> =
        CPU_MODES.iter().flat_map(|m| [1, 2].map(|t| ("small-mlp".to_string(), m.to_string(), t))).collect();
    assert_eq!(got, want);
    assert_eq!(doc.results.len(), want.len(), "no duplicates");
    for r in &doc.results {
        assert_eq!(r.batch, 1, "small-mlp sends [1,512]");
        assert_eq!(r.runs.len(), 3, "one entry per repetition");
        assert!(r.runs.iter().all(|&v| v.is_finite() && v > 0.0), "{r:?}");
        let s = r.samples_per_s;
        assert!(s.min <= s.median && s.median <= s.max, "{r:?}");
        assert_eq!(Some(s), Stats::of(&r.runs), "summary matches the runs");
    }
    // What was read back from disk is what was measured (to the last bit or so: serde_json's
    // default float parser may round the final digit differently).
    let back: bench::BenchDoc = serde_json::from_value(written().json.clone()).expect("typed read-back");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
    assert_eq!((&back.date, &back.config, &back.skipped), (&doc.date, &doc.config, &doc.skipped));
    assert_eq!(back.results.len(), doc.results.len());
    for (b, r) in back.results.iter().zip(&doc.results) {
        assert_eq!((&b.workload, &b.mode, b.threads, b.batch), (&r.workload, &r.mode, r.threads, r.batch));
        let (bs, rs) = (b.samples_per_s, r.samples_per_s);
        assert!(close(bs.median, rs.median) && close(bs.min, rs.min) && close(bs.max, rs.max), "{b:?} vs {r:?}");
        assert!(b.runs.len() == r.runs.len() && b.runs.iter().zip(&r.runs).all(|(x, y)| close(*x, *y)));
    }
}

#[test]
fn skipped_names_the_modes_this_build_and_device_cannot_run() {
    let skipped = &written().report.ours.skipped;
    let reason = |mode: &str| skipped.iter().find(|s| s.workload == "small-mlp" && s.mode == mode).map(|s| s.reason.clone());
    let graphs = reason("engine-graphs").expect("engine-graphs is skipped on CPU");
    assert!(graphs.contains("cuda-graphs") || graphs.contains("CUDA"), "{graphs}");
    assert!(reason("tch-streams").expect("tch-streams is skipped on CPU").contains("CPU"));
    let spread = reason("engine-spread").expect("engine-spread is skipped with one device");
    assert!(spread.contains("two or more devices"), "{spread}");
    assert_eq!(skipped.len(), 3, "nothing failed: {skipped:?}");
}

#[test]
fn engine_spread_runs_over_a_device_list_and_reports_its_scaling() {
    let mut cfg = tiny();
    cfg.modes = vec![Mode::Engine, Mode::EngineSpread];
    cfg.threads = vec![2];
    cfg.spread_devices = vec![tch::Device::Cpu, tch::Device::Cpu];
    let report = bench::run(&cfg).expect("engine and engine-spread run on cpu,cpu");
    assert!(report.ours.skipped.is_empty(), "{:?}", report.ours.skipped);
    assert_eq!(report.ours.config.spread_devices, vec!["cpu", "cpu"]);
    let median = |mode: &str| {
        let r = report.ours.results.iter().find(|r| r.mode == mode && r.threads == 2).expect("point measured");
        r.samples_per_s.median
    };
    let (spread, single) = (median("engine-spread"), median("engine"));
    assert!(spread > 0.0 && single > 0.0);
    let ratios = report.spread_ratios();
    assert_eq!(ratios.len(), 1, "{ratios:?}");
    let r = &ratios[0];
    assert_eq!((r.workload.as_str(), r.threads, r.devices), ("small-mlp", 2, 2));
    assert_eq!((r.spread, r.single), (spread, single));
    assert!((r.ratio - spread / single).abs() < 1e-12);
    // The JSON carries the ratios; the text names both sides; the single-device comparisons
    // (ours vs limit/peer) never pick the multi-device mode.
    let json = report.to_json();
    assert_eq!(json["spread_ratios"][0]["devices"], 2);
    assert!((json["spread_ratios"][0]["ratio"].as_f64().expect("ratio") - r.ratio).abs() < 1e-12);
    assert_eq!(json["config"]["spread_devices"], serde_json::json!(["cpu", "cpu"]));
    let text = report.render();
    assert!(text.contains("engine-spread / engine (workers over cpu,cpu vs on cpu alone)"), "{text}");
    assert!(report.limit_ratios().iter().all(|l| l.ours.0 != "engine-spread"));
    // One thread count: the peaks are the same two points.
    let peaks = report.spread_peaks();
    assert_eq!(
        peaks,
        vec![bench::SpreadPeak { workload: "small-mlp".into(), spread: (2, spread), single: (2, single), ratio: spread / single }]
    );
    assert_eq!(json["spread_peaks"][0]["spread"]["threads"], 2);
    assert!(text.contains("peak"), "{text}");
}

#[test]
fn a_spread_list_must_start_with_the_sweep_device() {
    let mut cfg = tiny();
    cfg.spread_devices = vec![tch::Device::Cuda(0), tch::Device::Cpu];
    let err = cfg.validate().expect_err("first spread device differs from the sweep's");
    assert!(err.to_string().contains("spread_devices must start with the sweep's device"), "{err}");
}

#[test]
fn csv_has_the_header_one_row_per_result_and_the_efficiency() {
    let w = written();
    let mut lines = w.csv.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 8);
    for row in &rows {
        assert_eq!(row.len(), 11, "{row:?}");
        assert_eq!(row[0], "tch-streams");
        let r = w.report.ours.results.iter().find(|r| r.mode == row[2] && r.threads.to_string() == row[3]).expect("row matches a result");
        let num = |i: usize| row[i].parse::<f64>().expect("a number");
        assert_eq!((num(5), num(6), num(7)), (r.samples_per_s.median, r.samples_per_s.min, r.samples_per_s.max));
        let one = w.report.ours.results.iter().find(|o| o.mode == r.mode && o.threads == 1).unwrap();
        let eff = r.samples_per_s.median / (r.threads as f64 * one.samples_per_s.median);
        assert_eq!(row[8], format!("{eff:.4}"));
        if r.threads == 1 {
            assert_eq!(row[8], "1.0000");
        }
    }
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32, usize) {
    let bytes = std::fs::read(path).expect("png file");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    assert_eq!(&bytes[bytes.len() - 8..bytes.len() - 4], b"IEND", "ends with IEND");
    (be(16), be(20), bytes.len())
}

#[test]
fn png_is_a_valid_non_trivial_image_with_one_panel_per_workload() {
    let w = written();
    let (width, height, len) = png_size(&w.files.png);
    assert_eq!(width, 560, "one 560-pixel panel per workload");
    assert!((560..=700).contains(&height), "title, a 520-pixel panel and the legend: {height}");
    assert!(len > 10_000, "a plot, not a blank image: {len} bytes");
    let stem = w.files.json.file_stem().unwrap().to_string_lossy().into_owned();
    assert!(stem.ends_with("-cpu") && w.files.png.ends_with(format!("{stem}.png")) && w.files.csv.ends_with(format!("{stem}.csv")));
}

/// A peer document as `crates/tch-streams-cli/peer/python_peer.py` writes it, plus a field of its own to check that
/// the merge keeps it verbatim. py-limit at T=2 beats py-default: ratios must ignore limits.
fn peer_fixture() -> Value {
    let res = |mode: &str, t: usize, runs: [f64; 3]| {
        json!({"workload": "small-mlp", "mode": mode, "threads": t, "batch": 1,
               "samples_per_s": {"median": runs[1], "min": runs[0], "max": runs[2]}, "runs": runs})
    };
    json!({
        "schema": "tch-streams-bench/1", "tool": "python-peer", "date": "2026-01-02T03:04:05Z",
        "device": "cpu", "device_name": "Test CPU", "torch_version": "2.11.0+cu130",
        "config": {"threads": [1, 2], "reps": 3, "warmup_s": 0.05, "duration_s": 0.1},
        "results": [
            res("py-default", 1, [900.0, 1000.0, 1100.0]),
            res("py-default", 2, [1400.0, 1500.0, 1600.0]),
            res("py-limit", 1, [450.0, 500.0, 550.0]),
            res("py-limit", 2, [4900.0, 5000.0, 5100.0]),
        ],
        "skipped": [{"workload": "small-mlp", "mode": "py-streams", "reason": "CUDA streams need a CUDA device"}],
        "extra_field": {"kept": true}
    })
}

#[test]
fn peer_document_merges_into_json_ratios_csv_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("peer.json");
    std::fs::write(&fixture, serde_json::to_string_pretty(&peer_fixture()).unwrap()).unwrap();
    let mut report = written().report.clone();
    report.attach_peer(read_peer(&fixture).expect("a valid peer document"));
    let files = bench::write_outputs(&report, &dir.path().join("out")).expect("outputs with the peer");

    let j: Value = serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(j["tool"], "tch-streams", "our document stays the top level");
    assert_eq!(j["results"].as_array().unwrap().len(), 8);
    assert_eq!(j["peer"], peer_fixture(), "the peer's document is kept verbatim under \"peer\"");

    let ours = &report.ours;
    let ratios = report.peer_ratios();
    assert_eq!(ratios.len(), 2);
    for (r, (t, peer_best)) in ratios.iter().zip([(1, 1000.0), (2, 1500.0)]) {
        let best = ours
            .results
            .iter()
            .filter(|o| o.threads == t && !Mode::is_limit_name(&o.mode))
            .max_by(|a, b| a.samples_per_s.median.total_cmp(&b.samples_per_s.median))
            .unwrap();
        assert_eq!((r.workload.as_str(), r.threads), ("small-mlp", t));
        assert_eq!(r.peer, ("py-default".to_string(), peer_best), "py-limit is not a serving mode");
        assert_eq!(r.ours, (best.mode.clone(), best.samples_per_s.median));
        assert!((r.ratio - best.samples_per_s.median / peer_best).abs() < 1e-12);
    }
    for l in report.limit_ratios() {
        assert_eq!(l.limit_mode, "limit", "without host I/O the ratios use the device limit");
        let limit = ours.results.iter().find(|o| o.mode == "limit" && o.threads == l.threads).unwrap();
        assert_eq!(l.limit, limit.samples_per_s.median);
        assert!((l.ratio - l.ours.1 / l.limit).abs() < 1e-12);
    }

    let csv = std::fs::read_to_string(&files.csv).unwrap();
    let peer_rows: Vec<&str> = csv.lines().filter(|l| l.starts_with("python-peer,")).collect();
    assert_eq!(csv.lines().count(), 1 + 8 + 4);
    assert_eq!(
        peer_rows,
        vec![
            "python-peer,small-mlp,py-default,1,1,1000,900,1100,1.0000,,",
            "python-peer,small-mlp,py-default,2,1,1500,1400,1600,0.7500,,",
            "python-peer,small-mlp,py-limit,1,1,500,450,550,1.0000,,",
            "python-peer,small-mlp,py-limit,2,1,5000,4900,5100,5.0000,,",
        ]
    );

    let text = report.render();
    assert!(text.contains("ours / peer") && text.contains("py-default") && text.contains("[python-peer] small-mlp py-streams"));
    let (width, height, len) = png_size(&files.png);
    let (_, height_ours, _) = png_size(&written().files.png);
    assert_eq!(width, 560);
    // The peer's entries join the legend (a row more, or room in the last one).
    assert!(height >= height_ours && height <= 700, "legend rows: {height} vs {height_ours} without the peer");
    assert_ne!(std::fs::read(&files.png).unwrap(), std::fs::read(&written().files.png).unwrap(), "the peer's lines are drawn");
    assert!(len > 10_000);
}

#[test]
fn bad_peer_documents_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, v: &Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let mut wrong = peer_fixture();
    wrong["schema"] = json!("other/2");
    match read_peer(&write("wrong.json", &wrong)) {
        Err(BenchError::Json { message, .. }) => assert!(message.contains("expected 'tch-streams-bench/1'"), "{message}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
    let mut missing = peer_fixture();
    missing.as_object_mut().unwrap().remove("results");
    match read_peer(&write("missing.json", &missing)) {
        Err(BenchError::Json { message, .. }) => assert!(message.contains("results"), "{message}"),
        other => panic!("expected a missing-field error, got {other:?}"),
    }
    assert!(matches!(read_peer(&dir.path().join("absent.json")), Err(BenchError::Io { .. })));
}

/// A change that makes a configuration invalid.
type Breakage = Box<dyn Fn(&mut BenchConfig)>;

#[test]
fn invalid_configurations_fail_before_measuring() {
    let cases: Vec<(&str, Breakage)> = vec![
        ("thread counts", Box::new(|c| c.threads.clear())),
        ("thread counts", Box::new(|c| c.threads = vec![1, 0])),
        ("reps", Box::new(|c| c.reps = 0)),
        ("duration", Box::new(|c| c.duration_s = 0.0)),
        ("warm-up", Box::new(|c| c.warmup_s = -1.0)),
        ("no modes", Box::new(|c| c.modes.clear())),
        ("no workloads", Box::new(|c| c.workloads.clear())),
    ];
    for (needle, change) in cases {
        let mut cfg = tiny();
        change(&mut cfg);
        match bench::run(&cfg) {
            Err(BenchError::Config(m)) => assert!(m.contains(needle), "{m} should mention {needle}"),
            other => panic!("{needle}: expected a configuration error, got {other:?}"),
        }
    }
}

#[test]
fn a_model_that_cannot_load_is_skipped_with_the_reason() {
    // A file that is not TorchScript: the sweep runs and records why each mode was skipped.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.pt");
    std::fs::write(&path, b"not a TorchScript archive").unwrap();
    let workload = |path: PathBuf| Workload::TorchScript {
        path,
        inputs: vec![InputArg { shape: vec![1, 8], kind: tch::Kind::Float }],
        int_range: IntRange::default(),
        data: Vec::new(),
    };
    let mut cfg = tiny();
    cfg.workloads = vec![workload(path)];
    cfg.modes = vec![Mode::TchDefault, Mode::Limit];
    let report = bench::run(&cfg).expect("the sweep itself completes");
    assert!(report.ours.results.is_empty());
    let modes: Vec<&str> = report.ours.skipped.iter().map(|s| s.mode.as_str()).collect();
    assert_eq!(modes, ["tch-default", "limit"]);
    assert!(report.ours.skipped.iter().all(|s| s.workload == "net" && s.reason.contains("could not load the model")));
    // A file that does not exist is a configuration error before any work.
    cfg.workloads = vec![workload(PathBuf::from("/nonexistent/net.pt"))];
    match bench::run(&cfg) {
        Err(BenchError::Config(m)) => assert!(m.contains("--model /nonexistent/net.pt: no such file"), "{m}"),
        other => panic!("expected a configuration error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn peer_arguments_mirror_the_sweep() {
    let runner = PeerRunner { python: "python3".into(), script: PathBuf::from("crates/tch-streams-cli/peer/python_peer.py") };
    let args = runner.args(&tiny(), Path::new("/tmp/p.json")).unwrap();
    let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
    assert_eq!(args[0], "crates/tch-streams-cli/peer/python_peer.py");
    assert_eq!(value("--device"), Some("cpu"));
    assert_eq!(value("--workloads"), Some("small-mlp"));
    assert_eq!(value("--threads"), Some("1,2"));
    assert_eq!(value("--reps"), Some("3"));
    assert_eq!(value("--warmup-s"), Some("0.05"));
    assert_eq!(value("--duration-s"), Some("0.1"));
    assert_eq!(value("--window"), Some("8"), "the batcher modes keep as many requests in flight as our clients");
    assert_eq!(value("--out"), Some("/tmp/p.json"));
    // A TorchScript workload: the peer gets the same model and input specs.
    let mut custom = tiny();
    let inputs = vec![InputArg { shape: vec![1, 16], kind: tch::Kind::Int64 }, InputArg { shape: vec![1, 16], kind: tch::Kind::Bool }];
    custom.workloads = vec![Workload::TorchScript { path: "net.pt".into(), inputs, int_range: IntRange { lo: 0, hi: 30522 }, data: Vec::new() }];
    let args = runner.args(&custom, Path::new("p.json")).unwrap();
    let joined = args.join(" ");
    assert!(joined.contains("--model net.pt --input 1x16:int64 --input 1x16:bool --int-range 0..30522"), "{joined}");
    assert!(!args.contains(&"--workloads".to_string()), "{joined}");
    // Built-ins and a file in one sweep: the peer cannot mirror that.
    custom.workloads.push(Workload::Builtin(tch_streams::models::Builtin::SmallMlp));
    assert!(matches!(runner.args(&custom, Path::new("p.json")), Err(BenchError::Peer(_))));
}

#[test]
fn cli_runs_a_sweep_quick_values_yield_to_flags_and_a_missing_python_keeps_ours_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    // TCH_STREAMS_BIN overrides cargo's path when the tests run on another machine than the build.
    let bin = std::env::var("TCH_STREAMS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tch-streams").to_string());
    let out = std::process::Command::new(bin)
        .args(["bench", "--quick", "--device", "cpu", "--workloads", "small-mlp", "--modes", "tch-default,limit"])
        .args(["--threads", "1", "--reps", "1", "--with-python", "--python", "/nonexistent/python3", "--out"])
        .arg(dir.path())
        .output()
        .expect("run the binary");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The peer was asked for and could not run: exit 1, with our results written all the same.
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("error: the Python peer: could not run /nonexistent/python3"), "{stderr}");
    assert!(stderr.contains("our results are written without it"), "{stderr}");
    assert!(stdout.contains("small-mlp") && stdout.contains("tch-default") && stdout.contains("wrote"), "{stdout}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].ends_with("-cpu.csv") && names[1].ends_with("-cpu.json") && names[2].ends_with("-cpu.png"), "{names:?}");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join(&names[1])).unwrap()).unwrap();
    assert_eq!(j["config"], json!({"threads": [1], "reps": 1, "warmup_s": 0.1, "duration_s": 0.3, "host_io": false}));
    assert_eq!(j["results"].as_array().unwrap().len(), 2);
    assert!(j.get("peer").is_none());
}
