//! `tch-streams serve`'s wire details (issue #24, item 18): JSON numbers that do not fit their
//! datatype, non-finite answers, the JSON error body of every HTTP refusal (405, 414, 431, a path
//! that is not UTF-8, hyper's own answers), compressed request bodies, gRPC status codes for
//! malformed messages and client deadlines, bounded echoes of client strings, short model-error
//! messages, and engine metrics that count client requests only. Every wait has a watchdog.

mod serve_common;

use serde_json::json;
use serve_common::{fixture, grpc_frame, infer_json, sample, Grpc, Http, Served};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tch_streams_cli::serve::grpc::pb;

/// Sends raw bytes on a new connection and reads until the server closes it (at most 30 s).
fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn body_of(raw: &str) -> serde_json::Value {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {raw:?}"))
}

/// Issue #24 item 18: an answer's ±inf and NaN reach a JSON client as `Infinity`, `-Infinity`
/// and `NaN` (as Triton writes them and tritonclient reads them; before: `null`), and a JSON
/// input outside its datatype's range is refused (before: FP32 `1e39` became inf silently).
#[test]
fn non_finite_answers_and_out_of_range_inputs() {
    let model = fixture("dict_out.pt").display().to_string();
    let server = Served::start(&["--model", &model, "--input", "1x4", "--batch-max", "0"]);
    // Binary input (JSON cannot carry NaN): 3e38, -3e38, NaN, 1.
    let head = json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}], "outputs": [{"name": "double"}]}).to_string();
    let mut body = head.clone().into_bytes();
    for x in [3e38f32, -3e38, f32::NAN, 1.0] {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let r = Http::connect(&server.http).send("POST", "/v2/models/dict_out/infer", &[("inference-header-content-length", head.len().to_string())], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(r#""data":[Infinity,-Infinity,NaN,2.0]"#), "{}", r.text());
    let r = infer_json(&mut Http::connect(&server.http), "dict_out", &json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 4], "data": [1e39, 0, 0, 0]}]}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "input \"input0\": 1e39 is out of range for FP32");
}

/// Issue #24 item 18: every HTTP refusal carries `{"error": ...}` — a method the route does not
/// serve (405), a URI over hyper's limit (414), headers over it (431), a model path that is not
/// UTF-8 (400; before: plain text), a Content-Encoding this server does not read (415); and
/// tritonclient's gzip and deflate request compression is read (before: a confusing 400).
#[test]
fn every_http_refusal_has_a_json_error_and_compressed_bodies_are_read() {
    let server = Served::start(&["--builtin", "small-mlp", "--batch-max", "0"]);
    let mut conn = Http::connect(&server.http);
    let r = conn.send("GET", "/v2/models/small-mlp/infer", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "GET is not served on this route (GET for health, metadata, ready and config; POST for infer)");
    let r = conn.send("GET", "/v2/models/%FF%FE/ready", &[], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap_or_default().starts_with("malformed URL path"), "{}", r.text());
    let long = format!("GET /v2/models/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let raw = raw_exchange(&server.http, long.as_bytes());
    assert!(raw.starts_with("HTTP/1.1 414"), "{raw:.200}");
    assert_eq!(body_of(&raw)["error"], "the request's URI is too long");
    let huge = format!("GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "b".repeat(600_000));
    let raw = raw_exchange(&server.http, huge.as_bytes());
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw:.200}");
    assert_eq!(body_of(&raw)["error"], "the request's headers are too large");
    let raw = raw_exchange(&server.http, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw:.200}");
    assert_eq!(body_of(&raw)["error"], "the request is not valid HTTP/1.1");
    // Compressed bodies: the answer equals the uncompressed request's.
    let doc = json!({"inputs": [{"name": "input0", "datatype": "FP32", "shape": [1, 512], "data": vec![0.5f32; 512]}]}).to_string();
    let plain = conn.send("POST", "/v2/models/small-mlp/infer", &[], doc.as_bytes());
    assert_eq!(plain.status, 200, "{}", plain.text());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(doc.as_bytes()).unwrap();
    let r = conn.send("POST", "/v2/models/small-mlp/infer", &[("content-encoding", "gzip".into())], &gz.finish().unwrap());
    assert_eq!((r.status, r.json()), (200, plain.json()));
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(doc.as_bytes()).unwrap();
    let r = conn.send("POST", "/v2/models/small-mlp/infer", &[("content-encoding", "deflate".into())], &z.finish().unwrap());
    assert_eq!((r.status, r.json()), (200, plain.json()));
    let r = conn.send("POST", "/v2/models/small-mlp/infer", &[("content-encoding", "br".into())], doc.as_bytes());
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["error"], "Content-Encoding \"br\" is not supported: send the body uncompressed, gzip or deflate");
    let r = Http::connect(&server.http).send("POST", "/v2/models/small-mlp/infer", &[("content-encoding", "gzip".into())], b"not gzip");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap_or_default().starts_with("cannot decompress the gzip body"), "{}", r.text());
    // tritonclient's own request compression.
    let t = serve_common::tritonclient(&["compressed", &server.http, &server.grpc], 120);
    assert_eq!(t["gzip"], t["none"], "{t}");
    assert_eq!(t["deflate"], t["none"], "{t}");
}

