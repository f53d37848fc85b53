//! `tch-streams serve` driven by NVIDIA's tritonclient (HTTP with binary and JSON tensors, and
//! gRPC) and by raw HTTP: answers equal to running the models directly, health, metadata and
//! config, and every bad request with its status and message, the server still serving after
//! each. Servers run on CPU on ephemeral ports; every wait has a watchdog.

mod serve_common;

use serde_json::json;
use serve_common::{good_mlp_json, fixture, infer_json, tritonclient, Http, Served};
use std::time::Duration;
use tch::{Device, IValue, Kind};
use tch_streams::models::Builtin;
use tch_streams_cli::inputs::read_npy;

fn two_inputs_args() -> Vec<String> {
    let model = fixture("two_inputs.pt").display().to_string();
    ["--builtin", "small-mlp", "--model", &model, "--input", "1x16:int64", "--input", "1x16:float32"].map(String::from).to_vec()
}

fn start(extra: &[&str]) -> Served {
    let mut args = two_inputs_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    Served::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The engine's set-up for `model`, as `serve` prints it at start-up: its `engine:` line and the
/// reasons under it.
fn engine_block(stderr: &str, model: &str) -> (String, Vec<String>) {
    let mut lines = stderr.lines().skip_while(|l| !l.starts_with(&format!("model {model}: ")));
    assert!(lines.next().is_some(), "no start-up line for model {model}: {stderr}");
    let engine = lines.next().and_then(|l| l.strip_prefix("  engine: ")).unwrap_or_else(|| panic!("no engine line for {model}: {stderr}"));
    let reasons = lines.take_while(|l| l.starts_with("    ")).map(|l| l.trim().to_string()).collect();
    (engine.to_string(), reasons)
}

/// On the engine's defaults, each model's configuration (`dynamic_batching`, over both
/// protocols) says what its engine chose, and `serve` says why at start-up. Both models declare
/// their inputs and pass the batch-independence check, so nothing but the start-up measurement
/// (calibration and trial, timings of this machine) may leave batching off; with `--batch-max`
/// both batch, whatever the timings.
#[test]
fn the_model_configuration_says_whether_the_engine_batches_and_serve_says_why() {
    let server = start(&[]);
    let m = tritonclient(&["metadata", &server.http, &server.grpc], 120);
    let stderr = server.stderr();
    for name in ["small-mlp", "two_inputs"] {
        let (engine, reasons) = engine_block(&stderr, name);
        let batches = engine.contains("batching dynamic");
        assert!(batches || engine.contains("batching off"), "{name}: {engine}");
        assert_eq!(m["http_config"][name].get("dynamic_batching").is_some(), batches, "{name}: {engine}; {m}");
        assert_eq!(m["grpc_config"][name]["config"].get("dynamic_batching").is_some(), batches, "{name}: {engine}; {m}");
        if batches {
            assert_eq!(m["http_config"][name]["dynamic_batching"], json!({}), "{name}: {m}");
            assert!(reasons.iter().any(|r| r.starts_with("batching: dynamic, max ")), "{name}: {reasons:?}");
        } else {
            let measured = reasons.iter().any(|r| r.starts_with("batching: off (measured with ") || r.starts_with("batching: off (one sample per forward pass"));
            assert!(measured, "{name}: batching off for a reason other than the start-up measurement: {reasons:?}");
        }
    }
    drop(server);
    let server = start(&["--batch-max", "64"]);
    for name in ["small-mlp", "two_inputs"] {
        let config = Http::connect(&server.http).send("GET", &format!("/v2/models/{name}/config"), &[], b"");
        assert_eq!(config.status, 200, "{}", config.text());
        assert_eq!(config.json()["dynamic_batching"], json!({}), "{name}: {}", config.text());
        let (engine, _) = engine_block(&server.stderr(), name);
        assert!(engine.contains("batching dynamic (max 64 samples"), "{name}: {engine}");
    }
}

/// Requests run as sent (`--batch-max 0`), so each answer is bitwise what the model gives for the
/// same rows; batched answers may differ in the last bits (GEMMs of other shapes), which the
/// engine's own tests cover.
#[test]
fn tritonclient_answers_equal_the_models_run_directly_and_metadata_is_complete() {
    let server = start(&["--batch-max", "0"]);
    // Health, metadata, config, readiness over both protocols.
    let m = tritonclient(&["metadata", &server.http, &server.grpc], 120);
    for p in ["http", "grpc"] {
        assert_eq!(m[format!("{p}_live")], true, "{m}");
        assert_eq!(m[format!("{p}_ready")], true, "{m}");
        assert_eq!(m[format!("{p}_server")]["name"], "tch-streams");
        assert_eq!(m[format!("{p}_server")]["extensions"], json!(["binary_tensor_data", "model_configuration"]));
        assert_eq!(m[format!("{p}_model_ready")], json!({"small-mlp": true, "two_inputs": true}));
    }
    let h = &m["http_models"]["two_inputs"];
    assert_eq!(h["platform"], "pytorch_libtorch");
    assert_eq!(h["versions"], json!(["1"]));
    assert_eq!(h["inputs"], json!([{"name": "input0", "datatype": "INT64", "shape": [-1, 16]}, {"name": "input1", "datatype": "FP32", "shape": [-1, 16]}]));
    assert_eq!(h["outputs"], json!([{"name": "output0", "datatype": "FP32", "shape": [-1, 16, 16]}, {"name": "output1", "datatype": "FP32", "shape": [-1]}]));
    // gRPC's JSON form writes int64 as strings.
    let g = &m["grpc_models"]["small-mlp"];
    assert_eq!(g["inputs"], json!([{"name": "input0", "datatype": "FP32", "shape": ["-1", "512"]}]));
    assert_eq!(g["platform"], "tch_streams_builtin");
    let c = &m["http_config"]["small-mlp"];
    assert_eq!((c["name"].as_str(), c["max_batch_size"].as_i64()), (Some("small-mlp"), Some(1024)));
    assert_eq!(c["input"], json!([{"name": "input0", "data_type": "TYPE_FP32", "dims": [512]}]));
    assert_eq!(c["output"], json!([{"name": "output0", "data_type": "TYPE_FP32", "dims": [512]}]));
    assert!(c.get("dynamic_batching").is_none(), "batching is off: {c}");
    let gc = &m["grpc_config"]["two_inputs"]["config"];
    assert_eq!(gc["max_batch_size"], 1024);
    assert_eq!(gc["input"][0], json!({"name": "input0", "data_type": "TYPE_INT64", "dims": ["16"]}));
    assert_eq!(gc["output"][0], json!({"name": "output0", "data_type": "TYPE_FP32", "dims": ["16", "16"]}));
    assert!(m["http_unknown"].as_str().unwrap().contains("unknown model \"no-such-model\""), "{m}");

    // Inference: the same seeded requests over HTTP (binary, JSON) and gRPC.
    let dir = tempfile::tempdir().unwrap();
    let done = tritonclient(&["infer", &server.http, &server.grpc, dir.path().to_str().unwrap()], 180);
    assert_eq!(done.as_array().map(Vec::len), Some(6), "{done}");
    for d in done.as_array().unwrap() {
        assert_eq!(d["id"], format!("req-{}", d["how"].as_str().unwrap()), "the request id comes back: {d}");
    }
    let _ng = tch::no_grad_guard();
    let load = |name: String| read_npy(&dir.path().join(name)).unwrap();
    let mlp = Builtin::SmallMlp.build(Device::Cpu);
    let script = tch::CModule::load(fixture("two_inputs.pt")).unwrap();
    for how in ["http-binary", "http-json", "grpc"] {
        let x = load(format!("small-mlp-{how}-in0.npy"));
        assert_eq!(x.size(), vec![3, 512]);
        let want = mlp.forward(&x).unwrap();
        let got = load(format!("small-mlp-{how}-output0.npy"));
        assert_eq!(got.kind(), Kind::Float);
        assert!(got.equal(&want), "small-mlp over {how}: answers differ from the model run directly (max diff {})", (got - want).abs().max().double_value(&[]));

        let ids = load(format!("two_inputs-{how}-in0.npy"));
        let mask = load(format!("two_inputs-{how}-in1.npy"));
        assert_eq!((ids.kind(), mask.kind()), (Kind::Int64, Kind::Float));
        let IValue::Tuple(want) = script.forward_is(&[IValue::Tensor(ids), IValue::Tensor(mask)]).unwrap() else { panic!("a tuple") };
        for (k, w) in want.into_iter().enumerate() {
            let IValue::Tensor(w) = w else { panic!("tensor") };
            let got = load(format!("two_inputs-{how}-output{k}.npy"));
            assert_eq!(got.size(), w.size(), "output{k} over {how}");
            assert!(got.equal(&w), "two_inputs output{k} over {how} differs from the model run directly");
        }
    }
    // Metrics: 6 successes, by protocol.
    let text = server.scrape();
    let count = |model: &str, protocol: &str| serve_common::sample(&text, "tch_streams_requests_total", &[("model", model), ("protocol", protocol), ("outcome", "success")]);
    assert_eq!((count("small-mlp", "http"), count("small-mlp", "grpc")), (Some(2.0), Some(1.0)), "{text}");
    assert_eq!((count("two_inputs", "http"), count("two_inputs", "grpc")), (Some(2.0), Some(1.0)), "{text}");
}

#[test]
fn every_bad_request_gets_its_status_and_message_and_the_server_keeps_serving() {
    let server = start(&["--max-request-bytes", "262144", "--max-batch-size", "64"]);
    let mut conn = Http::connect(&server.http);
    let good = |conn: &mut Http| {
        let r = infer_json(conn, "small-mlp", &good_mlp_json());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["outputs"][0]["shape"], json!([1, 512]));
    };
    good(&mut conn);
    let expect = |conn: &mut Http, r: serve_common::Reply, status: u16, message: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let e = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(e.contains(message), "error {e:?} lacks {message:?}");
        good(conn);
    };
    let post = |conn: &mut Http, model: &str, body: &[u8], headers: &[(&str, String)]| conn.send("POST", &format!("/v2/models/{model}/infer"), headers, body);

    let r = post(&mut conn, "small-mlp", b"{\"inputs\": [", &[]);
    expect(&mut conn, r, 400, "malformed inference request JSON");
    let r = post(&mut conn, "small-mlp", b"[1, 2]", &[]);
    expect(&mut conn, r, 400, "malformed inference request JSON");
    let r = infer_json(&mut conn, "nope", &good_mlp_json());
    expect(&mut conn, r, 404, "unknown model \"nope\"; this server serves small-mlp, two_inputs");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP64", "shape": [1, 512], "data": vec![0.0; 512]}]}));
    expect(&mut conn, r, 400, "input \"input0\": datatype FP64 but the model takes FP32");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 511], "data": vec![0.0; 511]}]}));
    expect(&mut conn, r, 400, "input \"input0\": shape [1, 511] but the model takes [-1, 512]");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "data": vec![0.0; 500]}]}));
    expect(&mut conn, r, 400, "500 value(s) in data, but shape [1, 512] holds 512");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "data": vec!["a"; 512]}]}));
    expect(&mut conn, r, 400, "expected a number for FP32");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [65, 512], "data": vec![0.0; 65 * 512]}]}));
    expect(&mut conn, r, 400, "batch 65 is out of range: expected 1..=64 (max_batch_size)");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [0, 512], "data": []}]}));
    expect(&mut conn, r, 400, "batch 0 is out of range");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 512], "data": vec![0.0; 512]}]}));
    expect(&mut conn, r, 400, "unknown input \"x\" for model small-mlp: its inputs are input0");
    let r = infer_json(&mut conn, "two_inputs", &json!({"inputs": [{"name": "input0", "datatype": "INT64", "shape": [1, 16], "data": vec![1; 16]}]}));
    expect(&mut conn, r, 400, "input \"input1\" is missing");
    let r = infer_json(&mut conn, "small-mlp", &json!({"inputs": good_mlp_json()["inputs"], "outputs": [{"name": "logits"}]}));
    expect(&mut conn, r, 400, "unknown output \"logits\" for model small-mlp: its outputs are output0");
    // Binary extension: a byte count that does not fit the shape, and a header past the body.
    let head = json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "parameters": {"binary_data_size": 2044}}]}).to_string();
    let mut body = head.clone().into_bytes();
    body.extend(vec![0u8; 2044]);
    let r = post(&mut conn, "small-mlp", &body, &[("inference-header-content-length", head.len().to_string())]);
    expect(&mut conn, r, 400, "input \"input0\": 2044 byte(s) of data, but shape [1, 512] of FP32 needs 2048");
    let r = post(&mut conn, "small-mlp", &body, &[("inference-header-content-length", (body.len() + 1).to_string())]);
    expect(&mut conn, r, 400, "is not a length within the body");
    let r = post(&mut conn, "small-mlp", head.as_bytes(), &[("inference-header-content-length", head.len().to_string())]);
    expect(&mut conn, r, 400, "binary_data_size 2044 but only 0 binary byte(s) remain");
    // Unknown routes and versions.
    let r = conn.send("GET", "/v2/nothing/here", &[], b"");
    expect(&mut conn, r, 404, "no such route");
    let r = conn.send("GET", "/v2/models/small-mlp/versions/2", &[], b"");
    expect(&mut conn, r, 404, "has no version \"2\"");
    // An oversized body: 413, on a connection of its own (the server may close it).
    let mut big = Http::connect(&server.http);
    let r = post(&mut big, "small-mlp", &vec![b' '; 300_000], &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "the request body is larger than 262144 bytes (--max-request-bytes)");
    good(&mut conn);
    // The binary answer: a JSON head of the announced length, then the bytes.
    let mut body = json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "parameters": {"binary_data_size": 2048}}], "outputs": [{"name": "output0", "parameters": {"binary_data": true}}]}).to_string();
    let head_len = body.len();
    let mut bytes = std::mem::take(&mut body).into_bytes();
    bytes.extend(vec![0u8; 2048]);
    let r = post(&mut conn, "small-mlp", &bytes, &[("inference-header-content-length", head_len.to_string())]);
    assert_eq!(r.status, 200, "{}", r.text());
    let n: usize = r.header("inference-header-content-length").expect("binary answer header").parse().unwrap();
    let head: serde_json::Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 2048);
    assert_eq!(r.body.len() - n, 2048);

    // gRPC: the same failures with their status codes, each followed by a good request.
    let g = tritonclient(&["grpc-errors", &server.http, &server.grpc], 120);
    let code = |case: &str| (g[case]["code"].as_str().unwrap_or_default().to_string(), g[case]["message"].as_str().unwrap_or_default().to_string());
    let cases = [
        ("unknown_model", "NOT_FOUND", "unknown model \"nope\""),
        ("wrong_datatype", "INVALID_ARGUMENT", "datatype FP64 but the model takes FP32"),
        ("wrong_shape", "INVALID_ARGUMENT", "shape [1, 511] but the model takes [-1, 512]"),
        ("wrong_byte_size", "INVALID_ARGUMENT", "2044 byte(s) of data, but shape [1, 512] of FP32 needs 2048"),
        ("unknown_input", "INVALID_ARGUMENT", "unknown input \"x\""),
        ("missing_input", "INVALID_ARGUMENT", "input \"input1\" is missing"),
        ("too_large", "OUT_OF_RANGE", "larger than the limit of 262144 bytes (--max-request-bytes)"),
    ];
    for (case, want, message) in cases {
        let (c, m) = code(case);
        assert_eq!(c, want, "{case}: {g}");
        assert!(m.contains(message), "{case}: {m:?} lacks {message:?}");
        assert_eq!(g[case]["then_good"], json!(["FP32", [1, 512], 512]), "{case}: the good request after it");
    }
    // Metrics count each outcome (HTTP: 15 bad requests and 413, gRPC: the 6 it decoded).
    let text = server.scrape();
    let n = |protocol: &str, outcome: &str, model: &str| serve_common::sample(&text, "tch_streams_requests_total", &[("model", model), ("protocol", protocol), ("outcome", outcome)]).unwrap_or(0.0);
    assert_eq!(n("http", "not_found", ""), 1.0, "{text}");
    assert_eq!(n("http", "too_large", "small-mlp"), 1.0, "{text}");
    assert_eq!(n("grpc", "not_found", ""), 1.0, "{text}");
    assert_eq!(n("grpc", "bad_request", "small-mlp") + n("grpc", "bad_request", "two_inputs"), 5.0, "{text}");
    assert_eq!(n("grpc", "success", "small-mlp"), 7.0, "{text}");
}

