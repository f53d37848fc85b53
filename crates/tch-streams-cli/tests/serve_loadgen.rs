//! `tch-streams loadgen` against a CPU `serve` of a tiny model over both protocols: its runs
//! complete without errors and report every field; the server's stage timers count each
//! successful request once per stage; bad URLs and models fail with a clear message and exit 1.
//! Every wait has a watchdog.

mod serve_common;

use serve_common::{binary, fixture, sample, Served};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `tch-streams loadgen args`, at most `secs` seconds.
fn loadgen(args: &[&str], secs: u64) -> Output {
    let mut cmd = Command::new(binary());
    cmd.arg("loadgen").args(args);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("watchdog: loadgen did not finish in time").expect("loadgen runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn loadgen_runs_over_both_protocols_and_the_stage_timers_count_every_success() {
    let model = fixture("half.pt").display().to_string();
    let mut server = Served::start(&["--model", &model, "--input", "1x16:float32"]);
    for (protocol, url) in [("http", format!("http://{}", server.http)), ("grpc", server.grpc.clone())] {
        let out = loadgen(&["--url", &url, "--protocol", protocol, "--model", "half", "--concurrency", "2,4", "--duration", "0.5", "--warmup", "0.2", "--json"], 120);
        assert_eq!(out.status.code(), Some(0), "{protocol}: {}", text(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{protocol}: not JSON ({e}): {}", text(&out.stdout)));
        assert_eq!(doc["inputs"][0]["shape"], serde_json::json!([1, 16]), "inputs from the model metadata: {doc}");
        assert_eq!(doc["inputs"][0]["datatype"], "FP32");
        let runs = doc["runs"].as_array().expect("runs");
        assert_eq!(runs.iter().map(|r| r["concurrency"].as_u64()).collect::<Vec<_>>(), [Some(2), Some(4)], "{doc}");
        for r in runs {
            assert_eq!(r["protocol"], protocol, "{r}");
            assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(r["errors"], 0, "{r}");
            assert!(r["first_error"].is_null(), "{r}");
            for field in ["seconds", "requests_per_s", "samples_per_s", "latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99"] {
                assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {r}");
            }
            assert_eq!(r["requests_per_s"], r["samples_per_s"], "batch 1: {r}");
            assert!(r["latency_ms_p50"].as_f64() <= r["latency_ms_p99"].as_f64(), "{r}");
        }
        // The summary lines went to stderr.
        assert!(text(&out.stderr).contains("infer/s"), "{}", text(&out.stderr));
    }
    // Every successful request (the probe and the warm-up ones too) has each stage once.
    let m = server.scrape();
    for protocol in ["http", "grpc"] {
        let ok = sample(&m, "tch_streams_requests_total", &[("model", "half"), ("protocol", protocol), ("outcome", "success")]).expect("successes");
        assert!(ok > 0.0, "{protocol}");
        for stage in ["decode", "admission", "engine", "encode"] {
            let labels = [("model", "half"), ("protocol", protocol), ("stage", stage)];
            assert_eq!(sample(&m, "tch_streams_request_stage_seconds_count", &labels), Some(ok), "{protocol} {stage}");
            assert!(sample(&m, "tch_streams_request_stage_seconds_sum", &labels).is_some_and(|s| s > 0.0), "{protocol} {stage}");
        }
    }
    // A wrong model fails at the first request, with the server's message.
    let out = loadgen(&["--url", &server.http, "--model", "no-such-model", "--duration", "0.2", "--warmup", "0"], 60);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown model"), "{}", text(&out.stderr));
    // The exit summary has each protocol's mean stages.
    server.sigterm();
    let (code, err) = server.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    for protocol in ["http", "grpc"] {
        let line = err.lines().find(|l| l.starts_with(&format!("stages of model half over {protocol}:"))).unwrap_or_else(|| panic!("no stage line for {protocol}: {err}"));
        for stage in ["decode", "admission", "engine", "encode"] {
            assert!(line.contains(stage), "{line}");
        }
    }
}

#[test]
fn a_bad_url_is_a_clear_error_and_exit_1() {
    // Nothing listens on port 1.
    for protocol in ["http", "grpc"] {
        let out = loadgen(&["--url", "127.0.0.1:1", "--protocol", protocol, "--model", "m", "--duration", "0.2"], 60);
        assert_eq!(out.status.code(), Some(1), "{protocol}");
        let err = text(&out.stderr);
        assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");
    }
    for url in ["https://127.0.0.1:8000", "127.0.0.1", "http://h:1/v2/models"] {
        let out = loadgen(&["--url", url, "--model", "m"], 60);
        assert_eq!(out.status.code(), Some(1), "{url}");
        assert!(text(&out.stderr).contains("--url"), "{url}: {}", text(&out.stderr));
    }
    // An unparsable flag is a usage error.
    let out = loadgen(&["--url", "127.0.0.1:1", "--model", "m", "--input", "input0=1xa:FP32"], 60);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
}

/// gRPC connections run whole on the server's connection threads (the default, here 2 of them)
/// or on its shared runtime (`--grpc-threads 0`), and `loadgen` drives its connections either
/// way too: every combination answers every request, over the connections asked for, and each
/// connection leaves the server's gauge once the client is done.
#[test]
fn grpc_connections_are_served_alike_on_their_own_threads_or_the_shared_runtime() {
    let model = fixture("half.pt").display().to_string();
    for server_threads in ["2", "0"] {
        let server = Served::start(&["--model", &model, "--input", "1x16:float32", "--grpc-threads", server_threads]);
        for client_threads in ["2", "0"] {
            let args = ["--url", &server.grpc, "--protocol", "grpc", "--model", "half", "--concurrency", "6", "--grpc-connections", "3"];
            let out = loadgen(&[&args[..], &["--grpc-threads", client_threads, "--duration", "0.4", "--warmup", "0.1", "--json"]].concat(), 120);
            let what = format!("server --grpc-threads {server_threads}, loadgen --grpc-threads {client_threads}");
            assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out.stderr));
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
            let run = &doc["runs"][0];
            assert_eq!(run["connections"], 3, "{what}: {run}");
            assert_eq!(run["errors"], 0, "{what}: {run}");
            assert!(run["requests"].as_u64().is_some_and(|n| n > 0), "{what}: {run}");
        }
        let closed = serve_common::eventually(Duration::from_secs(20), || sample(&server.scrape(), "tch_streams_open_connections", &[]) == Some(0.0));
        assert!(closed, "server --grpc-threads {server_threads}: connections left open: {}", server.scrape());
    }
}