/// Issue #24 item 18, gRPC: a malformed message is INVALID_ARGUMENT (before: INTERNAL); a client
/// deadline that passes is DEADLINE_EXCEEDED with its own message (before: CANCELLED); a 1 MB
/// model name is not echoed back (before: all of it, in the trailer).
#[test]
fn grpc_malformed_messages_deadlines_and_long_names() {
    let server = Served::start(&["--builtin", "small-mlp", "--builtin", "large-mlp", "--workers", "1", "--batch-max", "0"]);
    let g = Grpc::connect(&server.grpc);
    let r = g.call_raw("ModelInfer", grpc_frame(&[0x0a, 0xff, 0xff, 0xff, 0x0f]), &[], Duration::from_secs(30)).expect("an answer");
    assert_eq!(r.code, Some(3), "{}", r.message);
    assert!(r.message.starts_with("malformed request message: failed to decode Protobuf message"), "{}", r.message);
    let slow = pb::ModelInferRequest {
        model_name: "large-mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor { name: "input0".into(), datatype: "FP32".into(), shape: vec![1024, 2048], ..Default::default() }],
        raw_input_contents: vec![vec![0u8; 1024 * 8192].into()],
        ..Default::default()
    };
    // The client waits far longer than its deadline: the answer is the server's.
    let r = g.call_raw("ModelInfer", grpc_frame(&prost::Message::encode_to_vec(&slow)), &[("grpc-timeout", "100m")], Duration::from_secs(30)).expect("an answer");
    assert_eq!(r.code, Some(4), "{}", r.message);
    assert_eq!(r.message, "the client's deadline (grpc-timeout) passed before the answer");
    let long = pb::ModelInferRequest { model_name: "m".repeat(1 << 20), ..Default::default() };
    let r = g.call("ModelInfer", &long, Duration::from_secs(30)).expect("an answer");
    assert_eq!(r.code, Some(5), "{}", r.message.len());
    assert!(r.message.len() < 300 && r.message.starts_with("unknown model \"mmmm"), "{} bytes: {:.100}", r.message.len(), r.message);
    let t = server.scrape();
    assert_eq!(sample(&t, "tch_streams_requests_total", &[("model", ""), ("protocol", "grpc"), ("outcome", "bad_request")]), Some(1.0), "{t}");
    assert_eq!(sample(&t, "tch_streams_requests_total", &[("model", "large-mlp"), ("protocol", "grpc"), ("outcome", "timeout")]), Some(1.0), "{t}");
}

/// Issue #24 item 18: a model that fails on a request (an embedding index out of range) answers
/// 500 with a short message and a number; the TorchScript traceback, with the paths of the
/// machine the model was built on, goes to the server's log under that number (before: all of
/// it in the answer). And the engine's metrics count client requests only: nothing before the
/// first request (before: the start-up probe's latency was in the series).
#[test]
fn model_errors_are_logged_not_echoed_and_engine_series_start_empty() {
    let model = fixture("two_inputs.pt").display().to_string();
    let server = Served::start(&["--model", &model, "--input", "1x16:int64", "--input", "1x16:float32", "--batch-max", "0"]);
    let t = server.scrape();
    assert!(!t.contains("tch_streams_engine_latency_microseconds{"), "latency before any request:\n{t}");
    assert!(!t.contains("tch_streams_compute_microseconds{"), "{t}");
    assert_eq!(sample(&t, "tch_streams_engine_requests_total", &[("model", "two_inputs"), ("result", "submitted")]), Some(0.0), "{t}");
    let bad = json!({"inputs": [{"name": "input0", "datatype": "INT64", "shape": [1, 16], "data": vec![500; 16]},
                                {"name": "input1", "datatype": "FP32", "shape": [1, 16], "data": vec![1.0; 16]}]});
    let r = infer_json(&mut Http::connect(&server.http), "two_inputs", &bad);
    assert_eq!(r.status, 500, "{}", r.text());
    let e = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(e.starts_with("model two_inputs failed on this request (error #1 in the server's log)"), "{e}");
    assert!(e.len() < 300 && !e.contains("Traceback") && !e.contains(".py"), "{e}");
    let logged = serve_common::eventually(Duration::from_secs(5), || server.stderr().contains("model two_inputs failed on a request (error #1)"));
    assert!(logged, "{}", server.stderr());
    assert!(server.stderr().contains("Traceback"), "{}", server.stderr());
    let t = server.scrape();
    assert_eq!(sample(&t, "tch_streams_engine_requests_total", &[("model", "two_inputs"), ("result", "submitted")]), Some(1.0), "{t}");
    assert_eq!(sample(&t, "tch_streams_engine_requests_total", &[("model", "two_inputs"), ("result", "failed")]), Some(1.0), "{t}");
}
