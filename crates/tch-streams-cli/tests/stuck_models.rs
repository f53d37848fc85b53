//! `run` and `bench` on a model that hangs after start-up (scripts/fixtures/make_models.py's
//! `stuck.pt`: its 300th call never returns): each reports the stuck requests and exits 1 instead
//! of waiting forever. Every child runs under a watchdog (killed when it outlives it).
//! `TCH_STREAMS_BIN` and `TCH_STREAMS_FIXTURES` override the binary and the fixture directory.

mod cli_common;

use cli_common::{cli, fixture};
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// Batching off (--batch-max 0) in `run`: one model call per request, so the hang comes within
// the run's requests however the machine's load would have merged them.

#[test]
fn run_with_a_duration_reports_requests_stuck_past_its_grace_and_exits_1() {
    let model = fixture("stuck.pt");
    let out = cli(&["run", "--device", "cpu", "--model", &model, "--input", "1x8", "--batch-max", "0", "--duration", "1", "--json"], 120);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("request(s) still unanswered 10 s after the run's end ("), "{err}");
    assert!(err.contains("the model is stuck on these inputs"), "{err}");
    // Start-up passed: the run did answer requests before the hang.
    assert!(!err.contains("trial request"), "{err}");
    assert!(out.stdout.is_empty(), "no summary for a stuck run: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn run_of_a_request_count_stops_after_the_stall_timeout_and_exits_1() {
    let model = fixture("stuck.pt");
    let out = cli(&["run", "--device", "cpu", "--model", &model, "--input", "1x8", "--batch-max", "0", "--requests", "3000", "--stall-timeout-s", "2", "--json"], 120);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("request(s) still unanswered after 2 s without any answer (--stall-timeout-s)"), "{err}");
    let completed: u64 = err.split(" completed").next().and_then(|s| s.rsplit('(').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{err}"));
    assert!((1..3000).contains(&completed), "some requests were answered before the hang, not all: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn run_refuses_a_stall_timeout_out_of_range() {
    let out = cli(&["run", "--device", "cpu", "--stall-timeout-s", "0"], 60);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--stall-timeout-s 0 is out of range: expected seconds in (0, 86400] (one day)"), "{}", stderr(&out));
    let help = cli(&["run", "--help"], 60);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--stall-timeout-s <SECONDS>"));
}

#[test]
fn bench_reports_a_stuck_engine_point_writes_the_others_and_exits_1() {
    let model = fixture("stuck.pt");
    let dir = std::env::temp_dir().join(format!("tch-streams-stuck-bench-{}", std::process::id()));
    let out_dir = dir.display().to_string();
    // The 300th call hangs during the first point (T=1); the second point (T=2) builds its own
    // engine over the same instance, whose counter is past the hang, and measures. Batching off:
    // the defaults' calibration and trial would make the 300th call at start-up.
    let args = [
        "bench", "--device", "cpu", "--model", &model, "--shape", "1x8", "--modes", "engine", "--threads", "1,2", "--reps", "2", "--warmup-s", "0",
        "--duration-s", "1", "--point-grace-s", "2", "--batch-max", "0", "--out", &out_dir,
    ];
    let out = cli(&args, 180);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: stuck engine threads=1: stuck: ") && err.contains("request(s) still unanswered 2 s after the point's time (--point-grace-s)"),
        "{err}"
    );
    let json = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "json")).expect("the JSON is written");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{doc}");
    assert_eq!((results[0]["mode"].as_str(), results[0]["threads"].as_u64()), (Some("engine"), Some(2)), "{doc}");
    let skipped = doc["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{doc}");
    assert_eq!(skipped[0]["stuck"], true, "{doc}");
    assert!(skipped[0]["reason"].as_str().unwrap().starts_with("threads=1: stuck: "), "{doc}");
    std::fs::remove_dir_all(&dir).ok();
}
