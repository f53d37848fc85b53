//! `tch-streams run` and `bench` on models with several inputs, any dtype, and structured
//! outputs, as a user runs them (the real binary, TorchScript files written by Python's torch).
//! Each run has a watchdog; `TCH_STREAMS_BIN` and `TCH_STREAMS_FIXTURES` override the binary
//! and the fixture directory on another machine.

mod cli_common;

use cli_common::{cli, fixture};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON on stdout ({e}): {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn run_serves_int64_and_float32_inputs_with_and_without_batching() {
    let model = fixture("two_inputs.pt");
    for extra in [&[][..], &["--batch-max", "8"][..]] {
        let mut args = vec!["run", "--device", "cpu", "--model", &model, "--input", "1x16:int64", "--input", "1x16:float32", "--requests", "200", "--json"];
        args.extend_from_slice(extra);
        let out = cli(&args, 120);
        let doc = json_of(&out);
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(doc["completed"], 200, "{doc}");
        assert_eq!(doc["failed"], 0, "{doc}");
        assert_eq!(doc["inputs"], serde_json::json!(["1x16:int64", "1x16:float32"]));
        assert_eq!(doc["errors"], serde_json::json!({}));
    }
}

#[test]
fn run_refuses_a_model_that_fails_on_its_inputs_at_start_with_the_model_s_message() {
    // Every answer of scalar.pt is unusable (a 0-d output): the trial request at start fails, so
    // the run is refused once, with that message, instead of failing each of its requests.
    let out = cli(&["run", "--device", "cpu", "--model", &fixture("scalar.pt"), "--input", "1x8", "--requests", "30", "--json"], 120);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the model fails on the declared inputs (1x8:float32): unusable model output: output 0 has shape []"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty() && !stderr.contains("failed 30x"), "refused before the run: {stderr}");
}

#[test]
fn run_refuses_bad_input_specs_with_a_message() {
    let model = fixture("two_inputs.pt");
    let out = cli(&["run", "--device", "cpu", "--model", &model, "--input", "1x16:complex"], 60);
    assert_eq!(out.status.code(), Some(64), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of float32, float16, bfloat16, int64, int32, bool"));
    let out = cli(&["run", "--device", "cpu", "--model", &model, "--input", "1x16:int64", "--input", "2x16:float32"], 60);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("input 1 (2x16:float32) has batch 2 but input 0 has 1"));
    let out = cli(&["run", "--device", "cpu", "--model", &model], 60);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model needs its inputs"));
    let out = cli(&["run", "--device", "cpu", "--model", &model, "--input", "1x16:int64", "--input", "1x16:int64", "--int-range", "5..5"], 60);
    assert_eq!(out.status.code(), Some(64), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("LO < HI"));
}

/// ids.npy (int64 [3, 16]) and mask.npy (float32 [3, 16]) in `dir`, written by numpy.
fn npy_inputs(dir: &Path) -> (String, String) {
    let ids = dir.join("ids.npy").display().to_string();
    let mask = dir.join("mask.npy").display().to_string();
    let code = format!(
        "import numpy as np; np.save({ids:?}, (np.arange(48).reshape(3, 16) % 100).astype(np.int64)); np.save({mask:?}, np.ones((3, 16), np.float32))"
    );
    let py = Command::new("python3").args(["-c", &code]).output().expect("python3");
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    (ids, mask)
}

#[test]
fn bench_feeds_npy_files_to_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, mask) = npy_inputs(dir.path());
    let out_dir = dir.path().join("out");
    let out = cli(
        &[
            "bench", "--quick", "--device", "cpu", "--model", &fixture("two_inputs.pt"), "--input-file", &ids, "--input-file", &mask,
            "--modes", "tch-default,engine", "--threads", "1", "--warmup-s", "0.05", "--duration-s", "0.1", "--with-python", "--out", out_dir.to_str().unwrap(),
        ],
        300,
    );
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let json = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "json")).expect("a JSON report");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let batches: Vec<u64> = doc["results"].as_array().unwrap().iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [3, 3], "each call sends the file's 3 samples: {doc}");
    let peer: Vec<u64> = doc["peer"]["results"].as_array().expect("peer results").iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert!(!peer.is_empty() && peer.iter().all(|&b| b == 3), "{peer:?}");
}

#[test]
fn run_feeds_real_data_from_npy_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, mask) = npy_inputs(dir.path());
    let out = cli(&["run", "--device", "cpu", "--model", &fixture("two_inputs.pt"), "--input-file", &ids, "--input-file", &mask, "--requests", "40", "--json"], 120);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{doc}");
    assert_eq!(doc["inputs"], serde_json::json!(["3x16:int64", "3x16:float32"]));
    assert_eq!(doc["completed"], 40);
    // 40 requests of 3 samples each, and the engine also answered the one trial request `run`
    // sends at start to check that the declared inputs can be served.
    assert_eq!(doc["stats"]["completed"], 41);
}

#[test]
fn bench_runs_a_multi_input_model_in_every_mode_beside_the_python_peer() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        &[
            "bench", "--quick", "--device", "cpu", "--model", &fixture("two_inputs.pt"), "--input", "1x16:int64", "--input", "1x16:float32",
            "--threads", "1,2", "--warmup-s", "0.05", "--duration-s", "0.1", "--with-python", "--out", dir.path().to_str().unwrap(),
        ],
        300,
    );
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let json = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "json")).expect("a JSON report");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let ours: Vec<(String, u64)> = doc["results"].as_array().unwrap().iter().map(|r| (r["mode"].as_str().unwrap().to_string(), r["threads"].as_u64().unwrap())).collect();
    for mode in ["tch-default", "engine", "limit"] {
        for t in [1, 2] {
            assert!(ours.contains(&(mode.to_string(), t)), "{mode} T={t} missing: {ours:?} skipped {}", doc["skipped"]);
        }
    }
    assert!(doc["results"].as_array().unwrap().iter().all(|r| r["workload"] == "two_inputs" && r["samples_per_s"]["median"].as_f64().unwrap() > 0.0));
    let peer = doc["peer"]["results"].as_array().expect("the peer's results");
    let peer_modes: Vec<&str> = peer.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert!(peer_modes.contains(&"py-default") && peer_modes.contains(&"py-limit"), "{peer_modes:?}");
    assert!(peer.iter().all(|r| r["workload"] == "two_inputs"));
}