#[test]
fn a_slow_request_times_out_and_the_inflight_cap_refuses_the_next() {
    // The large MLP at batch 512 takes far longer than 1 ms on a CPU.
    let server = Served::start(&["--builtin", "large-mlp", "--request-timeout-ms", "1", "--max-inflight", "1"]);
    let big = |n: usize| json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [n, 2048], "data": vec![0.5f32; n * 2048]}]});
    let mut conn = Http::connect(&server.http);
    let r = infer_json(&mut conn, "large-mlp", &big(512));
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "no answer within 1 ms (--request-timeout-ms)");
    drop(server);

    let server = Served::start(&["--builtin", "large-mlp", "--max-inflight", "1"]);
    let addr = server.http.clone();
    let slow = std::thread::spawn(move || infer_json(&mut Http::connect(&addr), "large-mlp", &big(512)).status);
    // Wait until the slow request is in flight, then send another.
    let start = std::time::Instant::now();
    loop {
        let text = server.scrape();
        if serve_common::sample(&text, "tch_streams_inflight_requests", &[("model", "large-mlp")]) == Some(1.0) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "watchdog: the slow request never showed in flight");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = infer_json(&mut conn_to(&server), "large-mlp", &big(1));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "1 requests are in flight (--max-inflight): retry later");
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(infer_json(&mut conn_to(&server), "large-mlp", &big(1)).status, 200);
}

fn conn_to(server: &Served) -> Http {
    Http::connect(&server.http)
}

#[test]
fn bad_command_lines_are_refused_with_a_message() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(serve_common::binary()).arg("serve").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--input", "1x16", "--builtin", "small-mlp"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--input 1x16:float32 comes before any --model"), "{err}");
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nothing to serve"), "{err}");
    let (code, err) = run(&["--builtin", "small-mlp", "--builtin", "small-mlp"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("two models are called \"small-mlp\""), "{err}");
    let (code, err) = run(&["--builtin", "small-mlp", "--max-inflight", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--max-inflight 0 is out of range"), "{err}");
    let (code, err) = run(&["--builtin", "small-mlp", "--input", "1x4"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--builtin small-mlp has fixed inputs"), "{err}");
}
